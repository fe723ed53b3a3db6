"""xarray metrics (WeatherBench2 conventions) against closed forms and the torch metrics."""

from __future__ import annotations

import math

import dask
import dask.array as dsa
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import require
from scipy.special import ndtr

from climate.era5 import grid_domain, open_era5, to_signal
from manifold_aps.metrics import (
    cell_area_weights,
    crps_ensemble,
    weighted_rmse,
    xr_bias,
    xr_coverage,
    xr_crps,
    xr_rmse,
    xr_spread_skill,
)

LAT, LON = "latitude", "longitude"


def _field(rng, shape=(4, 30, 40), lat=None, dims=("time", LAT, LON)) -> xr.DataArray:
    """Random field on a regional grid, coordinates on every dimension."""
    lat = np.linspace(60.0, 30.0, shape[-2]) if lat is None else lat
    coords = {LAT: lat, LON: np.linspace(-20.0, 19.0, shape[-1])}
    if "time" in dims:
        coords["time"] = np.arange(shape[dims.index("time")])
    return xr.DataArray(rng.standard_normal(shape), dims=dims, coords=coords)


def _no_compute(*args, **kwargs):
    raise AssertionError("a dask graph was computed where the result should stay lazy")


# ---------------------------------------------------------------------------- weights


def test_global_weights_are_cell_areas_of_the_sphere():
    lat = np.linspace(90.0, -90.0, 181)  # 1°, poles included
    w = cell_area_weights(lat)
    assert w.dims == (LAT,) and w.sizes[LAT] == 181
    assert float(w.mean()) == pytest.approx(1.0, rel=1e-14)
    # the weights are the row areas over the mean row area: sum(sin diffs) = 2 over the sphere
    rows = np.diff(np.sin(np.deg2rad(np.clip(np.r_[90.0, lat[:-1] - 0.5, -90.0], -90, 90))))
    np.testing.assert_allclose(w.values, np.abs(rows) / (2 / 181), rtol=1e-12)
    # the pole rows are caps of half a spacing: 1 - sin(89.5°)
    assert float(w[0]) == pytest.approx((1 - math.sin(math.radians(89.5))) * 181 / 2, rel=1e-12)
    # a constant integrates to itself: the weighted mean of 1 over the sphere is 1
    const = xr.ones_like(w) * xr.DataArray(np.ones(360), dims=(LON,))
    assert float(xr_bias(const, 0 * const, weights=w)) == pytest.approx(1.0, rel=1e-14)
    # the same ratio as the exact cell areas of the grid object
    grid = grid_domain(
        xr.DataArray(
            np.zeros((181, 360)), dims=(LAT, LON), coords={LAT: lat, LON: np.arange(360.0)}
        )
    )
    row_area = grid.mass.numpy().reshape(181, 360).sum(1)
    np.testing.assert_allclose(w.values, row_area / row_area.mean(), rtol=1e-12)
    assert grid.total_area == pytest.approx(4 * np.pi, rel=1e-12)


@pytest.mark.parametrize("lat", [[50.0, 51.0, 52.0], [52.0, 51.0, 50.0]])
def test_regional_weights_use_half_spacing_edges_not_the_poles(lat):
    w = cell_area_weights(xr.DataArray(lat, dims=(LAT,), coords={LAT: lat}))
    s = [math.sin(math.radians(x)) for x in (49.5, 50.5, 51.5, 52.5)]
    by_lat = {50.0: s[1] - s[0], 51.0: s[2] - s[1], 52.0: s[3] - s[2]}
    expected = np.array([by_lat[x] for x in lat])
    np.testing.assert_allclose(w.values, expected / expected.mean(), rtol=1e-13)
    np.testing.assert_array_equal(w[LAT].values, lat)
    # explicit bounds give the same
    edges = np.array(lat) - 0.5 * np.sign(lat[1] - lat[0])
    edges = np.r_[edges, lat[-1] + 0.5 * np.sign(lat[1] - lat[0])]
    np.testing.assert_allclose(cell_area_weights(lat, edges).values, w.values, rtol=1e-13)


def test_weights_errors():
    with pytest.raises(ValueError, match=r"lat_bounds_deg must have shape \(4,\)"):
        cell_area_weights([50.0, 51.0, 52.0], [49.5, 52.5])
    with pytest.raises(ValueError, match="lat_deg must lie in"):
        cell_area_weights([80.0, 95.0])
    with pytest.raises(ValueError, match="monotonic"):
        cell_area_weights([10.0, 30.0, 20.0])


# ---------------------------------------------------------------------------- RMSE vs torch


