r"""Probabilistic and deterministic scores with area weights, over the cells a mask selects.

Conventions (WeatherBench2): every average is weighted by cell area (the domain's mass) and,
when `where` is given, only over the selected entries (e.g. the missing cells of an
imputation): :math:`\bar f = \sum_n w_n f_n [n \in \text{where}] / \sum_n w_n [n\in\text{where}]`.
Shapes: a field is `(*, N, C)`, an ensemble `(S, *, N, C)`, weights `(N,)`.

The `xr_*` functions are the same scores on xarray objects with named dimensions (WeatherBench2
style): they average over `dims` only, so every other dimension (e.g. `time`) is kept and scored
separately, and dask-backed inputs give lazy results. Their weights come from
`cell_area_weights`, normalised to mean 1 over latitude (longitude cells are equal). They
accumulate in float64; entries outside `where` never count, even when NaN; a slice in which
`where` selects nothing scores NaN (where the torch functions raise).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

import numpy as np
import torch
import xarray as xr

__all__ = [
    "bootstrap_interval",
    "cell_area_weights",
    "central_interval",
    "crps_ensemble",
    "interval_coverage",
    "rank_histogram",
    "spread_skill_ratio",
    "weighted_mean",
    "weighted_rmse",
    "xr_bias",
    "xr_coverage",
    "xr_crps",
    "xr_rmse",
    "xr_spread_skill",
]


def weighted_mean(
    values: torch.Tensor, weight: torch.Tensor, where: torch.Tensor | None = None
) -> torch.Tensor:
    """Area-weighted mean of `values` `(*, N, C)` over the entries where `where` is True; 0-d."""
    w = weight.to(values.dtype)[:, None].expand(values.shape[-2:])
    w = w.expand(values.shape)
    if where is not None:
        w = w * where.to(values.dtype).expand(values.shape)
    total = w.sum()
    if total <= 0:
        raise ValueError("where selects no entry (or all weights are zero)")
    return (w * values).sum() / total


def weighted_rmse(
    pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None
) -> torch.Tensor:
    """Area-weighted root-mean-square error, the mean taken before the root; 0-d tensor."""
    return weighted_mean((pred - truth) ** 2, weight, where).sqrt()


def crps_ensemble(
    samples: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None
) -> torch.Tensor:
    r"""Fair (unbiased) ensemble CRPS, area-weighted; 0-d tensor.

    Per entry,
    :math:`\mathrm{CRPS} = \frac1S\sum_i|X_i - y| - \frac{1}{2S(S-1)}\sum_{i\ne j}|X_i-X_j|`
    (Ferro 2014), an unbiased estimate of the CRPS of the distribution the members are drawn
    from. With one member it is the absolute error. The pair sum uses the sorted members:
    :math:`\sum_{i,j}|X_i - X_j| = 2\sum_k (2k - S + 1) X_{(k)}`, `k = 0..S-1`.

    Arguments:
        samples: `(S, *, N, C)`.
        truth: `(*, N, C)`.
        weight: area weights `(N,)`.
        where: optional boolean, broadcastable to `(*, N, C)`; only True entries count.
    """
    s = samples.shape[0]
    skill = (samples - truth).abs().mean(0)
    if s == 1:
        return weighted_mean(skill, weight, where)
    ranks = torch.arange(s, dtype=samples.dtype, device=samples.device)
    coef = (2 * ranks - s + 1).view(-1, *([1] * (samples.dim() - 1)))
    pair_sum = 2 * (coef * samples.sort(dim=0).values).sum(0)
    return weighted_mean(skill - pair_sum / (2 * s * (s - 1)), weight, where)


def central_interval(
    samples: torch.Tensor, level: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical central interval of an ensemble `(S, ...)` holding a share `level` of it.

    Returns:
        `(lower, upper)`, the (1-level)/2 and (1+level)/2 quantiles, each of shape `(...)`.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype, device=samples.device)
    lo, hi = torch.quantile(samples, q, dim=0)
    return lo, hi


def interval_coverage(
    lower: torch.Tensor, upper: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None
) -> torch.Tensor:
    """Area-weighted fraction of truths inside `[lower, upper]`; 0-d tensor in [0, 1]."""
    inside = ((truth >= lower) & (truth <= upper)).to(truth.dtype)
    return weighted_mean(inside, weight, where)


def pit_coverage(frequencies: torch.Tensor, level: float = 0.9) -> torch.Tensor:
    """Coverage of an ensemble's central `level` predictive interval, from its rank histogram.

    The empirical interval of `S` members (`central_interval`) holds a calibrated truth with
    probability `level (S - 1) / (S + 1)` only (79.4 % for 90 % at `S = 16`), so its coverage
    mixes the ensemble's calibration with its size. The randomised PIT does not: a truth of rank
    `r` (`rank_histogram`) has a PIT uniform on `[r, r + 1] / (S + 1)`, and the share of it inside
    `[(1 - level) / 2, (1 + level) / 2]`, averaged over the ranks, is `level` exactly for a
    calibrated ensemble of any size (below for an over-confident one, above for a too wide one).

    Arguments:
        frequencies: `(S + 1,)` rank frequencies summing to 1 (`rank_histogram`).
        level: the interval's nominal probability, in (0, 1).

    Returns:
        0-d float64 tensor in [0, 1].
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    f = torch.as_tensor(frequencies, dtype=torch.float64).flatten()
    n = f.numel()
    if n < 2:
        raise ValueError("a rank histogram has S + 1 >= 2 frequencies")
    edges = torch.arange(n + 1, dtype=torch.float64) / n
    lo, hi = (1 - level) / 2, (1 + level) / 2
    inside = (edges[1:].clamp(lo, hi) - edges[:-1].clamp(lo, hi)) * n  # share of each rank's PIT
    return (f * inside).sum()


