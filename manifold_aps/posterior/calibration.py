"""Post-hoc spread calibration of an ensemble sampler, fitted on validation observations.

A separate, documented layer over an engine, never its default: `SpreadCalibrated(engine, k)`
draws the engine's samples and scales their deviations from the ensemble mean by `k` (the mean
is unchanged, so is its RMSE). `fit_spread_factor` chooses `k` so that the spread/skill ratio
is 1 on observations simulated from *validation* signals (the engine never trained on them, and
no test field enters). It corrects a spread that is wrong by a constant factor; a wrong shape of
the posterior (e.g. a missing mode) it cannot.
"""

from __future__ import annotations

import torch

from manifold_aps.metrics import spread_skill_ratio
from manifold_aps.operators import LinearOperator
from manifold_aps.posterior.observations import ObservationBatch

__all__ = ["SpreadCalibrated", "fit_spread_factor"]


class SpreadCalibrated:
    """An engine whose samples' deviations from their ensemble mean are scaled by `factor`.

    Arguments:
        engine: any sampler with `sample(y, operator, n, *, rng)` returning `(n, B, N, C)`.
        factor: the scale `k > 0` of the deviations (1: the engine itself).
    """

    def __init__(self, engine, factor: float):
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.engine, self.factor = engine, float(factor)

    def __getattr__(self, name):  # noise, prior, domain...: the engine's
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    @torch.no_grad()
    def sample(self, y: torch.Tensor, operator: LinearOperator, n: int, *, rng=None):
        """`n` samples `(n, B, N, C)`: the engine's, spread about their mean times `factor`."""
        if n < 2:
            raise ValueError(f"a spread needs at least 2 samples, got {n}")
        s = self.engine.sample(y, operator, n, rng=rng)
        mean = s.mean(0, keepdim=True)
        return mean + self.factor * (s - mean)


@torch.no_grad()
def fit_spread_factor(
    engine, batch: ObservationBatch, domain, *, samples: int = 16, seed: int = 0
) -> float:
    """The factor making the engine's spread/skill 1 on `batch`'s hidden entries.

    The inverse of `spread_skill_ratio` of the engine's samples, area-weighted over the entries
    `batch.mask` hides.

    Arguments:
        engine: the sampler.
        batch: observations of validation signals (`ObservationBatch`; its `truth` is read).
        domain: the domain (its mass weights the cells).
        samples: samples per observation.
        seed: seed of the samples.
    """
    if samples < 2:
        raise ValueError(f"samples must be at least 2, got {samples}")
    operator = batch.operator(domain)
    y = (
        batch.y.to(next(iter(engine.parameters())).dtype)
        if hasattr(engine, "parameters")
        else batch.y
    )
    s = engine.sample(y, operator, samples, rng=torch.Generator().manual_seed(seed)).double()
    hidden = ~batch.mask.expand_as(batch.truth)
    return float(1.0 / spread_skill_ratio(s, batch.truth.double(), domain.mass.double(), hidden))
