"""The GMRF gaussian engine on climate grids.

Beyond the dense limit, and fitted to gappy fields alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import REPO, require, run_cli

import climate
from climate.demo import default_sample_path
from climate.model import GaussianImputer
from manifold_aps.priors.gaussian import DENSE_MAX_NODES


def test_global_grid_beyond_the_dense_limit(data):
    """ERA5 t2m at 2 deg (91 x 180 = 16,380 cells, over the old 6000-node limit), 70 % hidden."""
    path = require(data / "era5" / "era5_global_1deg_2026-03-25_to_31_24steps.nc")
    field = climate.open_era5(path, "t2m")["t2m"].isel(
        latitude=slice(None, None, 2), longitude=slice(None, None, 2)
    )
    field = field.load()
    assert field.sizes["latitude"] * field.sizes["longitude"] > DENSE_MAX_NODES
    model = GaussianImputer.fit(field.isel(time=slice(0, 20)), by_hour=False, alpha=2)
    test = field.isel(time=slice(22, 24))
    observed = climate.random_mask(test, 0.7, seed=0, per_time=True)
    out = climate.impute(test, observed, model, n_samples=4, seed=0, progress=False)
    obs = observed.values
    assert np.array_equal(out.t2m_mean.values[obs], test.values[obs])  # observed cells bit for bit
    scores = climate.imputation_scores(out, test, "t2m")
    print(scores)
    assert scores["rmse_mean"] < 3.0  # K; nearest-neighbour filling is about 4 K on this grid
    # 20 consecutive hours standardised without a diurnal climatology: the intervals are narrow
    # (the dense engine covered 59 % on the coarser 45 x 90 grid, README); the number is in the note
    assert 0.4 < scores["coverage_90"] <= 1.0


def test_cli_fits_to_the_observed_values_when_no_complete_field_exists(tmp_path):
    """Only gappy fields: the gaussian engine fits to their observed values, and says so."""
    sample = default_sample_path()
    field = climate.open_era5(sample, "t2m")["t2m"].isel(time=slice(600, 603)).load()
    rng = np.random.default_rng(0)
    gappy = field.where(rng.random(field.shape) > 0.4)  # 40 % NaN in every field
    src = tmp_path / "gappy.nc"
    gappy.to_dataset(name="t2m").to_netcdf(src, engine="h5netcdf")
    out = tmp_path / "out.nc"
    res = run_cli(
        "impute",
        "--input",
        src,
        "--var",
        "t2m",
        "--samples",
        "4",
        "--output",
        out,
        "--quiet",
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fitting the gaussian engine to the observed values" in res.stdout
    assert "GMRF prior fitted to the" in res.stdout
    ds = xr.open_dataset(out, engine="h5netcdf")
    obs = ~np.isnan(gappy.values)
    assert np.array_equal(ds.t2m_mean.values[obs], gappy.values[obs])
    hidden_err = np.abs(ds.t2m_mean.values[~obs] - field.values[~obs])
    assert np.sqrt(np.mean(hidden_err**2)) < 1.0  # K: the gaps of a smooth field are filled well
    ds.close()


@pytest.mark.parametrize("alpha", [2])
def test_fit_to_observations_matches_training_fit_roughly(alpha):
    """Fitted from one gappy field or from complete ones, the range agrees within a factor of 2."""
    field = climate.open_era5(default_sample_path(), "t2m")["t2m"].isel(time=slice(0, 48)).load()
    full = GaussianImputer.fit(field, by_hour=False, alpha=alpha)
    observed = climate.random_mask(field.isel(time=slice(0, 4)), 0.5, seed=1, per_time=True)
    gappy = GaussianImputer.fit_to_observations(field.isel(time=slice(0, 4)), observed, alpha=alpha)
    assert "observed values" in gappy.fitted_to
    ratio = gappy.prior.range / full.prior.range
    assert 0.5 < ratio < 2.0, ratio


def _grid_field(values: np.ndarray, lat: np.ndarray, lon: np.ndarray, times) -> xr.DataArray:
    return xr.DataArray(
        values.reshape(len(times), lat.size, lon.size),
        dims=("time", "latitude", "longitude"),
        coords={"time": times, "latitude": lat, "longitude": lon},
        name="t2m",
        attrs={"units": "K"},
    )


def test_standardizer_fits_the_diurnal_harmonic_from_6_hourly_steps():
    """6-hourly training steps (4 distinct hours): the diurnal cycle is fitted.

    It is not averaged away.
    """
    from climate.model import FieldStandardizer

    rng = np.random.default_rng(0)
    n, steps = 30, 40
    a, b, phase = rng.normal(280, 5, n), rng.uniform(1, 6, n), rng.uniform(0, 24, n)
    times = np.datetime64("2020-01-01T00") + np.arange(steps) * np.timedelta64(6, "h")
    hours = np.arange(steps) * 6 % 24
    cycle = lambda h: a + b * np.cos(2 * np.pi * (np.asarray(h)[:, None] - phase) / 24)  # noqa: E731
    x = cycle(hours) + 0.01 * rng.standard_normal((steps, n))
    import torch

    st = FieldStandardizer.fit_signal(torch.from_numpy(x)[:, :, None], times)
    assert st.mean.shape == (24, n)
    np.testing.assert_allclose(
        st.mean, cycle(np.arange(24)), atol=0.02
    )  # every hour, also unseen ones
    np.testing.assert_allclose(st.scale, 0.01, rtol=0.3)
    # daily steps (one hour of day): one overall mean, as before
    daily = FieldStandardizer.fit_signal(torch.from_numpy(x[::4])[:, :, None], times[::4])
    assert daily.mean.shape == (1, n)


def test_variance_scale_is_the_closed_form_ml_scale_of_the_observed_values():
    """`variance_scale="observed"`: c = y^T C^-1 y / n (dense).

    The std is the rescaled prior's.
    """
    from climate.model import FieldStandardizer
    from manifold_aps import MaternGMRF
    from manifold_aps.geometry import SphereGrid

    lat, lon = np.linspace(80, -80, 9), np.arange(0, 360, 20.0)
    domain = SphereGrid(lat, lon)
    n = domain.num_nodes
    prior = MaternGMRF.from_range(domain, range_=0.6, std=1.0, alpha=2)
    nugget, noise_std = 0.01, 0.1
    rng = np.random.default_rng(1)
    truth = 2.0 * (
        prior.sample(1, rng=rng)[0] + rng.standard_normal(n) * nugget**0.5
    )  # 4x the variance
    times = np.array(["2020-01-01T00"], dtype="datetime64[ns]")
    field = _grid_field(truth, lat, lon, times)
    observed = climate.random_mask(field, 0.4, seed=0, per_time=True)
    standardizer = FieldStandardizer(np.zeros((1, n)), np.ones(n))
    idx = np.flatnonzero(observed.values.ravel())
    hid = np.flatnonzero(~observed.values.ravel())
    cov = np.linalg.inv(prior.precision().toarray()) + nugget * np.eye(n)
    c_yy = cov[np.ix_(idx, idx)] + noise_std**2 * np.eye(idx.size)
    y = truth[idx]
    c = float(y @ np.linalg.solve(c_yy, y)) / idx.size
    assert 2.0 < c < 8.0  # the field is 4x as variable as the prior says
    for mode, scale in (("observed", c), ("fitted", 1.0)):
        model = GaussianImputer(
            "t2m", "K", domain, noise_std, standardizer, prior, nugget, variance_scale=mode
        )
        out = climate.impute(field, observed, model, n_samples=2, seed=0, progress=False)
        if mode == "observed":
            assert model.last_scales[0] == pytest.approx(c, rel=1e-8)
        sc = scale * cov
        k = sc[np.ix_(hid, idx)] @ np.linalg.inv(
            sc[np.ix_(idx, idx)] + noise_std**2 * np.eye(idx.size)
        )
        post_var = np.diag(sc[np.ix_(hid, hid)] - k @ sc[np.ix_(idx, hid)])
        std = out.t2m_std.values.ravel()[hid]
        np.testing.assert_allclose(std, np.sqrt(post_var), rtol=1e-8)
        np.testing.assert_allclose(out.t2m_mean.values.ravel()[hid], k @ y, rtol=1e-7, atol=1e-9)


def test_refit_fits_each_field_and_its_posterior_is_that_of_the_refit_prior():
    """`variance_scale="refit"`: range, std and nugget of each field by ML on its observed values.

    The field is drawn with twice the range and twice the std of the model's prior: the refit moves
    towards them, its likelihood beats the training fit's, and the imputation equals the dense
    posterior of the refit prior (with the known noise added to what the nugget leaves).
    """
    from climate.model import FieldStandardizer
    from manifold_aps import MaternGMRF
    from manifold_aps.geometry import SphereGrid

    lat, lon = np.linspace(87, -87, 30), np.arange(0, 360, 6.0)
    domain = SphereGrid(lat, lon)
    n = domain.num_nodes
    prior = MaternGMRF.from_range(domain, range_=0.3, std=1.0, alpha=2)
    truth_prior = MaternGMRF.from_range(domain, range_=0.6, std=2.0, alpha=2)
    rng = np.random.default_rng(3)
    truth = truth_prior.sample(1, rng=rng)[0]
    times = np.array(["2020-01-01T00"], dtype="datetime64[ns]")
    field = _grid_field(truth, lat, lon, times)
    observed = climate.random_mask(field, 0.5, seed=0, per_time=True)
    standardizer = FieldStandardizer(np.zeros((1, n)), np.ones(n))
    noise_std = 0.05
    model = GaussianImputer(
        "t2m", "K", domain, noise_std, standardizer, prior, 0.01, variance_scale="refit"
    )
    out = climate.impute(field, observed, model, n_samples=2, seed=0, progress=False)
    fit = model.last_fits[0]
    assert fit is not None and fit.prior.alpha == 2
    assert 0.4 < fit.prior.range < 0.9 and 1.4 < fit.prior.std < 2.8
    obs = observed.values.ravel()
    idx, hid = np.flatnonzero(obs), np.flatnonzero(~obs)
    y = truth[idx]

    def dense_log_likelihood(cov_yy):
        sign, logdet = np.linalg.slogdet(cov_yy)
        return -0.5 * (y @ np.linalg.solve(cov_yy, y) + logdet + idx.size * np.log(2 * np.pi))

    def covariance(p, nugget):
        return np.linalg.inv(p.precision().toarray()) + nugget * np.eye(n)

    train_cov = covariance(prior, 0.01)[np.ix_(idx, idx)] + noise_std**2 * np.eye(idx.size)
    refit_cov = covariance(fit.prior, fit.nugget)[
        np.ix_(idx, idx)
    ]  # the refit nugget holds the noise
    assert dense_log_likelihood(refit_cov) > dense_log_likelihood(train_cov) + 10
    assert fit.log_likelihood == pytest.approx(dense_log_likelihood(refit_cov), rel=1e-8)
    cov = covariance(fit.prior, max(fit.nugget - noise_std**2, 0.0))
    k = cov[np.ix_(hid, idx)] @ np.linalg.inv(
        cov[np.ix_(idx, idx)] + noise_std**2 * np.eye(idx.size)
    )
    np.testing.assert_allclose(out.t2m_mean.values.ravel()[hid], k @ y, rtol=1e-7, atol=1e-9)
    post_var = np.diag(cov[np.ix_(hid, hid)] - k @ cov[np.ix_(idx, hid)])
    np.testing.assert_allclose(out.t2m_std.values.ravel()[hid], np.sqrt(post_var), rtol=1e-8)


def test_ensemble_coverage_is_unbiased_for_a_calibrated_gaussian_ensemble():
    """16 exact draws: the prediction-interval coverage is 90 %, the sample-quantile one ~79 %."""
    rng = np.random.default_rng(0)
    t, nlat, nlon, s = 50, 20, 40, 16
    lat, lon = np.linspace(60, -60, nlat), np.arange(0, 360, 9.0)
    mean = rng.normal(280, 3, (t, nlat, nlon))
    std = rng.uniform(0.5, 2, (t, nlat, nlon))
    truth = mean + std * rng.standard_normal(mean.shape)
    samples = mean + std * rng.standard_normal((s, *mean.shape))
    dims = ("time", "latitude", "longitude")
    coords = {"time": np.arange(t), "latitude": lat, "longitude": lon}
    result = xr.Dataset(
        {
            "t2m_mean": (dims, samples.mean(0)),
            "t2m_samples": (("sample", *dims), samples),
            "observed": (dims, np.zeros(mean.shape, dtype=np.int8)),
        },
        coords=coords,
    )
    scores = climate.imputation_scores(result, xr.DataArray(truth, dims=dims, coords=coords), "t2m")
    assert scores["coverage_90"] == pytest.approx(0.90, abs=0.01)
    assert scores["coverage_90_quantiles"] == pytest.approx(0.9 * (s - 1) / (s + 1), abs=0.015)


def test_the_diurnal_harmonic_needs_hours_around_the_clock():
    from climate.model import _covers_the_day

    assert _covers_the_day({0, 6, 12, 18}) and _covers_the_day({0, 7, 14, 21, 4, 11, 18})
    assert not _covers_the_day(set(range(8)))  # 8 consecutive hours: 16 h unseen
    assert not _covers_the_day({0, 12})
