"""Lat-lon <-> HEALPix regridding on the real ERA5 fields."""

from __future__ import annotations

import dask
import dask.array as dsa
import healpy as hp
import numpy as np
import pytest
import xarray as xr
from conftest import require

from climate.era5 import grid_domain, open_era5
from climate.regrid import (
    PIXEL,
    healpix_to_latlon_matrix,
    latlon_to_healpix,
    latlon_to_healpix_matrix,
)

GLOBAL = "era5_global_1deg_2026-03-25_to_31_24steps.nc"
UK = "era5-2mt-2019-03-uk.nc"


@pytest.fixture
def global_t2m(data) -> xr.DataArray:
    """Real global 1° t2m (K), 3 time steps, latitude 90 -> -90, longitude 0 -> 359."""
    ds = open_era5(require(data / "era5" / GLOBAL), "t2m")
    return ds["t2m"].isel(time=slice(0, 3)).load()


def _no_compute(*args, **kwargs):
    raise AssertionError("a dask graph was computed where the result should stay lazy")


@pytest.mark.parametrize("nside", [16, 32])
def test_latlon_to_healpix_keeps_the_global_mean(global_t2m, nside):
    grid = grid_domain(global_t2m)
    mat = latlon_to_healpix_matrix(grid, nside)
    npix = hp.nside2npix(nside)
    assert mat.shape == (npix, 181 * 360)
    # averaging: every row sums to 1, no weight is negative, so a constant stays that constant
    np.testing.assert_allclose(np.asarray(mat.sum(axis=1)).ravel(), 1.0, rtol=1e-13)
    assert mat.data.min() > 0
    np.testing.assert_allclose(mat @ np.full(grid.num_nodes, 273.15), 273.15, rtol=1e-13)
    # equal-area pixels: the plain pixel mean is the area-weighted mean over the sphere
    fields = global_t2m.values.reshape(3, -1).astype(np.float64)
    area = grid.mass.numpy()
    latlon_mean = fields @ area / area.sum()
    healpix_mean = (mat @ fields.T).mean(axis=0)
    np.testing.assert_allclose(healpix_mean, latlon_mean, rtol=1e-3)
    assert np.all(np.abs(healpix_mean / latlon_mean - 1) < 1e-3)


@pytest.mark.parametrize("nside", [16, 32])
def test_healpix_map_constant_per_pixel_round_trips(global_t2m, nside):
    grid = grid_domain(global_t2m)
    to_hp = latlon_to_healpix_matrix(grid, nside)
    to_ll = healpix_to_latlon_matrix(grid, nside)
    assert to_ll.shape == (grid.num_nodes, hp.nside2npix(nside))
    np.testing.assert_array_equal(np.asarray(to_ll.sum(axis=1)).ravel(), 1.0)  # one pixel each
    # at 1° every pixel of nside <= 32 contains cell centres, so the round trip is exact
    lat, lon = grid.lat_lon_rad()
    assert np.unique(hp.ang2pix(nside, np.pi / 2 - lat, lon)).size == hp.nside2npix(nside)
    healpix_map = np.random.default_rng(0).standard_normal(hp.nside2npix(nside))
    np.testing.assert_allclose(to_hp @ (to_ll @ healpix_map), healpix_map, rtol=0, atol=1e-12)


def test_regional_grid_fills_empty_pixels_with_the_nearest_cell(data):
    uk = open_era5(require(data / "era5" / UK), "t2m")["t2m"].isel(time=0).load()
    grid = grid_domain(uk)
    nside = 64
    mat = latlon_to_healpix_matrix(grid, nside)
    npix = hp.nside2npix(nside)
    assert mat.shape == (npix, 33 * 49)
    np.testing.assert_allclose(np.asarray(mat.sum(axis=1)).ravel(), 1.0, rtol=1e-13)
    lat, lon = grid.lat_lon_rad()
    hit = np.unique(hp.ang2pix(nside, np.pi / 2 - lat, lon))
    assert 0 < hit.size < npix
    empty = np.setdiff1d(np.arange(npix), hit)
    rng = np.random.default_rng(1)
    probe = rng.choice(empty, 200, replace=False)
    centres = np.stack(hp.pix2vec(nside, probe), axis=1)
    nearest = np.argmax(centres @ grid.positions.numpy().T, axis=1)  # brute force, max cosine
    rows = mat[probe]
    assert np.all(np.diff(rows.indptr) == 1)  # one cell each, with weight 1
    np.testing.assert_array_equal(rows.indices, nearest)
    np.testing.assert_array_equal(rows.data, 1.0)
    # pixels that do contain centres average those cells only
    field = uk.values.ravel().astype(np.float64)
    out = mat @ field
    assert field.min() <= out.min() and out.max() <= field.max()


def test_latlon_to_healpix_dataarray(global_t2m):
    nside = 16
    out = latlon_to_healpix(global_t2m, nside)
    assert out.dims == ("time", PIXEL) and out.sizes[PIXEL] == hp.nside2npix(nside)
    assert out.attrs == global_t2m.attrs and out.name == "t2m" and out.dtype == np.float32
    np.testing.assert_array_equal(out["time"].values, global_t2m["time"].values)
    assert out[PIXEL].attrs == {"healpix_nside": 16, "healpix_order": "ring"}
    mat = latlon_to_healpix_matrix(grid_domain(global_t2m), nside)
    expected = (mat @ global_t2m.values.reshape(3, -1).astype(np.float64).T).T
    np.testing.assert_allclose(out.values, expected, rtol=1e-6)
    # the node order does not depend on the dimension order of the input
    swapped = latlon_to_healpix(global_t2m.transpose("longitude", "time", "latitude"), nside)
    assert swapped.dims == ("time", PIXEL)
    np.testing.assert_array_equal(swapped.values, out.values)
    # NESTED is RING reordered
    nested = latlon_to_healpix(global_t2m, nside, nest=True)
    assert nested[PIXEL].attrs["healpix_order"] == "nested"
    np.testing.assert_array_equal(nested.values, hp.reorder(out.values, r2n=True))


def test_latlon_to_healpix_is_lazy_on_dask(global_t2m):
    lazy_in = global_t2m.chunk({"time": 1, "latitude": 90})
    with dask.config.set(scheduler=_no_compute):
        out = latlon_to_healpix(lazy_in, 16)
    assert isinstance(out.data, dsa.Array) and out.chunks[0] == (1, 1, 1)
    np.testing.assert_array_equal(out.compute().values, latlon_to_healpix(global_t2m, 16).values)


def test_latlon_to_healpix_errors(global_t2m):
    with pytest.raises(ValueError, match="needs 'latitude' and 'longitude' dimensions"):
        latlon_to_healpix(global_t2m.isel(latitude=0), 16)
    with pytest.raises(ValueError, match="nside must be a power of 2"):
        latlon_to_healpix(global_t2m, 12, nest=True)
    with pytest.raises(ValueError, match="nside must be a positive integer"):
        latlon_to_healpix(global_t2m, 0)
    with pytest.raises(TypeError, match="nside must be an integer"):
        latlon_to_healpix(global_t2m, 16.0)
    with pytest.raises(TypeError, match="must be an xarray.DataArray"):
        latlon_to_healpix(global_t2m.values, 16)
