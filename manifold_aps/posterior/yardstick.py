"""Measure an engine against the exact Gaussian posterior: KL per dimension, interval coverage."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manifold_aps.metrics import central_interval, interval_coverage
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.gaussian import ExactGaussianPosterior
from manifold_aps.posterior.observations import ObservationBatch
from manifold_aps.priors.gaussian import GaussianPrior

__all__ = [
    "SampleYardstick",
    "YardstickResult",
    "gaussian_w2",
    "gaussian_yardstick",
    "sample_yardstick",
]


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
    engine,
    prior: GaussianPrior,
    noise: GaussianNoise,
    batch: ObservationBatch,
    *,
    num_samples: int = 256,
    generator=None,
    chunk: int = 32,
) -> YardstickResult:
    r"""KL(q || p(x|y)) per dimension and interval coverage of an engine on `batch`.

    The KL is estimated as :math:`\frac{1}{D}\mathbb{E}_q[\log q(x|y) - \log p(x|y)]` with
    `num_samples` draws of `q` per observation (needs `engine.sample_and_log_prob`).
    """
    operator = batch.operator(prior.domain)
    exact = ExactGaussianPosterior(prior, noise).condition(batch.y.double(), operator)
    xs, lqs = [], []
    for start in range(0, num_samples, chunk):  # bounded memory: chunk samples per pass
        x, logq = engine.sample_and_log_prob(
            batch.y, operator, min(chunk, num_samples - start), generator=generator
        )
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


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    lam, u = torch.linalg.eigh(c)
    return (u * lam.clamp_min(0).sqrt()[..., None, :]) @ u.transpose(-1, -2)


def gaussian_w2(samples: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    r"""Wasserstein-2 distance between the Gaussian fit of `samples` and :math:`N(\mu, \Sigma)`.

    :math:`W_2^2 = \|m - \mu\|^2
    + \mathrm{tr}\big(C + \Sigma - 2(\Sigma^{1/2}C\Sigma^{1/2})^{1/2}\big)`
    with the samples' mean `m` and unbiased covariance `C` (Euclidean, on node values). The
    estimate is biased upwards by the sampling error of `m` and `C`: compare with the value for
    the same number of exact samples (`sample_yardstick` reports both).

    Arguments:
        samples: `(S, N)`.
        mean: `(N,)`.
        cov: `(N, N)`.

    Returns:
        0-d tensor, :math:`W_2` in signal units.
    """
    m = samples.mean(0)
    c = torch.cov(samples.T)
    root = _sqrtm_psd(cov)
    cross = _sqrtm_psd(root @ c @ root)
    w2 = (m - mean).pow(2).sum() + torch.trace(c) + torch.trace(cov) - 2 * torch.trace(cross)
    return w2.clamp_min(0).sqrt()


@dataclass
class SampleYardstick:
    r"""Scores of a sampler without a density on held-out observations of a Gaussian problem.

    Attributes:
        w2_per_dim: :math:`W_2/\sqrt{D}` between the Gaussian fit of its samples and the exact
            posterior, per observation `(B,)` (signal units).
        exact_w2_per_dim: the same for as many exact posterior samples: the estimator's floor.
        std_ratio: mean over nodes of the samples' std over the exact posterior std, `(B,)`.
        coverage_90: area-weighted coverage of held-out truths by the samples' central 90 %
            interval.
        exact_coverage_90: the same for exact samples.
        mean_rmse_vs_exact: RMSE between the sample mean and the exact posterior mean.
    """

    w2_per_dim: torch.Tensor
    exact_w2_per_dim: torch.Tensor
    std_ratio: torch.Tensor
    coverage_90: float
    exact_coverage_90: float
    mean_rmse_vs_exact: float


@torch.no_grad()
def sample_yardstick(
    engine,
    prior: GaussianPrior,
    noise: GaussianNoise,
    batch: ObservationBatch,
    *,
    num_samples: int = 1024,
    generator=None,
    chunk: int = 64,
) -> SampleYardstick:
    """W2 of Gaussian fits, std ratio and coverage for any engine with `sample(y, A, n, rng=)`.

    Single channel. Use `num_samples` well above `N` for a meaningful covariance fit.
    """
    operator = batch.operator(prior.domain)
    exact = ExactGaussianPosterior(prior, noise).condition(batch.y.double(), operator)
    x = torch.cat(
        [
            engine.sample(batch.y, operator, min(chunk, num_samples - s), rng=generator).double()
            for s in range(0, num_samples, chunk)
        ]
    )
    ex = exact.sample(num_samples, rng=generator)
    cov = exact.covariance()
    dims = x.shape[2]
    w2 = torch.stack(
        [gaussian_w2(x[:, b, :, 0], exact.mean[b, :, 0], cov[b, 0]) for b in range(x.shape[1])]
    )
    w2_ex = torch.stack(
        [gaussian_w2(ex[:, b, :, 0], exact.mean[b, :, 0], cov[b, 0]) for b in range(x.shape[1])]
    )
    w = prior.domain.mass
    lo, hi = central_interval(x, 0.9)
    elo, ehi = central_interval(ex, 0.9)
    return SampleYardstick(
        w2_per_dim=w2 / dims**0.5,
        exact_w2_per_dim=w2_ex / dims**0.5,
        std_ratio=(x.std(0) / exact.std).mean((1, 2)),
        coverage_90=float(interval_coverage(lo, hi, batch.truth.double(), w)),
        exact_coverage_90=float(interval_coverage(elo, ehi, batch.truth.double(), w)),
        mean_rmse_vs_exact=float((x.mean(0) - exact.mean).pow(2).mean().sqrt()),
    )
