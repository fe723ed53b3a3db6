"""Distil an APS engine for a named problem (what `manifold-aps distill` runs) and load it back.

A problem is a dataset of `manifold_aps.datasets` (its domain and training signals, which only
serve to simulate observations), a prior (the exact Gaussian of a `gaussian-*` dataset, or a
trained `ScorePrior` checkpoint), a mask family and a noise level.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from manifold_aps.datasets import PriorDataset, SignalsNotStored, TensorSource, build_prior_dataset
from manifold_aps.operators import (
    CapMaskGenerator,
    GaussianNoise,
    MaskGenerator,
    MixtureMaskGenerator,
    RandomMaskGenerator,
    StationMaskGenerator,
    SwathMaskGenerator,
)
from manifold_aps.operators.masks import angular_radius
from manifold_aps.posterior.aps import AmortizedFlowPosterior, APSConfig, ReverseKLObjective
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.priors.gaussian import GaussianPrior
from manifold_aps.priors.sampling import reverse_sde_sample
from manifold_aps.priors.train import embedded_prior, load_prior
from manifold_aps.training import (
    TrainConfig,
    Trainer,
    checkpoint_domain,
    load_checkpoint,
)

__all__ = [
    "KIND",
    "MASK_FAMILIES",
    "EngineRecipe",
    "aps_recipe",
    "checkpoint_dataset",
    "checkpoint_prior",
    "held_out_observations",
    "held_out_signals",
    "load_with_recipe",
    "mask_family",
    "prior_mode_variances",
    "resolve_prior",
    "train_with_recipe",
]

KIND = "aps-flow"


def swath_family(domain) -> SwathMaskGenerator:
    """1-4 observed swaths of half-width 5-15 degrees; on a regional domain, to its scale.

    A domain whose nodes lie within `R` < 90 degrees of their mean direction (`angular_radius`:
    a regional grid) gets half-widths scaled by `R / 90` and circles drawn through its nodes; at
    5-15 degrees on the whole-sphere law the UK box (R 5.4) was either missed, and redrawn, or
    observed whole (two of two validation masks hid nothing; now 31 % observed on average).
    """
    r = angular_radius(domain)
    if r >= 90.0:
        return SwathMaskGenerator(domain, num_swaths=(1, 4), half_width_deg=(5.0, 15.0))
    f = r / 90.0
    return SwathMaskGenerator(
        domain, num_swaths=(1, 4), half_width_deg=(5.0 * f, 15.0 * f), through_domain=True
    )


MASK_FAMILIES = {
    "random": lambda d: RandomMaskGenerator(d, missing=(0.5, 0.95)),
    "caps": lambda d: CapMaskGenerator(d, num_caps=(1), cap_area=(0.05, 0.3)),
    "stations": lambda d: StationMaskGenerator(
        d, num_stations=(max(1, d.num_nodes // 20), max(1, d.num_nodes // 4))
    ),
    "swaths": swath_family,
}


def mask_family(name: str, domain) -> MaskGenerator:
    """A mask generator by name: one of `MASK_FAMILIES`, or "mixture" (all, equally likely)."""
    if name == "mixture":
        return MixtureMaskGenerator([make(domain) for make in MASK_FAMILIES.values()])
    if name not in MASK_FAMILIES:
        raise ValueError(
            f"masks must be one of {sorted(MASK_FAMILIES) + ['mixture']}, got {name!r}"
        )
    return MASK_FAMILIES[name](domain)


def resolve_prior(dataset: PriorDataset, prior: str | os.PathLike):
    """The prior `prior` names: "exact", the dataset's Gaussian reference, or a checkpoint path."""
    if str(prior) == "exact":
        if dataset.reference is None:
            raise ValueError(
                f"dataset {dataset.name!r} has no exact prior; pass a trained prior checkpoint"
            )
        return dataset.reference
    return load_prior(prior, dataset.domain)


