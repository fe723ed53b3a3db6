"""Scores of an imputation against the input's values at the hidden cells (WeatherBench2 style)."""

from __future__ import annotations

import math

import scipy.stats
import xarray as xr

from climate.impute import OBSERVED
from climate.schema import LATITUDE, SAMPLE, VALUES
from manifold_aps.metrics import (
    cell_area_weights,
    xr_bias,
    xr_coverage,
    xr_crps,
    xr_rmse,
    xr_spread_skill,
)

__all__ = ["imputation_scores"]


def imputation_scores(result: xr.Dataset, truth: xr.DataArray, variable: str) -> dict:
    r"""Area-weighted scores over the hidden cells where `truth` has a value, all dims pooled.

    Arguments:
        result: the output of `climate.impute` (`<variable>_mean`, `_samples`, `observed`).
        truth: the input field (hidden cells with a value are the test set).
        variable: the variable name.

    `coverage_90` is that of the ensemble's 90 % prediction interval for one more draw,
    :math:`\bar x \pm t_{S-1,\,0.95}\, s \sqrt{1 + 1/S}` (`S` samples, `s` their std): exactly 90 %
    in expectation for a calibrated Gaussian ensemble of any size (the exact Gaussian engine's
    samples are one), where the interval between the samples' 5 % and 95 % quantiles covers only
    about 0.9 (S - 1) / (S + 1) of draws (79 % at S = 16). `coverage_90_quantiles` is the latter.

    Returns:
        `{"rmse_mean", "rmse_sample", "bias", "crps", "coverage_90", "coverage_90_quantiles",
        "spread_skill", "hidden_fraction", "num_samples"}` in the variable's units (coverage and
        fractions in [0, 1]), or `{}` when no hidden cell has a value in `truth`.
    """
    where = (result[OBSERVED] == 0) & truth.notnull()
    if not bool(where.any()):
        return {}
    weights = (
        xr.ones_like(truth[LATITUDE], dtype=float)  # HEALPix pixels (along `values`): equal areas
        if VALUES in truth.dims
        else cell_area_weights(truth[LATITUDE])
    )
    dims = tuple(result[f"{variable}_mean"].dims)
    samples = result[f"{variable}_samples"]
    mean = result[f"{variable}_mean"]
    lo, hi = samples.quantile([0.05, 0.95], dim=SAMPLE)  # the samples' central 90 % interval
    kw = {"weights": weights, "where": where, "dims": dims}
    n = samples.sizes[SAMPLE]
    coverage = float("nan")
    if n > 1:
        half = scipy.stats.t.ppf(0.95, n - 1) * samples.std(SAMPLE, ddof=1) * math.sqrt(1 + 1 / n)
        centre = samples.mean(SAMPLE)
        coverage = float(xr_coverage(centre - half, centre + half, truth, **kw))
    scores = {
        "rmse_mean": float(xr_rmse(mean, truth, **kw)),
        "rmse_sample": float(xr_rmse(samples.isel({SAMPLE: 0}, drop=True), truth, **kw)),
        "bias": float(xr_bias(mean, truth, **kw)),
        "crps": float(xr_crps(samples, truth, sample_dim=SAMPLE, **kw)),
        "coverage_90": coverage,
        "coverage_90_quantiles": float(
            xr_coverage(lo.drop_vars("quantile"), hi.drop_vars("quantile"), truth, **kw)
        ),
        "spread_skill": float(xr_spread_skill(samples, truth, sample_dim=SAMPLE, **kw))
        if n > 1
        else float("nan"),
        "hidden_fraction": float((result[OBSERVED] == 0).mean()),
        "num_samples": n,
    }
    return scores
