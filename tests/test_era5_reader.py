"""`open_era5` on the real files and on the variants ERA5 comes in.

The variants: zarr, many files, CDS 2024 names, either latitude order, either longitude
convention, GRIB levels and members.
"""

from __future__ import annotations

import dask
import dask.array as dsa
import numpy as np
import pytest
import xarray as xr
from conftest import require

from climate.era5 import NETCDF_ENGINE, grid_domain, open_era5, to_signal

UK = "era5-2mt-2019-03-uk.nc"
GLOBAL = "era5_global_1deg_2026-03-25_to_31_24steps.nc"


def _no_compute(*args, **kwargs):
    raise AssertionError("a dask graph was computed where the result should stay lazy")


def _raw(path) -> xr.Dataset:
    """The file as xarray reads it, without `open_era5`'s normalisation (to build variants)."""
    return xr.open_dataset(path, engine="h5netcdf")


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part")
def test_zarr_round_trip(data, tmp_path, zarr_format):
    zarr = pytest.importorskip("zarr")
    if zarr_format == 3 and int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip(f"zarr format 3 needs zarr>=3, got {zarr.__version__}")
    src = require(data / "era5" / UK)
    store = tmp_path / "uk.zarr"
    with _raw(src) as raw:  # stored in chunks of 24 steps, as a WeatherBench2-style store
        raw.drop_encoding().chunk({"time": 24}).to_zarr(store, mode="w", zarr_format=zarr_format)
    single = open_era5(src)
    ds = open_era5(store)
    assert ds["t2m"].dims == ("time", "latitude", "longitude")
    xr.testing.assert_identical(ds["t2m"].load(), single["t2m"].load())
    lazy = open_era5(str(store) + "/", "t2m", chunks={"time": 24})  # trailing slash: still zarr
    assert isinstance(lazy["t2m"].data, dsa.Array)


def test_many_files_by_glob_are_lazy_and_equal_to_one_file(data, tmp_path):
    src = require(data / "era5" / UK)
    with _raw(src) as raw:
        for i, part in enumerate([slice(0, 250), slice(250, 500), slice(500, None)]):
            # drop the source's on-disk chunking (744 steps) which does not fit a part
            raw.isel(time=part).drop_encoding().to_netcdf(
                tmp_path / f"uk_{i}.nc", engine=NETCDF_ENGINE
            )
    with dask.config.set(scheduler=_no_compute):  # opening reads no data
        ds = open_era5(str(tmp_path / "uk_*.nc"), "t2m", chunks={"time": 24})
    t2m = ds["t2m"]
    assert isinstance(t2m.data, dsa.Array)  # nothing read yet
    assert max(t2m.chunks[0]) == 24 and t2m.sizes["time"] == 744
    single = open_era5(src, "t2m")
    xr.testing.assert_identical(t2m.compute(), single["t2m"].load())
    # a list of paths gives the same
    listed = open_era5(sorted(tmp_path.glob("uk_*.nc")), "t2m", chunks={"time": 24})
    xr.testing.assert_identical(listed["t2m"].compute(), single["t2m"].load())


def test_cds_2024_names_are_normalised(data, tmp_path):
    src = require(data / "era5" / UK)
    path = tmp_path / "cds2024.nc"
    with _raw(src) as raw:
        # CDS netCDF since 2024: time is `valid_time`; some tools write `lat`/`lon`
        variant = raw.drop_vars("valid_time").rename(
            {"time": "valid_time", "latitude": "lat", "longitude": "lon"}
        )
        variant = variant.assign_coords(time=np.datetime64("2019-03-01"))  # scalar: dropped
        variant.to_netcdf(path, engine=NETCDF_ENGINE)
    ds = open_era5(path)
    single = open_era5(src)
    assert ds["t2m"].dims == ("time", "latitude", "longitude")
    assert "valid_time" not in ds.variables and "lat" not in ds.variables
    np.testing.assert_array_equal(ds["time"].values, single["time"].values)
    np.testing.assert_array_equal(ds["t2m"].values, single["t2m"].values)


