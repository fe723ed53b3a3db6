"""Climate input validation (issue 14): clear errors, never silently.

Non-finite observations, unit mix-ups, corrupted GRIB files, either latitude order and unit
aliases are handled with clear errors, never silently.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import REPO, require, run_cli

from climate import open_era5
from climate.demo import default_sample_path
from climate.impute import OBSERVED, impute
from climate.masks import missing_mask
from climate.model import GaussianImputer, ScoreImputer
from climate.schema import LATITUDE
from manifold_aps.geometry import HealpixSphere
from manifold_aps.operators import GaussianNoise, Mask
from manifold_aps.posterior import ExactGaussianPosterior
from manifold_aps.priors import GaussianPrior

GRIB = "era5-2mt-2019-03-uk.grib"
REVERSE = {LATITUDE: slice(None, None, -1)}


@pytest.fixture(scope="module")
def field():
    """UK t2m, March 2019, latitudes descending as ERA5 stores them."""
    return open_era5(default_sample_path(), "t2m")["t2m"].load()


@pytest.fixture(scope="module")
def model(field):
    return GaussianImputer.fit(field.sel(time=slice("2019-03-01", "2019-03-05")))


@pytest.fixture(scope="module")
def hours(field):
    return field.sel(time=slice("2019-03-26T00", "2019-03-26T01"))


def _random_mask(like, seed=0):
    rng = np.random.default_rng(seed)
    return xr.DataArray(rng.random(like.shape) >= 0.7, dims=like.dims, coords=like.coords)


# -- 2: +inf / -inf in observed cells ------------------------------------------------------------


def test_infinite_observed_cells_are_refused_unless_hidden(model, hours):
    bad = hours.copy()
    bad[1, 5, 7] = np.inf
    bad[1, 6, 7] = -np.inf
    mask = xr.ones_like(hours, dtype=bool)
    with pytest.raises(
        ValueError, match=r"2 observed cells of 't2m' are infinite.*first at 2019-03-26T01:00"
    ):
        impute(bad, mask, model, n_samples=2, progress=False)
    # the NaN mask leaves inf "observed" (it is a value, not a gap), so it is refused too
    assert bool(missing_mask(bad)[1, 5, 7]) and not bool(missing_mask(bad.where(bad < 0))[0, 0, 0])
    with pytest.raises(ValueError, match="are infinite"):
        impute(bad, None, model, n_samples=2, progress=False)
    # hidden by the mask: imputed like any hidden cell, nothing else is touched
    mask[1, 5, 7] = mask[1, 6, 7] = False
    out = impute(bad, mask, model, n_samples=2, progress=False)
    assert np.isfinite(out.t2m_samples.values).all() and out[OBSERVED].values[1, 5, 7] == 0
    obs = mask.values
    assert np.array_equal(out.t2m_mean.values[obs], bad.values[obs])


def test_engines_refuse_non_finite_observations():
    domain = HealpixSphere(2)
    post = ExactGaussianPosterior(GaussianPrior(domain), GaussianNoise(0.1))
    keep = torch.arange(48) % 2 == 0
    op = Mask(domain, keep)
    y = op(torch.ones(1, 48, 1, dtype=torch.float64))
    y[0, 4, 0] = float("inf")
    with pytest.raises(ValueError, match=r"y holds 1 non-finite value.*1 at observed entries"):
        post.sample(y, op, 2)
    y[0, 4, 0] = 1.0
    y[0, 5, 0] = float("nan")  # not observed, but an operator output must be 0 there
    with pytest.raises(ValueError, match="1 at entries the operator does not observe"):
        post.condition(y, op)
    y[0, 5, 0] = 0.0
    assert torch.isfinite(post.sample(y, op, 2)).all()


# -- 3: values in other units than the model's ------------------------------------------------


def test_celsius_without_units_attribute_is_refused(model, hours):
    celsius = (
        (hours - 273.15).drop_attrs().assign_attrs(long_name="2 metre temperature")
    )  # no units
    mask = _random_mask(hours)
    with (
        pytest.warns(UserWarning, match="no units attribute"),
        pytest.raises(
            ValueError,
            match=r"observed t2m values are 27\d\.\d K below the model's climatology.*degC",
        ),
    ):
        impute(celsius, mask, model, n_samples=2, progress=False)
    # a units attribute that lies is caught the same way
    with pytest.raises(ValueError, match="below the model's climatology"):
        impute(celsius.assign_attrs(units="K"), mask, model, n_samples=2, progress=False)
    # a warm spell far from climatology but in the right units is imputed
    warm = (hours + 6.0).assign_attrs(hours.attrs)
    out = impute(warm, mask, model, n_samples=2, progress=False)
    assert np.isfinite(out.t2m_mean.values).all()


def test_score_models_check_units_against_their_channel_statistics(hours, model):
    """ScoreImputer: the prior's per-channel mean/std play the climatology's part."""
    sampler = SimpleNamespace(
        norm_mean=torch.tensor([280.0], dtype=torch.float64),
        norm_std=torch.tensor([4.0], dtype=torch.float64),
        sample=lambda y, op, n, rng=None: y.expand(n, *y.shape).clone(),
    )
    fake = ScoreImputer("t2m", "K", model.domain, 0.1, sampler, "aps", "fake flow")
    mask = _random_mask(hours)
    with pytest.raises(ValueError, match="below the model's climatology.*degC"):
        impute((hours - 273.15).assign_attrs(units="K"), mask, fake, n_samples=2, progress=False)
    impute(hours, mask, fake, n_samples=2, progress=False)


# -- 4: truncated or corrupted GRIB files --------------------------------------------------------


@pytest.fixture
def truncated(data, tmp_path):
    """The UK GRIB cut at about half its bytes (inside a message)."""
    src = require(data / "era5" / GRIB).read_bytes()
    path = tmp_path / "truncated.grib"
    path.write_bytes(src[: len(src) // 2 + 1000])
    return path


def test_truncated_grib_is_refused_unless_asked_to_skip(truncated, data):
    with pytest.raises(
        ValueError, match=r"truncated\.grib: corrupted GRIB file: message 373 .*allow_corrupt=True"
    ):
        open_era5(truncated, "t2m")
    with pytest.warns(RuntimeWarning, match=r"skipped corrupted GRIB data in .*truncated\.grib"):
        ds = open_era5(truncated, "t2m", allow_corrupt=True)
    assert ds.sizes["time"] == 372
    assert (
        open_era5(data / "era5" / GRIB, "t2m").sizes["time"] == 744
    )  # intact files are unaffected


def test_grib_with_an_unreadable_message_inside_is_refused(data, tmp_path):
    """A destroyed message header: eccodes and cfgrib skip that message without a word."""
    src = bytearray(require(data / "era5" / GRIB).read_bytes())
    src[100 * 3360 : 100 * 3360 + 4] = b"XXXX"  # message 101 loses its "GRIB" start
    path = tmp_path / "holed.grib"
    path.write_bytes(bytes(src))
    with pytest.raises(ValueError, match="holed.grib: corrupted GRIB file: .* before message 101"):
        open_era5(path)


def _impute_cli(grib, out, *extra):
    args = [
        "impute",
        "--input",
        str(grib),
        "--var",
        "t2m",
        "--fit-period",
        "2019-03-01:2019-03-05",
        "--period",
        "2019-03-10T00:2019-03-10T01",
        "--samples",
        "2",
        "--output",
        str(out),
        "--quiet",
        *extra,
    ]
    return run_cli(*args, cwd=REPO)


def test_cli_refuses_a_truncated_grib(truncated, tmp_path):
    out = tmp_path / "out.nc"
    res = _impute_cli(truncated, out)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert (
        str(truncated) in lines[0]
        and "corrupted GRIB" in lines[0]
        and "--skip-corrupt-grib" in lines[0]
    )
    assert not out.exists()


@pytest.mark.slow
def test_cli_skips_corrupted_grib_messages_when_asked(truncated, tmp_path):
    out = tmp_path / "out.nc"
    res = _impute_cli(truncated, out, "--skip-corrupt-grib")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipped corrupted GRIB data" in res.stderr and out.is_file()


# -- 12: either latitude order, unit aliases -----------------------------------------------------


def test_model_fitted_on_one_latitude_order_imputes_the_other(model, hours, field):
    assert field[LATITUDE].values[0] > field[LATITUDE].values[-1]  # fitted on descending
    mask = _random_mask(hours)
    ref = impute(hours, mask, model, n_samples=3, seed=4, progress=False)
    up, up_mask = hours.isel(REVERSE), mask.isel(REVERSE)
    out = impute(up, up_mask, model, n_samples=3, seed=4, progress=False)
    assert np.array_equal(out[LATITUDE].values, up[LATITUDE].values)  # the input's order is kept
    np.testing.assert_array_equal(out.t2m_samples.values, ref.t2m_samples.isel(REVERSE).values)
    obs = up_mask.values
    assert np.array_equal(out.t2m_mean.values[obs], up.values[obs])
    # and a model fitted on ascending latitudes imputes descending ones (a small grid: fast
    # eigenbasis)
    small = field.isel(latitude=slice(0, 10), longitude=slice(0, 12))
    train, test, test_mask = (
        small.sel(time=slice("2019-03-01", "2019-03-05")),
        small.sel(time=hours.time),
        mask[:, :10, :12],
    )
    descending = impute(test, test_mask, GaussianImputer.fit(train), n_samples=2, progress=False)
    back = impute(
        test, test_mask, GaussianImputer.fit(train.isel(REVERSE)), n_samples=2, progress=False
    )
    assert np.array_equal(back[LATITUDE].values, test[LATITUDE].values)
    np.testing.assert_allclose(back.t2m_mean.values, descending.t2m_mean.values, rtol=0, atol=1e-3)


def test_unit_aliases_are_accepted_and_convertible_units_explained(model, hours):
    mask = _random_mask(hours)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no units" warning either
        for alias in ("kelvin", "degK", "Kelvin"):
            one = hours.isel(time=[0]).assign_attrs(units=alias)
            out = impute(one, mask.isel(time=[0]), model, n_samples=2, progress=False)
            assert out.t2m_mean.attrs["units"] == alias  # the output stays in the input's units
    celsius = (hours - 273.15).assign_attrs(units="Celsius")
    with pytest.raises(
        ValueError, match=r"'t2m' is in 'Celsius' but the model expects 'K'.*K = Celsius \+ 273\.15"
    ):
        impute(celsius, mask, model, n_samples=2, progress=False)
    with pytest.raises(
        ValueError, match=r"'t2m' is in 'm' but the model expects 'K'; .*not convertible"
    ):
        impute(hours.assign_attrs(units="m"), mask, model, n_samples=2, progress=False)
