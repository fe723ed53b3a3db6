"""Open any trained amortized engine by its checkpoint kind (what `sample` and `impute` use)."""

from __future__ import annotations

import os

from manifold_aps.training import load_checkpoint

__all__ = ["ENGINE_KINDS", "load_trained_engine"]


def _aps(path, dataset):
    from manifold_aps.posterior.distill import load_engine

    return load_engine(path, dataset)


def _implicit(path, dataset):
    from manifold_aps.posterior.implicit import load_implicit

    return load_implicit(path, dataset)


def _avi(path, dataset):
    from manifold_aps.posterior.amortized_vi import load_amortized_vi

    return load_amortized_vi(path, dataset)


ENGINE_KINDS = {
    "aps-flow": ("aps", _aps),
    "implicit-generator": ("implicit", _implicit),
    "amortized-vi": ("avi", _avi),
}


def load_trained_engine(path: str | os.PathLike, dataset=None):
    """Load a trained engine of any kind in `ENGINE_KINDS`; returns `(name, engine, dataset, prior)`.

    Raises:
        ValueError: the checkpoint is of another kind (e.g. a score prior).
    """
    kind = load_checkpoint(path)["kind"]
    if kind not in ENGINE_KINDS:
        raise ValueError(f"{path} holds a {kind!r}, not a trained posterior engine ({sorted(ENGINE_KINDS)})")
    name, loader = ENGINE_KINDS[kind]
    engine, ds, prior = loader(path, dataset)
    return name, engine, ds, prior
