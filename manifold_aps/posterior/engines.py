"""The one registry of posterior engines: names, what they are, their checkpoints and loaders.

Every place that lists engines reads `ENGINES` — the `impute` and `distill` command lines, the
climate models (`climate.load_model`, `climate.ImputeRequest`) and `load_trained_engine` — so an
engine added here is known everywhere.

=========  =========================================  ==================  ===========  ==========
name       what                                       checkpoint kind     distilled    exact std
=========  =========================================  ==================  ===========  ==========
gaussian   exact posterior of a sparse Matérn GMRF    (climate's model)   no           yes
dps        diffusion posterior sampling               ``score-prior``     no           no
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
    "engine_for_checkpoint",
    "engine_names",
    "load_trained_engine",
]


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
        loader: ``"module:function"`` with signature `(path, dataset) -> (engine, dataset, prior)`
            for distilled engines, imported on use.
    """

    name: str
    title: str
    checkpoint_kind: str | None
    distilled: bool
    exact_std: bool
    loader: str | None = None


ENGINES: dict[str, EngineSpec] = {
    spec.name: spec
    for spec in (
        EngineSpec("gaussian", "exact Gaussian posterior (sparse Matérn GMRF)", None, False, True),
        EngineSpec("dps", "diffusion posterior sampling", "score-prior", False, False),
        EngineSpec("aps", "APS conditional flow", "aps-flow", True, False,
                   "manifold_aps.posterior.distill:load_engine"),
        EngineSpec("implicit", "implicit generator", "implicit-generator", True, False,
                   "manifold_aps.posterior.implicit:load_implicit"),
        EngineSpec("avi", "amortized-VI sampler", "amortized-vi", True, False,
                   "manifold_aps.posterior.amortized_vi:load_amortized_vi"),
    )
}


def engine_names() -> list[str]:
    """Every engine's name, in the registry's order (the default, gaussian, first)."""
    return list(ENGINES)


def distilled_engines() -> list[str]:
    """The names of the engines `manifold-aps distill` trains."""
    return [name for name, spec in ENGINES.items() if spec.distilled]


def engine_for_checkpoint(kind: str) -> EngineSpec | None:
    """The engine whose checkpoints have this `kind`, or None."""
    return next((spec for spec in ENGINES.values() if spec.checkpoint_kind == kind), None)


def load_trained_engine(path: str | os.PathLike, dataset=None):
    """Load a distilled engine of any kind; returns `(name, engine, dataset, prior)`.

    Raises:
        ValueError: the checkpoint is of another kind (e.g. a score prior).
    """
    kind = load_checkpoint(path)["kind"]
    spec = engine_for_checkpoint(kind)
    if spec is None or not spec.distilled:
        kinds = sorted(s.checkpoint_kind for s in ENGINES.values() if s.distilled)
        raise ValueError(f"{path} holds a {kind!r}, not a trained posterior engine ({kinds})")
    module, _, function = spec.loader.partition(":")
    engine, ds, prior = getattr(import_module(module), function)(path, dataset)
    return spec.name, engine, ds, prior
