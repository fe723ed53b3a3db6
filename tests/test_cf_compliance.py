"""Every `write_imputation` output passes the IOOS compliance checker's CF-1.8 test without errors.

The checker grades each check HIGH, MEDIUM or LOW; its text report lists failed HIGH checks as
"Errors" and MEDIUM ones as "Warnings", and with its default criteria ("normal") a file fails on
either. Both must be 0 here; LOW ones ("Info", suggestions) are allowed and shown with `-s`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from conftest import require

from climate import open_era5
from climate.demo import default_sample_path
from climate.impute import impute, write_imputation
from climate.model import GaussianImputer

runner = pytest.importorskip(
    "compliance_checker.runner",
    reason="compliance-checker is not installed (pip install compliance-checker)",
)
CF = "cf:1.8"
pytestmark = pytest.mark.filterwarnings(
    "ignore:The ioos_sos checker is deprecated:DeprecationWarning"
)


@pytest.fixture(scope="module")
def model():
    """Gaussian model of UK t2m fitted on the first week of March 2019 (the shipped sample)."""
    field = open_era5(default_sample_path(), "t2m")["t2m"]
    return GaussianImputer.fit(field.sel(time=slice("2019-03-01", "2019-03-07")).load())


def _cf_failures(path) -> dict[str, list[str]]:
    """The failed checks of the `cf:1.8` test by priority.

    Returns:
        `{"high": [...], "medium": [...], "low": [...]}`.
    """
    runner.CheckSuite.load_all_available_checkers()
    report = path.with_suffix(".json")
    runner.ComplianceChecker.run_checker(
        str(path), [CF], 0, "strict", output_filename=str(report), output_format="json"
    )  # "strict": every priority is graded and reported, LOW included
    result = json.loads(report.read_text())[CF]
    failures = {}
    for level in ("high", "medium", "low"):
        failed = [c for c in result[f"{level}_priorities"] if c["value"][0] < c["value"][1]]
        assert len(failed) == result[f"{level}_count"]
        failures[level] = [f"{c['name']}: {msg}" for c in failed for msg in c["msgs"]] or [
            c["name"] for c in failed
        ]
    return failures


def _random_mask(like, seed=0):
    rng = np.random.default_rng(seed)
    return xr.DataArray(rng.random(like.shape) >= 0.7, dims=like.dims, coords=like.coords)


def _assert_cf_compliant(out, path):
    write_imputation(out, path)
    failures = _cf_failures(path)
    if failures["low"]:
        print(
            f"{path.name}: LOW-priority suggestions of the checker:", *failures["low"], sep="\n  "
        )
    assert failures["high"] == [] and failures["medium"] == [], failures


@pytest.mark.parametrize("source", ["era5-2mt-2019-03-uk.nc", "era5-2mt-2019-03-uk.grib"])
def test_imputation_of_netcdf_and_grib_input_is_cf_compliant(model, data, tmp_path, source):
    ds = open_era5(require(data / "era5" / source), "t2m").isel(time=slice(700, 703))
    out = impute(
        ds,
        _random_mask(ds.t2m),
        model,
        variable="t2m",
        n_samples=3,
        quantiles=(0.1, 0.9),
        progress=False,
    )
    _assert_cf_compliant(out, tmp_path / "imputed.nc")
    back = xr.open_dataset(tmp_path / "imputed.nc", engine="h5netcdf")
    try:  # still the same coordinates, and the cell methods name a coordinate of the variable
        np.testing.assert_array_equal(back.time.values, ds.time.values)
        assert back.time.attrs["standard_name"] == "time"
        assert (
            back.t2m_mean.attrs["cell_methods"] == "all_samples: mean"
            and int(back.all_samples) == 3
        )
        assert "all_samples" not in back.t2m_samples.encoding.get("coordinates", "")
    finally:
        back.close()


def test_lazy_and_single_field_imputations_are_cf_compliant(model, tmp_path):
    """As the CLI writes it (lazy DataArray, no quantiles), and a field without a time dimension."""
    field = open_era5(default_sample_path(), "t2m", chunks={})["t2m"].isel(time=slice(600, 602))
    lazy = impute(
        field, _random_mask(field), model, n_samples=2, chunk_size=1, compute=False, progress=False
    )
    _assert_cf_compliant(lazy, tmp_path / "lazy.nc")
    one = field.isel(time=0).load()
    _assert_cf_compliant(
        impute(one, _random_mask(one), model, n_samples=2, progress=False), tmp_path / "one.nc"
    )


def test_forecast_fields_keep_their_reference_time_label(model):
    """Only analyses (step 0) get `time` relabelled.

    A 6-hour forecast's axis stays the reference time.
    """
    field = open_era5(default_sample_path(), "t2m")["t2m"].isel(time=slice(600, 601)).load()
    step = xr.DataArray(np.timedelta64(6, "h"), attrs={"standard_name": "forecast_period"})
    forecast = impute(field.assign_coords(step=step), None, model, n_samples=2, progress=False)
    assert forecast.time.attrs["standard_name"] == "forecast_reference_time"
    analysis = impute(field.assign_coords(step=step * 0), None, model, n_samples=2, progress=False)
    assert analysis.time.attrs["standard_name"] == "time"
    assert (
        field.time.attrs["standard_name"] == "forecast_reference_time"
    )  # the input is left as it was