# Above this many nodes the anchor's per-mode variances come from training signals, not from
# reverse-SDE samples of the prior (128 samples x 200 steps: ~25 min on one CPU thread at 12,288
# nodes, hours at 65k). Measured on the 1-degree ERA5 file's HEALPix-32 pixels (12,288; APS 300
# steps, 70 % hidden on a held-out day): anchor from signals RMSE 1.639 K / coverage 78.2 % /
# spread-skill 0.44 in 12.6 min of distillation, from prior samples 1.725 / 77.8 % / 0.44 in
# ~36 min. Every suite problem and benchmark grid (at most 4050 nodes) stays below the limit.
ANCHOR_SAMPLING_LIMIT = 5_000
# Where the first estimate's anchor takes its per-mode prior variances from (`train_with_recipe`).
ANCHORS = ("auto", "prior-samples", "signals")


@torch.no_grad()
def prior_mode_variances(
    prior,
    domain,
    num_modes: int,
    *,
    num_samples: int = 128,
    steps: int = 200,
    seed: int = 0,
    signals: torch.Tensor | None = None,
    progress: bool = False,
):
    """Per-mode prior variances of the standardised signal on the first `num_modes` LB modes.

    Exact for a `GaussianPrior`; for a score prior, from `num_samples` reverse-SDE samples, or,
    given `signals` `(M, N, C)` in physical units (e.g. the training fields the prior learnt,
    which its samples imitate), from those, standardised with the prior's normaliser: one
    projection instead of `num_samples * steps` network evaluations. `progress`: a bar over the
    reverse-SDE steps.
    Returns `(eigenvalues (K,), variances (K,))`.
    """
    lam, phi = domain.eigenbasis(num_modes)
    if isinstance(prior, GaussianPrior):
        return lam, prior.spectrum[:num_modes].clone()
    if signals is not None:
        z = prior.normalize(signals.to(torch.float32))
    else:
        g = torch.Generator().manual_seed(seed)
        z = reverse_sde_sample(
            prior,
            (num_samples, domain.num_nodes, prior.channels),
            steps=steps,
            generator=g,
            progress=f"anchor: {num_samples} prior samples" if progress else None,
        ).sample
    coef = torch.einsum("nk,n,bnc->bkc", phi, domain.mass, z.double())
    return lam, coef.pow(2).mean((0, 2))


@dataclass(frozen=True)
class EngineRecipe:
    """How to build, train and reload one kind of amortized engine (shared by all of them).

    Attributes:
        kind: the checkpoint kind.
        config_key: key of the engine's settings in the checkpoint's `model_config`.
        config_cls: the settings' dataclass (`to_dict` / `from_dict`).
        build: `(domain, channels, prior, noise, settings, seed) -> engine`.
        objective: `(engine, prior, observations, train_config) -> objective` for the `Trainer`.
        fit_anchor: initialise the engine's first estimate from the prior's spectrum.
    """

    kind: str
    config_key: str
    config_cls: type
    build: Callable
    objective: Callable
    fit_anchor: bool = True


