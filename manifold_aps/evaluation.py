"""Scores of posterior samples against a known truth, the same keys for every engine.

`posterior_scores` gathers the area-weighted scores of `manifold_aps.metrics` that every
example and benchmark reports (RMSE of the mean and of one sample, fair CRPS, 90 % coverage,
spread/skill) into one dict; `band_power_ratios` compares the angular power of full-sky HEALPix
maps with a reference spectrum, band by band.
"""

from __future__ import annotations

import numpy as np
import torch

from manifold_aps.metrics import (
    central_interval,
    crps_ensemble,
    interval_coverage,
    spread_skill_ratio,
    weighted_rmse,
)

__all__ = ["band_power_ratios", "posterior_scores"]


def posterior_scores(
    samples: torch.Tensor,
    truth: torch.Tensor,
    weight: torch.Tensor,
    where: torch.Tensor | None = None,
    *,
    mean: torch.Tensor | None = None,
) -> dict[str, float]:
    """Area-weighted scores of posterior samples over the entries `where` is True.

    Args:
        samples: posterior samples `(S, B, N, C)`, in the units of `truth`.
        truth: the true signals `(B, N, C)`.
        weight: node areas `(N,)` (`domain.mass`).
        where: optional boolean broadcastable to `(B, N, C)`: the entries scored (the hidden
            ones); None scores all.
        mean: the exact posterior mean `(B, N, C)` where the engine has one (default: the
            samples' mean).

    Returns:
        `{"rmse_mean", "rmse_sample_median", "crps", "coverage_90", "spread_skill"}`: the RMSE of
        the mean, the median over samples of one sample's RMSE, the fair ensemble CRPS (all in
        the units of `truth`), the share of truths inside the samples' central 90 % interval and
        the spread/skill ratio (NaN for a single sample).

    Example:
        >>> import torch
        >>> from manifold_aps import HealpixSphere, posterior_scores
        >>> domain = HealpixSphere(1)
        >>> truth = torch.zeros(1, domain.num_nodes, 1)
        >>> samples = torch.randn(8, 1, domain.num_nodes, 1)
        >>> sorted(posterior_scores(samples, truth, domain.mass))
        ['coverage_90', 'crps', 'rmse_mean', 'rmse_sample_median', 'spread_skill']
    """
    lo, hi = central_interval(samples, 0.9)
    per_sample = [float(weighted_rmse(x, truth, weight, where)) for x in samples]
    centre = samples.mean(0) if mean is None else mean
    spread_skill = (
        float(spread_skill_ratio(samples, truth, weight, where))
        if samples.shape[0] > 1
        else float("nan")
    )
    return {
        "rmse_mean": float(weighted_rmse(centre, truth, weight, where)),
        "rmse_sample_median": float(np.median(per_sample)),
        "crps": float(crps_ensemble(samples, truth, weight, where)),
        "coverage_90": float(interval_coverage(lo, hi, truth, weight, where)),
        "spread_skill": spread_skill,
    }


def band_power_ratios(
    maps: np.ndarray, reference_cl: np.ndarray, bands: list[tuple[int, int]]
) -> list[float]:
    """Angular power of full-sky HEALPix maps over that of a reference spectrum, per band.

    Args:
        maps: `(S, N)` full-sky maps in RING order, `N = 12 nside^2`.
        reference_cl: the reference angular power spectrum `C_l`, `l = 0..` at least the
            largest multipole of `bands`.
        bands: multipole bands `(l_first, l_last)`, both included.

    Returns:
        per band, the mean over the maps of their `healpy.anafast` `C_l` summed over the band,
        divided by the sum of `reference_cl` over the band (1: the reference's power); NaN per
        band when `maps` is empty or not finite.
    """
    import healpy as hp

    maps = np.asarray(maps, dtype=np.float64)
    if maps.shape[0] == 0 or not np.isfinite(maps).all():
        return [float("nan")] * len(bands)
    lmax = 3 * hp.npix2nside(maps.shape[1]) - 1
    cls = np.stack([hp.anafast(m, lmax=lmax) for m in maps])
    return [
        float(np.mean(cls[:, first : last + 1].sum(1) / reference_cl[first : last + 1].sum()))
        for first, last in bands
    ]