def test_rmse_equals_torch_weighted_rmse_on_real_uk_field(data):
    truth = open_era5(require(data / "era5" / "era5-2mt-2019-03-uk.nc"), "t2m")["t2m"]
    truth = truth.isel(time=slice(0, 5)).load()
    rng = np.random.default_rng(0)
    pred = truth + rng.normal(0.0, 1.5, truth.shape).astype(np.float32)
    where = xr.DataArray(rng.random(truth.shape) < 0.3, dims=truth.dims, coords=truth.coords)
    weights = cell_area_weights(truth[LAT])
    mass = grid_domain(truth).mass  # exact cell areas (N,)
    pred_s, _ = to_signal(pred)
    truth_s, _ = to_signal(truth)
    where_s, _ = to_signal(where, dtype=torch.float64)
    where_s = where_s.bool()

    pooled = xr_rmse(pred, truth, weights=weights, where=where, dims=("time", LAT, LON))
    assert pooled.dims == ()
    expected = weighted_rmse(pred_s, truth_s, mass, where_s).item()
    assert float(pooled) == pytest.approx(expected, rel=1e-12)

    per_time = xr_rmse(pred, truth, weights=weights, where=where)
    assert per_time.dims == ("time",)
    np.testing.assert_array_equal(per_time["time"].values, truth["time"].values)
    for t in range(truth.sizes["time"]):
        exp_t = weighted_rmse(pred_s[t : t + 1], truth_s[t : t + 1], mass, where_s[t : t + 1])
        assert float(per_time[t]) == pytest.approx(exp_t.item(), rel=1e-12)


def test_bias_and_rmse_closed_forms():
    rng = np.random.default_rng(1)
    truth = _field(rng)
    w = cell_area_weights(truth[LAT])
    assert np.allclose(xr_bias(truth + 2.5, truth, weights=w), 2.5, rtol=1e-14)
    assert np.allclose(xr_rmse(truth - 3.0, truth, weights=w), 3.0, rtol=1e-14)
    # mean before the root: errors 1 on one row and 0 elsewhere give sqrt(w_row / sum w)
    err = xr.zeros_like(truth)
    err[:, 4, :] = 1.0
    expected = math.sqrt(float(w[4] / w.sum()))
    np.testing.assert_allclose(xr_rmse(err, 0 * truth, weights=w).values, expected, rtol=1e-13)


def test_where_ignores_nan_outside_and_empty_slice_is_nan():
    rng = np.random.default_rng(2)
    truth = _field(rng)
    pred = truth + 1.0
    where = truth > 0
    where[0] = False  # nothing selected at time 0
    truth_nan = truth.where(where)  # NaN everywhere outside the selection
    w = cell_area_weights(truth[LAT])
    rmse = xr_rmse(pred, truth_nan, weights=w, where=where)
    assert np.isnan(rmse[0]) and np.allclose(rmse[1:], 1.0, rtol=1e-14)
    assert float(xr_rmse(pred, truth_nan, weights=w, where=where, dims=None)) == pytest.approx(1.0)
    # a NaN inside the selection is not skipped silently
    assert np.isnan(xr_bias(pred, truth_nan, weights=w)[1])


# ---------------------------------------------------------------------------- CRPS


def test_crps_of_one_member_is_mae_and_matches_torch():
    rng = np.random.default_rng(3)
    truth = _field(rng)
    w = cell_area_weights(truth[LAT])
    one = _field(rng).expand_dims(sample=1)
    crps1 = xr_crps(one, truth, weights=w)
    mae = xr_bias(abs(one.isel(sample=0) - truth), 0 * truth, weights=w)
    np.testing.assert_allclose(crps1.values, mae.values, rtol=1e-13)

    ens = xr.concat([_field(rng) for _ in range(5)], dim="member")
    got = xr_crps(ens, truth, weights=w, dims=("time", LAT, LON), sample_dim="member")
    x = torch.from_numpy(ens.values.reshape(5, 4, -1, 1))
    y = torch.from_numpy(truth.values.reshape(4, -1, 1))
    weight = torch.from_numpy(np.repeat(w.values, truth.sizes[LON]))
    assert float(got) == pytest.approx(crps_ensemble(x, y, weight).item(), rel=1e-12)


def test_fair_crps_of_gaussian_ensemble_matches_closed_form():
    """E[fair CRPS] of N(0, s^2) members at y is s[z(2Phi(z)-1) + 2phi(z) - 1/sqrt(pi)], z=y/s."""
    rng = np.random.default_rng(4)
    s, members = 1.3, 4
    truth = 2.0 * _field(rng, shape=(100, 30, 40))
    samples = xr.DataArray(
        s * rng.standard_normal((members, *truth.shape)),
        dims=("sample", *truth.dims),
        coords=truth.coords,
    )
    w = cell_area_weights(truth[LAT])
    z = truth / s
    exact = s * (
        z * (2 * ndtr(z) - 1)
        + 2 * np.exp(-0.5 * z**2) / math.sqrt(2 * np.pi)
        - 1 / math.sqrt(math.pi)
    )
    all_dims = ("time", LAT, LON)
    got = float(xr_crps(samples, truth, weights=w, dims=all_dims))
    expected = float(xr_bias(exact, 0 * exact, weights=w, dims=all_dims))
    # Monte Carlo error of the weighted mean of independent per-cell scores
    per_cell = xr_crps(samples, truth, weights=w, dims=()) - exact
    wf = (w * xr.ones_like(truth)).values.ravel()
    se = math.sqrt(np.sum(wf**2 * per_cell.values.ravel() ** 2)) / wf.sum()
    assert abs(got - expected) < 4 * se
    assert se < 0.01 * expected  # the test has power