def train_with_recipe(
    recipe: EngineRecipe,
    dataset: PriorDataset | str,
    prior: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    settings=None,
    masks: str = "random",
    noise_std: float = 0.1,
    anchor: str = "auto",
    anchor_samples: int = 128,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Train any amortized engine with the one `Trainer`; the checkpoint is `out_dir/checkpoint.pt`.

    Only simulated observations of the dataset's training signals are used (clean signals only
    simulate `y`). Returns `(engine, TrainResult)`.

    `anchor` says where a fresh engine's first estimate takes its per-mode prior variances from
    (`prior_mode_variances`): "prior-samples" (128 reverse-SDE draws of the prior, 200 steps
    each: 25,600 network evaluations, ~25 min at 12,288 nodes on one CPU thread), "signals" (128
    training signals standardised by the prior: one projection, seconds), or "auto" (signals
    above `ANCHOR_SAMPLING_LIMIT` nodes, prior samples below); `anchor_samples` how many
    (default 128; the cost of prior samples is linear in it).
    """
    ds = build_prior_dataset(dataset) if isinstance(dataset, str) else dataset
    p = resolve_prior(ds, prior)
    noise = GaussianNoise(noise_std)
    settings = settings or recipe.config_cls()
    torch.manual_seed(config.seed)
    engine = recipe.build(ds.domain, ds.channels, p, noise, settings, config.seed)
    if (
        dtype != torch.float32
    ):  # float32 parameters by default; float64 geometry buffers stay float64
        engine = engine.to(dtype)
    fresh = not (resume and (Path(out_dir) / "checkpoint.pt").exists())
    if recipe.fit_anchor and getattr(engine, "estimate", None) is not None and fresh:
        # variances of the standardised signal: the engines work in the prior's standardised space
        signals = None
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {list(ANCHORS)}, got {anchor!r}")
        from_signals = anchor == "signals" or (
            anchor == "auto" and ds.domain.num_nodes > ANCHOR_SAMPLING_LIMIT
        )  # sampling the prior would take hours above the limit
        if anchor_samples < 2:
            raise ValueError(f"anchor_samples must be >= 2, got {anchor_samples}")
        if from_signals:
            signals = ds.source.batch(torch.Generator().manual_seed(config.seed), anchor_samples)
        lam, var = prior_mode_variances(
            p,
            ds.domain,
            min(ds.domain.num_nodes, 512),
            num_samples=anchor_samples,
            seed=config.seed,
            signals=signals,
            progress=progress,
        )
        engine.estimate.fit_to_spectrum(lam, var)
    observations = SimulatedObservations(ds.source, mask_family(masks, ds.domain), noise)
    objective = recipe.objective(engine, p, observations, config)
    exact = isinstance(p, GaussianPrior)
    described = {"data": ds.description_dict()}
    if not exact:  # the engine's file carries its prior: it loads without the prior's file
        described["prior"] = embedded_prior(p)
    model_config = {
        "dataset": ds.name,
        "prior": _prior_record(p, prior, None if fresh else Path(out_dir) / "checkpoint.pt"),
        "masks": masks,
        "noise_std": noise_std,
        "channels": ds.channels,
        "dtype": str(dtype).removeprefix("torch."),
        recipe.config_key: settings.to_dict(),
    }
    if anchor != "auto":  # recorded when chosen: earlier checkpoints resume unchanged
        model_config["anchor"] = anchor
    if anchor_samples != 128:
        model_config["anchor_samples"] = anchor_samples
    trainer = Trainer(
        objective,
        config,
        out_dir,
        kind=recipe.kind,
        domain=ds.domain,
        model_config=model_config,
        described=described,
        progress=progress,
    )
    return engine, trainer.fit(resume=resume, stop_after=stop_after)


def _prior_record(p, prior, resumed: Path | None) -> str:
    """What an engine's `model_config` says of its prior: "exact", or its weights' digest.

    The digest is that of the score prior's weights. A run resumed from a checkpoint written
    before engines carried their prior keeps that checkpoint's record (the prior's absolute path)
    when it names the same file.
    """
    if isinstance(p, GaussianPrior):
        return "exact"
    if resumed is not None:
        old = load_checkpoint(resumed)["model_config"].get("prior", "")
        if (
            old not in ("exact", "")
            and not old.startswith("score-prior ")
            and Path(old) == Path(prior).resolve()
        ):
            return old
    return f"score-prior {_weights_digest(p)}"


def _weights_digest(module: torch.nn.Module) -> str:
    """A short digest of a module's weights: which prior an engine was distilled from.

    (A resumed run must distil the same one.)
    """
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_dataset(ckpt: dict, path, dataset: PriorDataset | str | None) -> PriorDataset:
    """The dataset an engine or prior checkpoint was trained on.

    That is `dataset` (checked against the checkpoint's domain), or the one the checkpoint
    describes (its domain, units, variable; no signals), or, for a file written before
    checkpoints described themselves, its named dataset.
    """
    if isinstance(dataset, str):
        dataset = build_prior_dataset(dataset)
    if dataset is not None:
        checkpoint_domain(ckpt, path, dataset.domain)
        return dataset
    if "domain_spec" in ckpt and "data" in ckpt:
        return PriorDataset.described(checkpoint_domain(ckpt, path), ckpt["data"])
    return build_prior_dataset(ckpt["model_config"]["dataset"])  # an older file: its named dataset


def checkpoint_prior(ckpt: dict, ds: PriorDataset):
    """The prior an engine checkpoint was distilled from.

    That is the weights it carries, the exact Gaussian of its (named) dataset, or, for an older
    file, the prior file it names.
    """
    embedded = ckpt.get("prior")
    if isinstance(embedded, dict):
        from manifold_aps.priors.train import prior_from_state

        return prior_from_state(embedded, ds.domain).eval()
    recorded = ckpt["model_config"]["prior"]
    if recorded == "exact" and ds.reference is None and isinstance(ds.source, SignalsNotStored):
        ds = build_prior_dataset(ds.name)  # the exact prior is the named Gaussian dataset's
    return resolve_prior(ds, recorded)


def load_with_recipe(
    recipe: EngineRecipe,
    path: str | os.PathLike,
    dataset: PriorDataset | str | None = None,
    *,
    prior=None,
):
    """Load an engine trained by `train_with_recipe`, with its dataset and prior.

    Arguments:
        recipe: the engine's `EngineRecipe`.
        path: the engine's checkpoint.
        dataset: the dataset it was trained on (a `PriorDataset` or a registered name), checked
            against the checkpoint's domain; None: the one the checkpoint describes (its domain,
            units and variable, no signals: `PriorDataset.described`).
        prior: the prior already loaded (the one the engine was distilled from), to share one copy
            between several engines; default: the one the checkpoint carries.

    Returns:
        `(engine, dataset, prior)`.
    """
    ckpt = load_checkpoint(path, kind=recipe.kind)
    cfg = ckpt["model_config"]
    ds = checkpoint_dataset(ckpt, path, dataset)
    p = checkpoint_prior(ckpt, ds) if prior is None else prior
    settings = recipe.config_cls.from_dict(cfg[recipe.config_key])
    engine = recipe.build(
        ds.domain, cfg["channels"], p, GaussianNoise(cfg["noise_std"]), settings, 0
    )
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    if dtype != torch.float32:
        engine = engine.to(dtype)
    engine.load_state_dict(ckpt["ema"] if ckpt["ema"] is not None else ckpt["model"])
    return engine.eval(), ds, p


def aps_recipe() -> EngineRecipe:
    """How `train_engine("aps", ...)` builds, trains and reloads an `AmortizedFlowPosterior`."""
    return EngineRecipe(
        kind=KIND,
        config_key="aps",
        config_cls=APSConfig,
        build=lambda domain, channels, prior, noise, settings, seed: AmortizedFlowPosterior(
            domain, channels, prior, noise, settings, seed=seed
        ),
        objective=lambda engine, prior, observations, config: ReverseKLObjective(
            engine,
            prior,
            observations,
            total_steps=config.steps,
            batch_size=config.batch_size,
            seed=config.seed,
        ),
    )


def held_out_signals(dataset: PriorDataset, split: str = "test") -> torch.Tensor:
    """Signals `(n, N, C)` never trained on: the test split, or the validation split.

    `split="test"` falls back to the validation split where a dataset has no test split.
    """
    if split not in ("test", "validation"):
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    if split == "test" and dataset.test.numel():
        return dataset.test
    return dataset.source.validation()


def held_out_observations(
    dataset: PriorDataset,
    noise: GaussianNoise,
    n: int,
    *,
    masks: str = "random",
    seed: int = 0,
    split: str = "test",
):
    """`n` observations of held-out signals: an `ObservationBatch` never seen in training.

    `split="test"`: the dataset's test signals (the validation ones if it has no test split);
    `split="validation"`: its validation signals, to tune a setting without touching the test
    fields. The masks are of the family `masks`, and masks and noise are drawn from `seed`.
    """
    test = held_out_signals(dataset, split)
    stream = SimulatedObservations(
        TensorSource(test, test), mask_family(masks, dataset.domain), noise
    )
    return stream.batch(torch.Generator().manual_seed(seed), n)
