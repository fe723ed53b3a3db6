r"""Probabilistic and deterministic scores with area weights, over the cells a mask selects.

Conventions (WeatherBench2): every average is weighted by cell area (the domain's mass) and,
when `where` is given, only over the selected entries (e.g. the missing cells of an
imputation): :math:`\bar f = \sum_n w_n f_n [n \in \text{where}] / \sum_n w_n [n\in\text{where}]`.
Shapes: a field is `(*, N, C)`, an ensemble `(S, *, N, C)`, weights `(N,)`.
"""

from __future__ import annotations

import torch

__all__ = [
    "central_interval",
    "crps_ensemble",
    "interval_coverage",
    "spread_skill_ratio",
    "weighted_mean",
    "weighted_rmse",
]


def weighted_mean(values: torch.Tensor, weight: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """Area-weighted mean of `values` `(*, N, C)` over the entries where `where` is True; 0-d."""
    w = weight.to(values.dtype)[:, None].expand(values.shape[-2:])
    w = w.expand(values.shape)
    if where is not None:
        w = w * where.to(values.dtype).expand(values.shape)
    total = w.sum()
    if total <= 0:
        raise ValueError("where selects no entry (or all weights are zero)")
    return (w * values).sum() / total


def weighted_rmse(pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None) -> torch.Tensor:
    """Area-weighted root-mean-square error, the mean taken before the root; 0-d tensor."""
    return weighted_mean((pred - truth) ** 2, weight, where).sqrt()


def crps_ensemble(samples: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None) -> torch.Tensor:
    r"""Fair (unbiased) ensemble CRPS, area-weighted; 0-d tensor.

    Per entry, :math:`\mathrm{CRPS} = \frac1S\sum_i|X_i - y| - \frac{1}{2S(S-1)}\sum_{i\ne j}|X_i-X_j|`
    (Ferro 2014), an unbiased estimate of the CRPS of the distribution the members are drawn
    from. With one member it is the absolute error. The pair sum uses the sorted members:
    :math:`\sum_{i,j}|X_i - X_j| = 2\sum_k (2k - S + 1) X_{(k)}`, `k = 0..S-1`.

    Arguments:
        samples: `(S, *, N, C)`.
        truth: `(*, N, C)`.
    """
    s = samples.shape[0]
    skill = (samples - truth).abs().mean(0)
    if s == 1:
        return weighted_mean(skill, weight, where)
    ranks = torch.arange(s, dtype=samples.dtype, device=samples.device)
    coef = (2 * ranks - s + 1).view(-1, *([1] * (samples.dim() - 1)))
    pair_sum = 2 * (coef * samples.sort(dim=0).values).sum(0)
    return weighted_mean(skill - pair_sum / (2 * s * (s - 1)), weight, where)


def central_interval(samples: torch.Tensor, level: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical central interval of an ensemble `(S, ...)`: the (1-level)/2 and (1+level)/2 quantiles."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype, device=samples.device)
    lo, hi = torch.quantile(samples, q, dim=0)
    return lo, hi


def interval_coverage(lower: torch.Tensor, upper: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None) -> torch.Tensor:
    """Area-weighted fraction of truths inside `[lower, upper]`; 0-d tensor in [0, 1]."""
    inside = ((truth >= lower) & (truth <= upper)).to(truth.dtype)
    return weighted_mean(inside, weight, where)


def spread_skill_ratio(samples: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None) -> torch.Tensor:
    r"""Spread over skill: :math:`\sqrt{\tfrac{S+1}{S}\overline{\mathrm{var}}}\,/\,\mathrm{RMSE}(\bar X)`; 0-d.

    `var` is the unbiased ensemble variance; the factor :math:`(S+1)/S` makes a calibrated
    ensemble of any size score 1 in expectation (Fortin et al. 2014).
    """
    s = samples.shape[0]
    if s < 2:
        raise ValueError("spread needs at least 2 samples")
    spread = ((s + 1) / s * weighted_mean(samples.var(0), weight, where)).sqrt()
    return spread / weighted_rmse(samples.mean(0), truth, weight, where)