def spread_skill_ratio(
    samples: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None
) -> torch.Tensor:
    r"""Spread over skill of an ensemble, area-weighted; 0-d tensor.

    It is :math:`\sqrt{\tfrac{S+1}{S}\overline{\mathrm{var}}}\,/\,\mathrm{RMSE}(\bar X)`.
    `var` is the unbiased ensemble variance; the factor :math:`(S+1)/S` makes a calibrated
    ensemble of any size score 1 in expectation (Fortin et al. 2014).
    """
    s = samples.shape[0]
    if s < 2:
        raise ValueError("spread needs at least 2 samples")
    spread = ((s + 1) / s * weighted_mean(samples.var(0), weight, where)).sqrt()
    return spread / weighted_rmse(samples.mean(0), truth, weight, where)


def rank_histogram(
    samples: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, where=None
) -> torch.Tensor:
    """Area-weighted frequencies of the truth's rank among the ensemble (Talagrand, PIT).

    The rank of an entry is the number of members below its truth, `0..S`. For a calibrated
    ensemble (truth and members exchangeable) every rank is equally likely, `1 / (S + 1)`: a
    U shape means the ensemble is too narrow (over-confident), a dome too wide, a slope biased.
    Ties (a member equal to the truth, e.g. point masses) count half below, half above.

    Arguments:
        samples: `(S, *, N, C)`.
        truth: `(*, N, C)`.
        weight: area weights `(N,)`.
        where: optional boolean, broadcastable to `(*, N, C)`; only True entries count.

    Returns:
        `(S + 1,)` frequencies summing to 1.
    """
    s = samples.shape[0]
    below = (samples < truth).sum(0)
    ties = (samples == truth).sum(0)
    w = weight.double()[:, None].expand(truth.shape[-2:]).expand(truth.shape)
    if where is not None:
        w = w * where.to(torch.double).expand(truth.shape)
    total = w.sum()
    if total <= 0:
        raise ValueError("where selects no entry (or all weights are zero)")
    # a tie is split evenly between the ranks it spans: rank below + j for j in 0..ties
    out = torch.zeros(s + 1, dtype=torch.float64)
    share = (w / (ties + 1)).flatten()
    for j in range(int(ties.max()) + 1):
        hit = (ties >= j).flatten()
        out.index_add_(0, (below + j).flatten()[hit], share[hit])
    return out / total


