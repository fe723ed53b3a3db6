"""The one registry of posterior engines: names, what they are, how they train and load.

Every place that lists engines reads `ENGINES` — the `impute`, `distill` and `reconstruct`
command lines, the climate models (`climate.load_model`, `climate.ImputeRequest`), the
benchmarks and the tests — so an engine added here is known everywhere. The distilled engines
train with `train_engine(name, ...)` and load with `load_engine(path)` (any kind: the checkpoint
says which), both through the engine's `EngineRecipe`. The zero-shot engines (dps, daps) share the
score prior's checkpoint kind; `engine_for_checkpoint` names the first, the default of a file that
does not say more, and `zero_shot_sampler` builds either from a loaded prior.

=========  =========================================  ==================  ===========  ==========
name       what                                       checkpoint kind     distilled    exact std
=========  =========================================  ==================  ===========  ==========
gaussian   exact posterior of a sparse Matérn GMRF    (climate's model)   no           yes
dps        diffusion posterior sampling               ``score-prior``     no           no
daps       decoupled annealing, exact inner step      ``score-prior``     no           no
aps        APS conditional flow (one pass/sample)     ``aps-flow``        yes          no
implicit   implicit generator (DAVI-style)            ``implicit-generator``  yes      no
avi        amortized inner VI (LAVPS-style)           ``amortized-vi``    yes          no
=========  =========================================  ==================  ===========  ==========
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import import_module

from manifold_aps.training import load_checkpoint

__all__ = [
    "ENGINES",
    "EngineSpec",
    "distilled_engines",
    "ZERO_SHOT_ENGINES",
    "engine_for_checkpoint",
    "engine_names",
    "engines_for_checkpoint",
    "load_engine",
    "load_trained_engine",
    "train_engine",
    "zero_shot_sampler",
    "DAPS_COVARIANCES",
    "daps_inner_covariance",
    "recorded_training_data",
]

# DAPS's inner Gaussian (`--daps-covariance`): white, or fitted in that basis with that many modes
DAPS_COVARIANCES = {"white": 0, "laplacian": 400, "eof": 256}


@dataclass(frozen=True)
class EngineSpec:
    """One posterior engine.

    Attributes:
        name: its name on the command line (`--engine NAME`).
        title: what it is, in words (logs, `history` attributes).
        checkpoint_kind: the `kind` of the checkpoint it is loaded from (`manifold_aps.training`),
            or None (the gaussian engine is fitted where it is used; `climate` saves its own).
        distilled: trained by `manifold-aps distill --engine NAME` (needs a prior).
        exact_std: its std is exact, not that of its samples (a single sample is enough).
        recipe: ``"module:function"`` returning the distilled engine's `EngineRecipe` (how it is
            built, trained and reloaded), imported on use.
    """

    name: str
    title: str
    checkpoint_kind: str | None
    distilled: bool
    exact_std: bool
    recipe: str | None = None

    def engine_recipe(self):
        """The `EngineRecipe` of a distilled engine."""
        if self.recipe is None:
            raise ValueError(f"{self.name} is not a distilled engine")
        module, _, function = self.recipe.partition(":")
        return getattr(import_module(module), function)()


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("gaussian", "exact Gaussian posterior (sparse Matérn GMRF)", None, False, True),
        EngineSpec("dps", "diffusion posterior sampling", "score-prior", False, False),
        EngineSpec(
            "daps", "decoupled annealing posterior sampling (DAPS)", "score-prior", False, False
        ),
        EngineSpec(
            "aps",
            "APS conditional flow",
            "aps-flow",
            True,
            False,
            "manifold_aps.posterior.distill:aps_recipe",
        ),
        EngineSpec(
            "implicit",
            "implicit generator",
            "implicit-generator",
            True,
            False,
            "manifold_aps.posterior.implicit:implicit_recipe",
        ),
        EngineSpec(
            "avi",
            "amortized-VI sampler",
            "amortized-vi",
            True,
            False,
            "manifold_aps.posterior.amortized_vi:amortized_vi_recipe",
        ),
    )
}


def engine_names() -> list[str]:
    """Every engine's name, in the registry's order (the default, gaussian, first)."""
    return list(ENGINES)


def distilled_engines() -> list[str]:
    """The names of the engines `manifold-aps distill` trains."""
    return [name for name, spec in ENGINES.items() if spec.distilled]


def engine_for_checkpoint(kind: str) -> EngineSpec | None:
    """The default engine of checkpoints of this `kind` (the first registered), or None."""
    return next(iter(engines_for_checkpoint(kind)), None)


def engines_for_checkpoint(kind: str) -> list[EngineSpec]:
    """Every engine that runs from checkpoints of this `kind`, the default first."""
    return [spec for spec in ENGINES.values() if spec.checkpoint_kind == kind]


# the engines that sample with a score prior as it is (no distillation): dps, daps
ZERO_SHOT_ENGINES = tuple(spec.name for spec in engines_for_checkpoint("score-prior"))


def zero_shot_sampler(
    name: str,
    prior,
    noise_std: float,
    *,
    dps_steps: int = 1000,
    guidance: float | str = "auto",
    daps_steps: int = 20,
    inner_covariance=None,
):
    """The sampler of a zero-shot engine ("dps" or "daps") on a loaded prior, and its settings.

    Arguments:
        name: "dps" or "daps".
        prior: a `ScorePrior` (or `GaussianPrior`).
        noise_std: the likelihood's observation noise std, physical units.
        dps_steps: DPS's reverse-diffusion steps.
        guidance: DPS's guidance step, or "auto" (`DPS`).
        daps_steps: DAPS's annealing levels `K` = network passes per sample (`DAPS`).
        inner_covariance: DAPS's fitted `InnerCovariance` (`daps_inner_covariance`); None: white.

    Returns:
        `(sampler, text)`: a `DPS` or `DAPS` and its settings in words, for logs and history.
    """
    from manifold_aps.operators import GaussianNoise

    noise = GaussianNoise(noise_std)
    if inner_covariance is not None and name != "daps":
        raise ValueError(f"an inner covariance is DAPS's, not {name}'s")
    if name == "dps":
        from manifold_aps.posterior.dps import DPS, DPS_CLIP, guidance_text

        text = f"DPS ({dps_steps} steps, guidance {guidance_text(guidance)}, clip {DPS_CLIP:g} std"
        return DPS(prior, noise, steps=dps_steps, guidance=guidance), text + ")"
    if name == "daps":
        from manifold_aps.posterior.daps import DAPS

        inner = "white inner Gaussian"
        if inner_covariance is not None:
            inner = f"inner covariance fitted in {inner_covariance.rank} modes"
        text = f"DAPS ({daps_steps} levels, exact inner step, {inner}, no guidance)"
        return DAPS(prior, noise, steps=daps_steps, inner_covariance=inner_covariance), text
    raise ValueError(f"zero-shot engine must be one of {list(ZERO_SHOT_ENGINES)}, got {name!r}")


def recorded_training_data(checkpoint: str | os.PathLike):
    """The training data a prior checkpoint records: its files read again, or a dataset name.

    Returns a `PriorDataset` rebuilt from the source files the checkpoint names (a relative path
    that is not found from the working directory is looked for beside the checkpoint's run
    folder, as `train-prior` leaves them; the builder checks the file's digest), or the name of
    the registered dataset it was trained on.

    Raises:
        ValueError: a checkpoint that records neither (older files: no description).
    """
    from pathlib import Path

    from manifold_aps.datasets import dataset_from_source, dataset_names

    data = load_checkpoint(checkpoint).get("data")
    if data is None:
        raise ValueError(f"{checkpoint} was written before priors described their data")
    if "source" in data:
        source, moved = data["source"], {}
        run = Path(checkpoint).resolve().parent
        for key, value in source["args"].items():
            if key == "digest" or not isinstance(value, str) or not value:
                continue
            path = Path(value)
            if path.is_absolute() or path.exists():
                continue
            found = [d / path for d in (run, run.parent) if (d / path).exists()]
            if found:
                moved[key] = str(found[0])
        return dataset_from_source(source, **moved)
    if data["name"] in dataset_names():
        return data["name"]
    raise ValueError(
        f"{checkpoint} was trained on {data['name']!r}, "
        "which is neither a registered dataset nor a file it recorded"
    )


def daps_inner_covariance(
    kind: str, prior, checkpoint: str | os.PathLike, steps: int, *, progress: bool = False
):
    """DAPS's inner covariance of `kind` (`DAPS_COVARIANCES`) for the prior in `checkpoint`.

    "white": None. Otherwise fitted (`fit_inner_covariance`, 256 denoised draws per level, seed
    0) on the prior's training signals, read again from what the checkpoint describes: its source
    files, or its named dataset. Seconds on thousands of nodes; nothing is cached.

    Raises:
        ValueError: an unknown kind, or training signals that cannot be read again (files moved,
            a dataset described only by its name that is not registered).
    """
    if kind not in DAPS_COVARIANCES:
        raise ValueError(f"DAPS covariance must be one of {list(DAPS_COVARIANCES)}, got {kind!r}")
    if kind == "white":
        return None
    import torch

    from manifold_aps.datasets import build_prior_dataset
    from manifold_aps.posterior.inner_covariance import fit_inner_covariance

    try:
        dataset = recorded_training_data(checkpoint)
        dataset = build_prior_dataset(dataset) if isinstance(dataset, str) else dataset
        signals = dataset.training_signals()
    except (OSError, ValueError) as err:
        raise ValueError(
            f"--daps-covariance {kind} fits on the prior's training signals, and those of "
            f"{checkpoint} cannot be read again: {err}"
        ) from None
    return fit_inner_covariance(
        prior,
        signals,
        steps=steps,
        basis=kind,
        rank=DAPS_COVARIANCES[kind],
        draws=256,
        generator=torch.Generator().manual_seed(0),
        progress=progress,
    )


def train_engine(
    name: str, dataset, prior, out_dir: str | os.PathLike, config, *, settings=None, **kwargs
):
    """Train (or resume) the distilled engine `name` ("aps", "implicit", "avi") from `prior`.

    Arguments:
        name: a distilled engine of `ENGINES`.
        dataset: a `PriorDataset` or a registered name (its signals only simulate observations).
        prior: "exact" (a Gaussian dataset's reference) or a `train-prior` checkpoint path.
        out_dir: folder of `checkpoint.pt`, `log.csv`, `train.json`.
        config: the `TrainConfig`.
        settings: the engine's settings (`APSConfig`, `ImplicitConfig`, `AmortizedVIConfig`);
            default theirs.
        kwargs: `masks`, `noise_std`, `resume`, `progress`, `stop_after`, `dtype` of
            `manifold_aps.posterior.distill.train_with_recipe`.

    Returns:
        `(engine, TrainResult)`.
    """
    from manifold_aps.posterior.distill import train_with_recipe

    spec = ENGINES.get(name)
    if spec is None or not spec.distilled:
        raise ValueError(f"engine must be one of {distilled_engines()}, got {name!r}")
    return train_with_recipe(
        spec.engine_recipe(), dataset, prior, out_dir, config, settings=settings, **kwargs
    )


def _distilled_spec(path) -> EngineSpec:
    kind = load_checkpoint(path)["kind"]
    spec = engine_for_checkpoint(kind)
    if spec is None or not spec.distilled:
        kinds = sorted(s.checkpoint_kind for s in ENGINES.values() if s.distilled)
        raise ValueError(f"{path} holds a {kind!r}, not a trained posterior engine ({kinds})")
    return spec


def load_engine(path: str | os.PathLike, dataset=None, *, prior=None):
    """Load a distilled engine of any kind; returns `(engine, dataset, prior)`.

    Arguments:
        path: a `distill` checkpoint.
        dataset: None (the checkpoint describes its data: `PriorDataset.described`), or the
            dataset it was trained on (a `PriorDataset` or name), checked against its domain.
        prior: the prior already loaded, to share one copy between engines; default the one the
            checkpoint carries.

    Raises:
        ValueError: the checkpoint is of another kind (e.g. a score prior).
    """
    from manifold_aps.posterior.distill import load_with_recipe

    return load_with_recipe(_distilled_spec(path).engine_recipe(), path, dataset, prior=prior)


def load_trained_engine(path: str | os.PathLike, dataset=None):
    """`load_engine` with the engine's name first: `(name, engine, dataset, prior)`."""
    from manifold_aps.posterior.distill import load_with_recipe

    spec = _distilled_spec(path)
    return (spec.name, *load_with_recipe(spec.engine_recipe(), path, dataset))