def test_coverage_of_exact_gaussian_quantiles_and_spread_skill():
    rng = np.random.default_rng(5)
    truth = _field(rng, shape=(20, 30, 40))
    w = cell_area_weights(truth[LAT])
    q = 1.6448536269514722  # N(0,1) 95 % quantile
    cov = xr_coverage(-q + 0 * truth, q + 0 * truth, truth, weights=w, dims=None)
    n_eff = float((w * xr.ones_like(truth)).sum() ** 2 / ((w * xr.ones_like(truth)) ** 2).sum())
    assert float(cov) == pytest.approx(0.9, abs=4 * math.sqrt(0.09 / n_eff))
    per_time = xr_coverage(-q + 0 * truth, q + 0 * truth, truth, weights=w)
    assert per_time.dims == ("time",) and ((per_time >= 0) & (per_time <= 1)).all()
    assert float(xr_coverage(truth, truth, truth, weights=w, dims=None)) == 1.0

    ens = xr.DataArray(
        rng.standard_normal((21, *truth.shape)), dims=("sample", *truth.dims), coords=truth.coords
    )
    ratio = xr_spread_skill(ens, truth, weights=w, dims=None)
    assert float(ratio) == pytest.approx(1.0, abs=0.03)
    assert float(xr_spread_skill(0.5 * ens, truth, weights=w, dims=None)) < 0.6
    with pytest.raises(ValueError, match="at least 2 samples"):
        xr_spread_skill(ens.isel(sample=[0]), truth, weights=w)


# ---------------------------------------------------------------------------- dask, errors


def test_dask_inputs_stay_lazy_and_agree():
    rng = np.random.default_rng(6)
    truth = _field(rng, shape=(6, 30, 40))
    ens = xr.concat([truth + _field(rng, shape=(6, 30, 40)) for _ in range(3)], dim="sample")
    where = truth > -0.5
    w = cell_area_weights(truth[LAT])
    lazy = {"chunks": {"time": 2}}
    t_d, e_d, wh_d = truth.chunk(**lazy), ens.chunk(**lazy), where.chunk(**lazy)
    assert isinstance(wh_d.data, dsa.Array)
    with dask.config.set(scheduler=_no_compute):
        results = {
            "rmse": xr_rmse(e_d.isel(sample=0), t_d, weights=w, where=wh_d),
            "bias": xr_bias(e_d.isel(sample=0), t_d, weights=w, where=wh_d),
            "crps": xr_crps(e_d, t_d, weights=w, where=wh_d),
            "ssr": xr_spread_skill(e_d, t_d, weights=w, where=wh_d),
            "cov": xr_coverage(e_d.min("sample"), e_d.max("sample"), t_d, weights=w, where=wh_d),
        }
    eager = {
        "rmse": xr_rmse(ens.isel(sample=0), truth, weights=w, where=where),
        "bias": xr_bias(ens.isel(sample=0), truth, weights=w, where=where),
        "crps": xr_crps(ens, truth, weights=w, where=where),
        "ssr": xr_spread_skill(ens, truth, weights=w, where=where),
        "cov": xr_coverage(ens.min("sample"), ens.max("sample"), truth, weights=w, where=where),
    }
    for key, res in results.items():
        assert isinstance(res.data, dsa.Array), key
        assert res.dims == ("time",), key
        np.testing.assert_allclose(res.compute().values, eager[key].values, rtol=1e-12)


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(7)
    truth = _field(rng)
    w = cell_area_weights(truth[LAT])
    with pytest.raises(ValueError, match=r"dims \['lat'\] are not dimensions"):
        xr_rmse(truth, truth, weights=w, dims=("lat", LON))
    with pytest.raises(ValueError, match="'levle'"):
        xr_crps(truth.expand_dims(sample=2), truth, weights=w, dims=("levle",))
    with pytest.raises(ValueError, match="sample_dim 'member'"):
        xr_crps(truth.expand_dims(sample=2), truth, weights=w, sample_dim="member")
    with pytest.raises(ValueError, match="where must be boolean"):
        xr_rmse(truth, truth, weights=w, where=truth)
    with pytest.raises(ValueError, match="weights has dims"):
        xr_rmse(truth, truth, weights=w.rename({LAT: "lat"}))
    with pytest.raises(ValueError, match="share coordinates exactly"):
        xr_rmse(truth, truth, weights=w.assign_coords({LAT: w[LAT] + 0.1}))
