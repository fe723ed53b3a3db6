"""ERA5 reading and lossless field <-> signal conversion on the real files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import require

from climate import from_signal, grid_domain, open_era5, to_signal
from climate.demo import default_sample_path


def test_shipped_sample_is_small_and_real():
    path = default_sample_path()
    assert path.stat().st_size < 3 * 2**20
    ds = open_era5(path)
    assert ds["t2m"].sizes == {"time": 744, "latitude": 33, "longitude": 49}
    assert ds["t2m"].attrs["units"] == "K"
    assert "CC-BY-4.0" in ds.attrs["license"]


def test_grib_and_netcdf_agree(data):
    nc = open_era5(require(data / "era5" / "era5-2mt-2019-03-uk.nc"), "t2m")
    grib = open_era5(require(data / "era5" / "era5-2mt-2019-03-uk.grib"), "t2m")
    np.testing.assert_array_equal(nc.t2m.values, grib.t2m.values)
    assert list(grib.t2m.dims) == ["time", "latitude", "longitude"]


def test_round_trip_is_identity_with_levels_and_members(data):
    ds = open_era5(require(data / "era5" / "era5-levels-members.nc"))
    assert "level" in ds.dims and "number" in ds.dims  # isobaricInhPa renamed
    da = ds["t"]
    signal, layout = to_signal(da, channel_dim="level")
    assert signal.shape == (10 * 4, 61 * 120, 2)
    back = from_signal(signal, layout).astype(da.dtype).transpose(*da.dims)
    xr.testing.assert_identical(back, da.load())
    flat, layout1 = to_signal(da)  # no channel dim: levels go into the batch
    assert flat.shape == (10 * 4 * 2, 61 * 120, 1)
    xr.testing.assert_identical(from_signal(flat, layout1).astype(da.dtype), da.load())


def test_round_trip_of_samples_adds_a_sample_dim():
    da = open_era5(default_sample_path())["t2m"].isel(time=slice(0, 3)).load()
    signal, layout = to_signal(da)
    samples = torch.stack([signal, signal + 1])
    out = from_signal(samples, layout, name="t2m_samples")
    assert out.dims == ("sample", "time", "latitude", "longitude")
    np.testing.assert_array_equal(out.isel(sample=1).values, da.values + 1)
    with pytest.raises(ValueError, match="signal must have shape"):
        from_signal(signal[:, :10], layout)


def test_node_order_matches_sphere_grid():
    da = open_era5(default_sample_path())["t2m"].isel(time=0).load()
    domain = grid_domain(da)
    signal, _ = to_signal(da)
    lat, lon = domain.lat_lon_rad()
    j = 5 * 49 + 7
    assert np.rad2deg(lat[j]) == pytest.approx(float(da.latitude[5]))
    assert np.rad2deg(lon[j]) == pytest.approx(float(da.longitude[7]))
    assert signal[0, j, 0].item() == pytest.approx(float(da[5, 7]))


@pytest.mark.parametrize(
    "name,nodes,area",
    [
        ("era5_global_1deg_2026-03-25_to_31_24steps.nc", 181 * 360, 4 * np.pi),
        ("eraint_uvz.nc", 241 * 480, 4 * np.pi),  # netCDF-3, longitudes -180..179.25
        ("era5-levels-members.grib", 61 * 120, 4 * np.pi),
    ],
)
def test_global_grids(data, name, nodes, area):
    ds = open_era5(require(data / "era5" / name))
    domain = grid_domain(ds)
    assert domain.num_nodes == nodes and domain.periodic
    assert domain.total_area == pytest.approx(area, rel=1e-12)


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_era5(str(tmp_path / "*.nc"))
    with pytest.raises(KeyError, match=r"variable\(s\) \['z500'\] not in"):
        open_era5(default_sample_path(), "z500")
    bogus = tmp_path / "x.nc"
    bogus.write_bytes(b"not a netcdf file")
    with pytest.raises(ValueError, match="not a netCDF, GRIB or zarr file"):
        open_era5(bogus)
    no_grid = xr.DataArray(np.zeros((2, 3)), dims=["y", "x"], name="f")
    with pytest.raises(ValueError, match="needs latitude and longitude"):
        to_signal(no_grid)