def test_latitude_order_and_longitude_convention_do_not_change_area_or_mean(data, tmp_path):
    src = require(data / "era5" / GLOBAL)
    with _raw(src) as raw:
        g = raw[["t2m"]].isel(time=slice(0, 3)).load()
    lon180 = (g["longitude"] + 180) % 360 - 180
    variants = {
        "descending_0_360": g,  # as stored: 90 -> -90, 0 -> 359
        "ascending": g.isel(latitude=slice(None, None, -1)),
        "minus180_180": g.assign_coords(longitude=lon180).roll(longitude=180, roll_coords=True),
        "crossing_180": g.assign_coords(longitude=lon180),  # 0..179, -180..-1
        "ascending_minus180": g.assign_coords(longitude=lon180)
        .roll(longitude=180, roll_coords=True)
        .isel(latitude=slice(None, None, -1)),
    }
    means, at_london = {}, {}
    for name, variant in variants.items():
        variant.to_netcdf(tmp_path / f"{name}.nc", engine=NETCDF_ENGINE)
        ds = open_era5(tmp_path / f"{name}.nc", "t2m")
        domain = grid_domain(ds)
        assert domain.periodic and domain.num_nodes == 181 * 360
        assert domain.total_area == pytest.approx(4 * np.pi, rel=1e-12)
        signal, _ = to_signal(ds["t2m"])  # (3, N, 1)
        mass = domain.mass
        means[name] = ((signal[..., 0] * mass).sum(-1) / mass.sum()).numpy()
        # the same physical point carries the same value in every layout
        target = np.array([np.cos(np.deg2rad(52.0)), 0.0, np.sin(np.deg2rad(52.0))])
        node = int(np.argmax(domain.positions.numpy() @ target))
        at_london[name] = signal[:, node, 0].numpy()
    ref = means["descending_0_360"]
    assert np.all((ref > 270) & (ref < 300))  # a global-mean 2 m temperature in K
    for name in variants:
        np.testing.assert_allclose(means[name], ref, rtol=1e-10, err_msg=name)
        np.testing.assert_array_equal(at_london[name], at_london["descending_0_360"])


def test_grib_levels_and_members(data):
    ds = open_era5(require(data / "era5" / "era5-levels-members.grib"))
    assert ds["t"].dims == ("number", "time", "level", "latitude", "longitude")
    assert ds.sizes["level"] == 2 and ds.sizes["number"] == 10
    np.testing.assert_array_equal(ds["level"].values, [850.0, 500.0])
    np.testing.assert_array_equal(ds["number"].values, np.arange(10))
    assert ds["level"].attrs["units"] == "hPa"
    assert "isobaricInhPa" not in ds.variables


def test_units_and_long_names_are_kept(data, tmp_path):
    uk = require(data / "era5" / UK)
    grib = require(data / "era5" / "era5-levels-members.grib")
    opened = {
        "netcdf": open_era5(uk, "t2m"),
        "netcdf_lazy": open_era5(uk, "t2m", chunks={}),
        "grib": open_era5(data / "era5" / "era5-2mt-2019-03-uk.grib", "t2m"),
    }
    for name, ds in opened.items():
        assert ds["t2m"].attrs["units"] == "K", name
        assert ds["t2m"].attrs["long_name"] == "2 metre temperature", name
        assert ds["latitude"].attrs["units"] == "degrees_north", name
        assert ds["longitude"].attrs["units"] == "degrees_east", name
    levels = open_era5(grib, ["z", "t"])
    assert levels["z"].attrs["units"] == "m**2 s**-2"
    assert levels["z"].attrs["long_name"] == "Geopotential"
    assert levels["t"].attrs["units"] == "K" and levels["t"].attrs["long_name"] == "Temperature"
    glob_ds = open_era5(require(data / "era5" / GLOBAL), "t2m")
    assert glob_ds["t2m"].attrs["units"] == "K"


def test_months_since_is_decoded_as_calendar_months_and_said(tmp_path):
    """Whole months of `months since` time axes are read as calendar months, with a warning.

    Classic reanalysis files count time in `months since` a date, which neither pandas nor cftime
    decode in the standard calendar.
    """
    import netCDF4

    def write(path, offsets):
        with netCDF4.Dataset(path, "w") as nc:
            nc.createDimension("time", len(offsets))
            nc.createDimension("latitude", 2)
            nc.createDimension("longitude", 3)
            t = nc.createVariable("time", "f8", ("time",))
            t.units, t.calendar = "months since 1958-01-01", "standard"
            t[:] = offsets
            nc.createVariable("latitude", "f8", ("latitude",))[:] = [10.0, -10.0]
            nc.createVariable("longitude", "f8", ("longitude",))[:] = [0.0, 120.0, 240.0]
            v = nc.createVariable("t2m", "f4", ("time", "latitude", "longitude"), fill_value=-999.0)
            v.units = "K"
            v[:] = 280.0
            v[0, 0, 0] = -999.0

    write(tmp_path / "monthly.nc", [0, 1, 13])
    with pytest.warns(UserWarning, match="as calendar months after 1958-01-01"):
        ds = open_era5(tmp_path / "monthly.nc")
    assert [str(t)[:10] for t in ds.time.values] == ["1958-01-01", "1958-02-01", "1959-02-01"]
    assert (
        np.isnan(ds.t2m.values[0, 0, 0]) and ds.t2m.values[1, 0, 0] == 280.0
    )  # fill values still masked
    write(tmp_path / "fractional.nc", [0, 0.5, 1])
    with pytest.raises(ValueError, match="fractional months"):
        open_era5(tmp_path / "fractional.nc")