def bootstrap_interval(
    statistic, n: int, *, draws: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of a score over `n` independent units (e.g. test fields).

    Arguments:
        statistic: `index (n,) int64 tensor -> float`, the score recomputed on the units picked
            by `index` (drawn with replacement), e.g. `lambda i: coverage(samples[:, i], ...)`.
        n: number of units.
        draws: bootstrap resamples.
        level: the interval's probability.
        seed: seed of the resampling.

    Returns:
        `(lower, upper)`, the `(1 - level) / 2` and `(1 + level) / 2` quantiles of the
        resampled scores (NaN resamples are dropped).
    """
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 units, got {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    g = torch.Generator().manual_seed(seed)
    values = np.array([float(statistic(torch.randint(n, (n,), generator=g))) for _ in range(draws)])
    values = values[np.isfinite(values)]
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------------
# xarray versions (WeatherBench2 conventions): named dimensions, per-slice scores, dask-lazy.
# --------------------------------------------------------------------------------------------

_DEFAULT_DIMS = ("latitude", "longitude")


def cell_area_weights(lat_deg, lat_bounds_deg=None) -> xr.DataArray:
    r"""Area weights of the latitude rows of a regular grid, normalised to mean 1 (WeatherBench2).

    Row `i` weighs :math:`\sin\varphi_{i,hi} - \sin\varphi_{i,lo}`, the area of its cells per
    radian of longitude. Without `lat_bounds_deg` the edges are those of
    `manifold_aps.geometry.grids.cell_bounds` (as in `SphereGrid`): halfway between centres,
    the outer ones half a spacing beyond the first and last centre and clipped to ±90°. A global
    grid whose end rows are the poles thus gets the polar caps; a regional grid gets cells of its
    own spacing, not rows stretching to the poles.

    Arguments:
        lat_deg: latitudes of the row centres `(nlat,)` in degrees, increasing or decreasing;
            a 1-D DataArray (e.g. `ds["latitude"]`) or anything `np.asarray` accepts.
        lat_bounds_deg: optional row edges `(nlat+1,)` in degrees, in the direction of `lat_deg`.

    Returns:
        weights `(nlat,)`, dimensionless, mean 1, in the order of `lat_deg`. The dimension is the
        DataArray's own (with its coordinate values) or `latitude` for a plain array.

    Raises:
        ValueError: `lat_deg` is not 1-D, not strictly monotonic, outside [-90, 90] or has fewer
            than 2 rows without bounds; `lat_bounds_deg` has the wrong shape or direction.
    """
    if isinstance(lat_deg, xr.DataArray):
        if lat_deg.ndim != 1:
            raise ValueError(f"lat_deg must be 1-D, got dims {lat_deg.dims}")
        dim = lat_deg.dims[0]
    else:
        dim = _DEFAULT_DIMS[0]
    lat = np.asarray(lat_deg, dtype=np.float64)
    if lat.ndim != 1:
        raise ValueError(f"lat_deg must be 1-D, got shape {lat.shape}")
    if lat.size and np.any(np.abs(lat) > 90):
        raise ValueError(
            f"lat_deg must lie in [-90, 90] degrees, got range [{lat.min()}, {lat.max()}]"
        )
    from manifold_aps.geometry.grids import cell_bounds

    if lat_bounds_deg is None:
        bounds = cell_bounds(lat, -90.0, 90.0)
    else:
        bounds = np.asarray(lat_bounds_deg, dtype=np.float64)
        if bounds.shape != (lat.size + 1,):
            raise ValueError(
                f"lat_bounds_deg must have shape ({lat.size + 1},), got {bounds.shape}"
            )
        if np.any(np.abs(bounds) > 90):
            raise ValueError(
                f"lat_bounds_deg must lie in [-90, 90], got [{bounds.min()}, {bounds.max()}]"
            )
        if lat.size > 1 and not np.all(np.diff(bounds) * (lat[1] - lat[0]) > 0):
            raise ValueError(
                "lat_bounds_deg must be strictly monotonic in the direction of lat_deg, "
                f"got {bounds[:6].tolist()}..."
            )
    rad = np.deg2rad(bounds)
    weights = np.abs(np.sin(rad[1:]) - np.sin(rad[:-1]))
    if not np.all(weights > 0):
        raise ValueError(f"every latitude row needs a positive area; got edges {bounds.tolist()}")
    return xr.DataArray(
        weights / weights.mean(),
        dims=(dim,),
        coords={dim: lat},
        name="cell_area_weight",
        attrs={"long_name": "latitude cell area weight, mean 1", "units": "1"},
    )


def _dims(dims, obj: xr.DataArray, arg: str) -> tuple[Hashable, ...]:
    """`dims` as a tuple (None: all of `obj`'s), each checked to be a dimension of `obj`."""
    if dims is None:
        return tuple(obj.dims)
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    missing = [d for d in dims if d not in obj.dims]
    if missing:
        raise ValueError(
            f"dims {missing} are not dimensions of {arg}, which has dims {tuple(obj.dims)}"
        )
    return dims


def _f64(x: xr.DataArray) -> xr.DataArray:
    """`x` in at least float64 precision (scores of float32 fields are accumulated in float64)."""
    if not isinstance(x, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray, got {type(x).__name__}")
    return x.astype(np.promote_types(x.dtype, np.float64), copy=False)


def _check_subset(obj: xr.DataArray, of: xr.DataArray, arg: str, of_arg: str) -> None:
    extra = [d for d in obj.dims if d not in of.dims]
    if extra:
        raise ValueError(
            f"{arg} has dims {extra} that {of_arg} lacks ({of_arg} dims: {tuple(of.dims)})"
        )


def _xr_weighted_mean(
    values: xr.DataArray,
    weights: xr.DataArray,
    where: xr.DataArray | None,
    dims: Iterable[Hashable] | str | None,
    arg: str = "the data",
) -> xr.DataArray:
    """Mean of `values` over `dims`, weighted by `weights` and restricted to `where`.

    Entries outside `where` do not count even when NaN; a NaN inside `where` makes its slice
    NaN; a slice in which `where` selects nothing (or all weights are 0) is NaN.
    """
    if not isinstance(values, xr.DataArray):
        raise TypeError(f"{arg} must be an xarray.DataArray, got {type(values).__name__}")
    if not isinstance(weights, xr.DataArray):
        raise TypeError(
            "weights must be an xarray.DataArray (see cell_area_weights), "
            f"got {type(weights).__name__}"
        )
    dims = _dims(dims, values, arg)
    _check_subset(weights, values, "weights", arg)
    w = weights
    if where is not None:
        if not isinstance(where, xr.DataArray):
            raise TypeError(f"where must be a boolean xarray.DataArray, got {type(where).__name__}")
        if where.dtype != bool:
            raise ValueError(f"where must be boolean, got dtype {where.dtype}")
        _check_subset(where, values, "where", arg)
        try:
            values, w, where = xr.align(values, w, where, join="exact", copy=False)
        except ValueError as err:
            raise ValueError(
                f"{arg}, weights and where must share coordinates exactly: {err}"
            ) from err
        values = values.where(where, 0.0)
        w = w.where(where, 0.0)
    else:
        try:
            values, w = xr.align(values, w, join="exact", copy=False)
        except ValueError as err:
            raise ValueError(f"{arg} and weights must share coordinates exactly: {err}") from err
    # Broadcast the weights to every reduced dimension so that their sum counts each entry.
    w = w.broadcast_like(values)
    total = w.sum(dims, skipna=False)
    mean = (w * values).sum(dims, skipna=False) / total.where(total > 0)
    return mean


def xr_rmse(
    pred: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray,
    where: xr.DataArray | None = None,
    dims: Iterable[Hashable] | str | None = _DEFAULT_DIMS,
) -> xr.DataArray:
    """Area-weighted root-mean-square error over `dims`, the mean taken before the root.

    Arguments:
        pred: prediction, e.g. `(time, latitude, longitude)`.
        truth: truth, broadcastable against `pred`, same units.
        weights: area weights, e.g. `cell_area_weights(truth.latitude)` `(latitude,)`.
        where: optional boolean mask (e.g. the hidden cells); only True entries count.
        dims: the dimensions averaged over (default `("latitude", "longitude")`, one score per
            remaining index such as each time); None averages over all of them.

    Returns:
        RMSE in the units of `truth`, with the dimensions not in `dims`; NaN for a slice with no
        selected entry.

    Raises:
        ValueError: a name in `dims` is not a dimension of `pred - truth`, `weights` or `where`
            has a dimension the data lacks, or their coordinates differ.
    """
    err = _f64(pred) - _f64(truth)
    return np.sqrt(_xr_weighted_mean(err**2, weights, where, dims, "pred - truth")).rename("rmse")


def xr_bias(
    pred: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray,
    where: xr.DataArray | None = None,
    dims: Iterable[Hashable] | str | None = _DEFAULT_DIMS,
) -> xr.DataArray:
    """Area-weighted mean error `pred - truth` over `dims` (arguments as in `xr_rmse`).

    Returns:
        the bias in the units of `truth`, positive when `pred` is too high.
    """
    err = _f64(pred) - _f64(truth)
    return _xr_weighted_mean(err, weights, where, dims, "pred - truth").rename("bias")


def _sample_dim(samples: xr.DataArray, truth: xr.DataArray, sample_dim: Hashable) -> int:
    if sample_dim not in samples.dims:
        raise ValueError(
            f"sample_dim {sample_dim!r} is not a dimension of samples {tuple(samples.dims)}"
        )
    if sample_dim in truth.dims:
        raise ValueError(
            f"truth must not have the sample dimension {sample_dim!r}: {tuple(truth.dims)}"
        )
    return samples.sizes[sample_dim]


def xr_crps(
    samples: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray,
    where: xr.DataArray | None = None,
    dims: Iterable[Hashable] | str | None = _DEFAULT_DIMS,
    sample_dim: Hashable = "sample",
) -> xr.DataArray:
    r"""Fair (unbiased) ensemble CRPS, area-weighted over `dims`; the formula of `crps_ensemble`.

    Per entry, :math:`\frac1S\sum_i|X_i - y| - \frac{1}{2S(S-1)}\sum_{i\ne j}|X_i-X_j|`, the pair
    sum from the sorted members; with one member it is the absolute error.

    Arguments:
        samples: ensemble with a `sample_dim` dimension, e.g. `(sample, time, latitude, longitude)`.
        truth: truth without `sample_dim`.
        weights: area weights, as in `xr_rmse`.
        where: optional boolean mask, as in `xr_rmse`.
        dims: the dimensions averaged over, as in `xr_rmse` (never including `sample_dim`).
        sample_dim: the ensemble dimension.

    Returns:
        CRPS in the units of `truth`, with the dimensions not in `dims` (nor `sample_dim`).

    Raises:
        ValueError: `sample_dim` is missing from `samples` or present in `truth`, or as `xr_rmse`.
    """
    s = _sample_dim(samples, truth, sample_dim)
    samples, truth = _f64(samples), _f64(truth)
    skill = abs(samples - truth).mean(sample_dim, skipna=False)
    if s == 1:
        return _xr_weighted_mean(skill, weights, where, dims, "the CRPS field").rename("crps")
    ordered = xr.apply_ufunc(
        np.sort,
        samples,
        input_core_dims=[[sample_dim]],
        output_core_dims=[[sample_dim]],
        kwargs={"axis": -1},
        dask="parallelized",
        output_dtypes=[samples.dtype],
        dask_gufunc_kwargs={"allow_rechunk": True},
    )
    coef = xr.DataArray(2.0 * np.arange(s) - s + 1, dims=(sample_dim,))
    ordered = ordered.drop_vars(sample_dim, errors="ignore")
    pair_sum = 2 * (coef * ordered).sum(sample_dim, skipna=False)
    score = skill - pair_sum / (2 * s * (s - 1))
    return _xr_weighted_mean(score, weights, where, dims, "the CRPS field").rename("crps")


def xr_spread_skill(
    samples: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray,
    where: xr.DataArray | None = None,
    dims: Iterable[Hashable] | str | None = _DEFAULT_DIMS,
    sample_dim: Hashable = "sample",
) -> xr.DataArray:
    r"""Spread-skill ratio of an ensemble, area-weighted over `dims`.

    :math:`\sqrt{\tfrac{S+1}{S}\overline{\mathrm{var}}}\,/\,\mathrm{RMSE}(\bar X)` as in
    `spread_skill_ratio`: `var` is the unbiased ensemble variance, averaged with the area
    weights over `dims`; a calibrated ensemble of any size scores 1 in expectation.

    Arguments:
        samples: ensemble with a `sample_dim` dimension, as in `xr_crps`.
        truth: truth without `sample_dim`.
        weights: area weights, as in `xr_rmse`.
        where: optional boolean mask, as in `xr_rmse`.
        dims: the dimensions averaged over, as in `xr_crps`.
        sample_dim: the ensemble dimension.

    Returns:
        the dimensionless ratio, with the dimensions not in `dims`.

    Raises:
        ValueError: fewer than 2 members, or as `xr_crps`.
    """
    s = _sample_dim(samples, truth, sample_dim)
    if s < 2:
        raise ValueError(f"spread needs at least 2 samples along {sample_dim!r}, got {s}")
    samples = _f64(samples)
    var = samples.var(sample_dim, ddof=1, skipna=False)
    mean_var = _xr_weighted_mean(var, weights, where, dims, "the ensemble variance")
    spread = np.sqrt((s + 1) / s * mean_var)
    ens_mean = samples.mean(sample_dim, skipna=False)
    skill = xr_rmse(ens_mean, truth, weights=weights, where=where, dims=dims)
    return (spread / skill).rename("spread_skill")


def xr_coverage(
    lower: xr.DataArray,
    upper: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray,
    where: xr.DataArray | None = None,
    dims: Iterable[Hashable] | str | None = _DEFAULT_DIMS,
) -> xr.DataArray:
    """Area-weighted fraction of `truth` inside `[lower, upper]` over `dims`.

    Arguments:
        lower: lower interval bounds (e.g. an ensemble quantile), broadcastable against `truth`.
        upper: upper interval bounds, likewise.
        truth: the values to cover.
        weights: area weights, as in `xr_rmse`.
        where: optional boolean mask, as in `xr_rmse`.
        dims: the dimensions averaged over, as in `xr_rmse`.

    Returns:
        the coverage in [0, 1], with the dimensions not in `dims`; a NaN in `lower`, `upper` or
        `truth` inside `where` makes its slice NaN.
    """
    inside = ((truth >= lower) & (truth <= upper)).astype(np.float64)
    inside = inside.where(truth.notnull() & lower.notnull() & upper.notnull())
    return _xr_weighted_mean(inside, weights, where, dims, "the coverage field").rename("coverage")
