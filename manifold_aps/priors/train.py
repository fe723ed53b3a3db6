"""Train a `ScorePrior` on a named dataset (what `manifold-aps train-prior` runs); load it back."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from manifold_aps.datasets import PriorDataset, build_prior_dataset
from manifold_aps.nn import ScoreNetConfig
from manifold_aps.priors.objective import DenoisingObjective
from manifold_aps.priors.score import ChannelNormalizer, ScorePrior
from manifold_aps.priors.sde import VPSDE
from manifold_aps.training import (
    TrainConfig,
    Trainer,
    TrainResult,
    checkpoint_domain,
    load_checkpoint,
)

__all__ = ["KIND", "embedded_prior", "load_prior", "make_prior", "prior_from_state", "train_prior"]

KIND = "score-prior"


def make_prior(
    dataset: PriorDataset,
    net: ScoreNetConfig | None = None,
    sde: VPSDE | None = None,
    seed: int = 0,
) -> ScorePrior:
    """A fresh `ScorePrior` for `dataset`, normalised by its training statistics (seeded init)."""
    torch.manual_seed(seed)
    train = dataset.source.batch(torch.Generator().manual_seed(seed), 512)
    normalizer = ChannelNormalizer.fit(train)
    return ScorePrior(dataset.domain, dataset.channels, net, sde, normalizer)


def train_prior(
    dataset: PriorDataset | str,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    net: ScoreNetConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> tuple[ScorePrior, TrainResult]:
    """Train (or resume) a prior; the checkpoint is `out_dir/checkpoint.pt`.

    Returns:
        the prior with its EMA weights loaded, and the `TrainResult`.
    """
    ds = build_prior_dataset(dataset) if isinstance(dataset, str) else dataset
    prior = make_prior(ds, net, seed=config.seed)
    objective = DenoisingObjective(prior, ds.source, config.batch_size, seed=config.seed)
    model_config = {"dataset": ds.name, **prior.config()}
    trainer = Trainer(
        objective,
        config,
        out_dir,
        kind=KIND,
        domain=ds.domain,
        model_config=model_config,
        described={"data": ds.description_dict()},
        progress=progress,
    )
    result = trainer.fit(resume=resume, stop_after=stop_after)
    if trainer.ema is not None:
        prior.load_state_dict(trainer.ema.model_state(prior))
    return prior, result


def load_prior(
    path: str | os.PathLike, domain=None, *, ema: bool = True, device: str = "cpu"
) -> ScorePrior:
    """Load a trained prior on `domain`, or on the domain its checkpoint describes (None).

    A given `domain` is checked against the checkpoint's (refused if another); None takes the
    domain the checkpoint describes (`checkpoint_domain`).
    """
    ckpt = load_checkpoint(Path(path), kind=KIND)
    return prior_from_state(ckpt, checkpoint_domain(ckpt, path, domain), ema=ema).to(device).eval()


def prior_from_state(ckpt: dict, domain, *, ema: bool = True) -> ScorePrior:
    """The `ScorePrior` of a checkpoint dictionary (`model_config`, `model`, `ema`) on `domain`."""
    prior = ScorePrior.from_config(domain, ckpt["model_config"])
    prior.load_state_dict(ckpt["ema"] if ema and ckpt.get("ema") is not None else ckpt["model"])
    return prior


def embedded_prior(prior: ScorePrior) -> dict:
    """What an engine's checkpoint stores of the prior it was distilled from.

    That is its config and weights (loads with `prior_from_state`; no path to the prior's own
    file).
    """
    return {"kind": KIND, "model_config": prior.config(), "model": prior.state_dict(), "ema": None}
