"""Train a `ScorePrior` on a named dataset (what `manifold-aps train-prior` runs) and load it back."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from manifold_aps.datasets import PriorDataset, build_prior_dataset
from manifold_aps.nn import ScoreNetConfig
from manifold_aps.priors.objective import DenoisingObjective
from manifold_aps.priors.score import ChannelNormalizer, ScorePrior
from manifold_aps.priors.sde import VPSDE
from manifold_aps.training import TrainConfig, Trainer, TrainResult, load_checkpoint

__all__ = ["KIND", "load_prior", "make_prior", "train_prior"]

KIND = "score-prior"


def make_prior(dataset: PriorDataset, net: ScoreNetConfig | None = None, sde: VPSDE | None = None, seed: int = 0) -> ScorePrior:
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
        objective, config, out_dir, kind=KIND, domain=ds.domain, model_config=model_config, progress=progress
    )
    result = trainer.fit(resume=resume, stop_after=stop_after)
    if trainer.ema is not None:
        prior.load_state_dict(trainer.ema.model_state(prior))
    return prior, result


def load_prior(path: str | os.PathLike, domain, *, ema: bool = True, device: str = "cpu") -> ScorePrior:
    """Load a trained prior for `domain` (refused if the checkpoint was made on another domain)."""
    ckpt = load_checkpoint(Path(path), fingerprint=domain.fingerprint, kind=KIND)
    prior = ScorePrior.from_config(domain, ckpt["model_config"])
    state = ckpt["ema"] if ema and ckpt["ema"] is not None else ckpt["model"]
    prior.load_state_dict(state)
    return prior.to(device).eval()
