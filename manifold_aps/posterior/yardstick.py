"""Measure an engine against the exact Gaussian posterior: KL per dimension and interval coverage."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manifold_aps.metrics import central_interval, interval_coverage
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.gaussian import ExactGaussianPosterior
from manifold_aps.posterior.observations import ObservationBatch
from manifold_aps.priors.gaussian import GaussianPrior

__all__ = ["YardstickResult", "gaussian_yardstick"]


@dataclass
class YardstickResult:
    """Scores of an engine on held-out observations of a Gaussian problem.

    Attributes:
        kl_per_dim: Monte Carlo KL(q || exact posterior) per dimension, per observation `(B,)`.
        kl_se: its Monte Carlo standard error `(B,)`.
        coverage_90: area-weighted fraction of held-out truths inside q's central 90 % interval
            (empirical quantiles of the samples), over all nodes of all observations.
        exact_coverage_90: the same for exact posterior samples (what a perfect engine gets).
        mean_rmse_vs_exact: RMSE between q's sample mean and the exact posterior mean.
    """

    kl_per_dim: torch.Tensor
    kl_se: torch.Tensor
    coverage_90: float
    exact_coverage_90: float
    mean_rmse_vs_exact: float


@torch.no_grad()
def gaussian_yardstick(
    engine, prior: GaussianPrior, noise: GaussianNoise, batch: ObservationBatch, *, num_samples: int = 256,
    generator=None, chunk: int = 32,
) -> YardstickResult:
    r"""KL(q || p(x|y)) estimated as :math:`\frac{1}{D}\mathbb{E}_q[\log q(x|y) - \log p(x|y)]` with
    `num_samples` draws of `q` per observation (needs `engine.sample_and_log_prob`), plus coverage."""
    operator = batch.operator(prior.domain)
    exact = ExactGaussianPosterior(prior, noise).condition(batch.y.double(), operator)
    xs, lqs = [], []
    for start in range(0, num_samples, chunk):  # bounded memory: chunk samples per pass
        x, logq = engine.sample_and_log_prob(batch.y, operator, min(chunk, num_samples - start), generator=generator)
        xs.append(x.double())
        lqs.append(logq.double())
    x, logq = torch.cat(xs), torch.cat(lqs)
    logp = exact.log_prob(x)
    dims = x.shape[2] * x.shape[3]
    diff = (logq - logp) / dims
    lo, hi = central_interval(x, 0.9)
    w = prior.domain.mass
    cov = float(interval_coverage(lo, hi, batch.truth.double(), w))
    ex = exact.sample(num_samples, rng=generator)
    elo, ehi = central_interval(ex, 0.9)
    return YardstickResult(
        kl_per_dim=diff.mean(0),
        kl_se=diff.std(0) / num_samples**0.5,
        coverage_90=cov,
        exact_coverage_90=float(interval_coverage(elo, ehi, batch.truth.double(), w)),
        mean_rmse_vs_exact=float((x.mean(0) - exact.mean).pow(2).mean().sqrt()),
    )
