"""Mask builders of `climate.masks` on real ERA5 grids, and the `Mask` operator they make."""

from __future__ import annotations

import dask
import dask.array
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import data_dir, require

from climate import grid_domain, open_era5, to_signal
from climate.demo import default_sample_path
from climate.masks import (
    EARTH_RADIUS_KM,
    box_mask,
    land_mask,
    mask_operator,
    missing_mask,
    random_mask,
    sea_mask,
    station_mask,
    swath_mask,
)
from climate.schema import LATITUDE, LONGITUDE, TIME

UK_FILE = "era5-2mt-2019-03-uk.nc"
GLOBAL_FILE = "era5_global_1deg_2026-03-25_to_31_24steps.nc"
TOWNS = {"London": (51.5, -0.13), "Edinburgh": (55.95, -3.19), "Dublin": (53.35, -6.26)}
MADRID = (40.4, -3.7)


@pytest.fixture(scope="module")
def uk() -> xr.DataArray:
    """UK t2m, first 6 hours: 33 x 49, latitude 58 -> 50, longitude -10..2."""
    path = require(data_dir() / "era5" / UK_FILE)
    return open_era5(path, "t2m")["t2m"].isel({TIME: slice(0, 6)}).load()


@pytest.fixture(scope="module")
def world() -> xr.DataArray:
    """Global 1 degree t2m, first 2 steps: 181 x 360, latitude 90 -> -90, longitude 0..359."""
    path = require(data_dir() / "era5" / GLOBAL_FILE)
    return open_era5(path, "t2m")["t2m"].isel({TIME: slice(0, 2)}).load()


def area_fraction(mask: xr.DataArray) -> float:
    """Observed fraction of the area, cos(latitude) weights."""
    weights = np.cos(np.deg2rad(mask[LATITUDE]))
    return float(mask.astype(float).weighted(weights).mean((LATITUDE, LONGITUDE)))


def cell(mask: xr.DataArray, lat: float, lon: float) -> bool:
    return bool(mask.sel({LATITUDE: lat, LONGITUDE: lon}, method="nearest"))


# ----------------------------------------------------------------------------------------------
# random_mask
# ----------------------------------------------------------------------------------------------


def test_random_mask_exact_fraction_and_seed(uk):
    m = random_mask(uk, 0.7, seed=3)
    n = 33 * 49
    assert m.name == "observed" and m.dtype == bool
    assert m.dims == (LATITUDE, LONGITUDE) and m.shape == (33, 49)
    np.testing.assert_array_equal(m[LATITUDE], uk[LATITUDE])
    np.testing.assert_array_equal(m[LONGITUDE], uk[LONGITUDE])
    assert int((~m).sum()) == round(0.7 * n)
    assert m.attrs["description"] == "random 70 % missing, seed 3"
    assert random_mask(uk, 0.7, seed=3).equals(m)
    assert not random_mask(uk, 0.7, seed=4).equals(m)
    assert int((~random_mask(uk, 0.0)).sum()) == 0
    assert int(random_mask(uk, 0.9999).sum()) == 1  # at least one cell stays observed


def test_random_mask_per_time(uk):
    m = random_mask(uk, 0.5, seed=1, per_time=True)
    assert m.dims == (TIME, LATITUDE, LONGITUDE) and m.shape == (6, 33, 49)
    np.testing.assert_array_equal(m[TIME], uk[TIME])
    hidden = (~m).sum((LATITUDE, LONGITUDE)).values
    np.testing.assert_array_equal(hidden, round(0.5 * 33 * 49))
    assert not m.isel({TIME: 0}).equals(m.isel({TIME: 1}))
    assert random_mask(uk, 0.5, seed=1, per_time=True).equals(m)


def test_random_mask_errors(uk):
    with pytest.raises(ValueError, match=r"missing must be a fraction in \[0, 1\), got 1"):
        random_mask(uk, 1.0)
    with pytest.raises(ValueError, match="missing must be a fraction"):
        random_mask(uk, -0.1)
    with pytest.raises(ValueError, match="per_time=True needs like with a 'time' dimension"):
        random_mask(uk.isel({TIME: 0}), per_time=True)
    with pytest.raises(ValueError, match="like needs a 'latitude' dimension"):
        random_mask(uk.rename({LATITUDE: "y"}))


# ----------------------------------------------------------------------------------------------
# missing_mask
# ----------------------------------------------------------------------------------------------


def test_missing_mask_matches_nans(uk):
    field = uk.copy()
    field[1, 4:9, 10:20] = np.nan
    field[3, 0, 0] = np.nan
    m = missing_mask(field)
    assert m.name == "observed" and m.dims == field.dims and m.dtype == bool
    assert m.equals(~field.isnull().rename("observed"))
    assert int((~m).sum()) == 5 * 10 + 1
    assert m.attrs["description"] == "values present in t2m"


def _no_compute(dsk, keys, **kwargs):
    raise AssertionError("dask computed something while only building the mask")


@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")
def test_missing_mask_is_lazy_on_dask():
    path = require(data_dir() / "era5" / UK_FILE)
    field = open_era5(path, "t2m", chunks={TIME: 24})["t2m"].isel({TIME: slice(0, 48)})
    field = field.where(field > 280.0)  # about a fifth NaN, still lazy
    with dask.config.set(scheduler=_no_compute):
        m = missing_mask(field)
        combined = m & random_mask(field, 0.2)
    assert isinstance(m.data, dask.array.Array) and isinstance(combined.data, dask.array.Array)
    expected = field.compute() > 280.0
    np.testing.assert_array_equal(m.values, expected.values)
    assert 0 < int((~m).sum()) < m.size
    op = mask_operator(m, field)
    assert op.mask.shape == (48, 33 * 49, 1)


# ----------------------------------------------------------------------------------------------
# station_mask
# ----------------------------------------------------------------------------------------------


def test_station_mask_from_csv(uk, tmp_path):
    csv = tmp_path / "stations.csv"
    rows = [(name, lat, lon) for name, (lat, lon) in TOWNS.items()] + [("Madrid", *MADRID)]
    pd.DataFrame(rows, columns=["Name", "LAT", "Lon"]).to_csv(csv, index=False)
    m = station_mask(uk, csv)
    assert m.dims == (LATITUDE, LONGITUDE) and m.dtype == bool
    assert m.attrs["num_stations"] == 3 and m.attrs["num_dropped"] == 1
    assert int(m.sum()) == 3
    for name, (lat, lon) in TOWNS.items():
        near = m.sel({LATITUDE: lat, LONGITUDE: lon}, method="nearest")
        assert bool(near), name
        assert (
            abs(float(near[LATITUDE]) - lat) <= 0.125 and abs(float(near[LONGITUDE]) - lon) <= 0.125
        )
    i, j = np.nonzero(m.values)
    cells = set(zip(m[LATITUDE].values[i].tolist(), m[LONGITUDE].values[j].tolist(), strict=True))
    assert cells == {(51.5, -0.25), (56.0, -3.25), (53.25, -6.25)}

    # The same stations as a DataFrame (long names) and as an array give the same mask.
    frame = pd.DataFrame(list(TOWNS.values()), columns=["Latitude", "LONGITUDE"])
    assert station_mask(uk, frame).drop_attrs().equals(m.drop_attrs())
    assert station_mask(uk, np.array(list(TOWNS.values()))).equals(station_mask(uk, frame))


def test_station_mask_on_global_grid_both_conventions(world):
    towns = np.array(list(TOWNS.values()) + [MADRID])
    m = station_mask(world, towns)
    assert m.attrs["num_stations"] == 4 and int(m.sum()) == 4
    assert cell(m, 51.5, 0.0) and cell(m, 40.0, 356.0) and cell(m, 53.0, 354.0)
    shifted = world.assign_coords({LONGITUDE: (world[LONGITUDE] + 180) % 360 - 180})
    shifted = shifted.sortby(LONGITUDE)
    m2 = station_mask(shifted, towns)
    assert m2.sortby(LONGITUDE).equals(m2) and int(m2.sum()) == 4
    assert cell(m2, 40.0, -4.0) and cell(m2, 53.0, -6.0)


def test_station_mask_errors(uk, tmp_path):
    csv = tmp_path / "far_away.csv"
    pd.DataFrame({"lat": [MADRID[0], -33.9], "lon": [MADRID[1], 151.2]}).to_csv(csv, index=False)
    with pytest.raises(ValueError, match=r"far_away\.csv: none of its 2 stations lies inside"):
        station_mask(uk, csv)
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"y": [51.5], "x": [0.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="needs a column lat or latitude"):
        station_mask(uk, bad)
    with pytest.raises(ValueError, match=r"array \(K, 2\).*shape \(3,\)"):
        station_mask(uk, np.array([51.5, 0.0, 1.0]))
    with pytest.raises(FileNotFoundError, match="station file not found"):
        station_mask(uk, tmp_path / "absent.csv")


# ----------------------------------------------------------------------------------------------
# swath_mask
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width_km", [500.0, 2000.0])
def test_swath_width_gives_the_area_fraction(world, width_km):
    # A band of full width W around a great circle covers W * 2 pi R of 4 pi R^2: W / (2 R).
    expected = np.sin(width_km / (2 * EARTH_RADIUS_KM))
    for seed in range(3):
        m = swath_mask(world, num_swaths=1, width_km=width_km, seed=seed)
        assert m.dims == (LATITUDE, LONGITUDE)
        assert area_fraction(m) == pytest.approx(expected, rel=0.1)
    assert area_fraction(swath_mask(world, num_swaths=1, width_km=width_km, seed=9)) < 2 * (
        width_km / (2 * EARTH_RADIUS_KM)
    )


def test_swath_mask_regional_seed_and_per_time(uk):
    for seed in range(5):
        m = swath_mask(uk, num_swaths=1, width_km=100.0, seed=seed)
        assert 0 < int(m.sum()) < m.size  # the swath crosses the regional grid
    a = swath_mask(uk, seed=0, width_km=200.0)
    assert swath_mask(uk, seed=0, width_km=200.0).equals(a)
    assert not swath_mask(uk, seed=1, width_km=200.0).equals(a)
    assert a.attrs["description"] == "2 swath(s) of 200 km, seed 0"
    t = swath_mask(uk, seed=0, width_km=200.0, per_time=True)
    assert t.dims == (TIME, LATITUDE, LONGITUDE) and t.shape == (6, 33, 49)
    assert bool(t.any((LATITUDE, LONGITUDE)).all())
    assert not t.isel({TIME: 0}).equals(t.isel({TIME: 1}))


def test_swath_mask_errors(uk):
    with pytest.raises(ValueError, match="width_km must lie in"):
        swath_mask(uk, width_km=0.0)
    with pytest.raises(ValueError, match="width_km must lie in"):
        swath_mask(uk, width_km=30000.0)
    with pytest.raises(ValueError, match="num_swaths must be an integer >= 1, got 0"):
        swath_mask(uk, num_swaths=0)


# ----------------------------------------------------------------------------------------------
# box_mask
# ----------------------------------------------------------------------------------------------


def test_box_mask_longitude_conventions(world, uk):
    a = box_mask(world, lat=(45, 60), lon=(-10, 2))
    b = box_mask(world, lat=(45, 60), lon=(350, 2))
    assert a.dims == (LATITUDE, LONGITUDE) and a.equals(b)
    hidden = ~a
    assert int(hidden.sum()) == 16 * 13  # latitudes 45..60, longitudes 350..359 and 0..2
    assert not cell(a, 50, 355) and not cell(a, 50, 0) and not cell(a, 50, 2)
    assert cell(a, 50, 3) and cell(a, 50, 349) and cell(a, 44, 0)
    inside = box_mask(world, lat=(45, 60), lon=(350, 2), hide=False)
    assert inside.equals(~a)
    # The same boxes on the -10..2 grid of the UK file: here (-10, 2) is the whole width.
    assert box_mask(uk, lat=(52, 54), lon=(-10, 2)).equals(box_mask(uk, lat=(52, 54), lon=(350, 2)))
    assert int((~box_mask(uk, lat=(52, 54), lon=(350, 2))).sum()) == 9 * 49
    assert int((~box_mask(uk, lat=(52, 54), lon=(358, 1))).sum()) == 9 * 13


def test_box_mask_across_the_dateline(world):
    m = box_mask(world, lat=(-10, 10), lon=(170, -170), hide=False)
    assert int(m.sum()) == 21 * 21  # longitudes 170..190
    assert cell(m, 0, 180) and cell(m, 0, 190) and not cell(m, 0, 191) and not cell(m, 0, 169)
    assert box_mask(world, lat=(-90, 90), lon=(0, 360), hide=False).all()


def test_box_mask_errors(uk):
    with pytest.raises(ValueError, match=r"lat must be \(south, north\).*got \(60, 45\)"):
        box_mask(uk, lat=(60, 45), lon=(0, 1))
    with pytest.raises(ValueError, match="lat must be a pair of numbers"):
        box_mask(uk, lat=50, lon=(0, 1))
    with pytest.raises(ValueError, match="lon must be a pair of numbers"):
        box_mask(uk, lat=(50, 52), lon=(0, 1, 2))


# ----------------------------------------------------------------------------------------------
# land_mask / sea_mask
# ----------------------------------------------------------------------------------------------


def test_land_and_sea_on_the_uk_grid(uk, natural_earth):
    land = land_mask(uk)
    sea = sea_mask(uk)
    assert land.dims == (LATITUDE, LONGITUDE) and land.dtype == bool
    assert cell(land, 51.5, -0.13)  # London
    assert cell(land, 52.5, -1.9)  # Birmingham
    assert not cell(land, 54.0, -5.0)  # Irish Sea
    assert not cell(land, 55.0, 1.5)  # North Sea
    assert sea.equals(~land)
    assert 0.2 < float(land.mean()) < 0.6


def test_land_fraction_of_the_globe(world, natural_earth):
    land = land_mask(world)
    assert area_fraction(land) == pytest.approx(0.29, abs=0.03)
    assert bool(land.sel({LATITUDE: -90}).all())  # Antarctica reaches the pole row
    assert not cell(land, 0.0, 200.0)  # Pacific
    shifted = world.assign_coords({LONGITUDE: (world[LONGITUDE] + 180) % 360 - 180})
    shifted_land = land_mask(shifted.sortby(LONGITUDE))
    np.testing.assert_array_equal(
        shifted_land.sortby(LONGITUDE).values,
        land.sortby((land[LONGITUDE] + 180) % 360 - 180).values,
    )


def test_land_mask_needs_the_shapefile(uk, monkeypatch, tmp_path):
    monkeypatch.setenv("CARTOPY_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="set CARTOPY_DATA_DIR"):
        land_mask(uk)


# ----------------------------------------------------------------------------------------------
# Combining
# ----------------------------------------------------------------------------------------------


def test_masks_combine_with_xarray_operators(uk, natural_earth):
    land = land_mask(uk)
    rand = random_mask(uk, 0.5, seed=2)
    both, either = land & rand, land | rand
    np.testing.assert_array_equal(both.values, land.values & rand.values)
    np.testing.assert_array_equal(either.values, land.values | rand.values)
    assert both.dtype == bool and both.dims == (LATITUDE, LONGITUDE)
    assert int(both.sum()) < int(land.sum()) < int(either.sum())
    assert (~land).equals(sea_mask(uk))
    # A static mask combined with a time-varying one varies in time (any dim order works below).
    varying = land & random_mask(uk, 0.5, per_time=True)
    assert set(varying.dims) == {TIME, LATITUDE, LONGITUDE}
    op = mask_operator(varying, uk)
    assert op.mask.shape == (6, 33 * 49, 1)
    expected = varying.transpose(TIME, LATITUDE, LONGITUDE).values.reshape(6, -1)
    np.testing.assert_array_equal(op.mask[:, :, 0].numpy(), expected)


# ----------------------------------------------------------------------------------------------
# mask_operator
# ----------------------------------------------------------------------------------------------


def test_mask_operator_static_broadcast_and_node_order(uk):
    m = random_mask(uk, 0.7, seed=5)
    op = mask_operator(m, uk)
    assert op.mask.shape == (6, 33 * 49, 1) and op.mask.dtype.is_floating_point is False
    assert op.domain.shape == (33, 49)
    for i, j in [(0, 0), (3, 7), (32, 48), (20, 1)]:
        for b in (0, 5):
            assert bool(op.mask[b, i * 49 + j, 0]) == bool(m[i, j])
    assert bool((op.mask == op.mask[:1]).all())
    # Same node order as `to_signal`: masking the signal zeroes exactly the hidden cells.
    x, _ = to_signal(uk)
    y = op(x)
    hidden = ~m.values.reshape(-1)
    assert bool((y[:, hidden] == 0).all()) and bool((y[:, ~hidden] == x[:, ~hidden]).all())
    # A Dataset works as `like` too.
    assert random_mask(uk.to_dataset(), 0.7, seed=5).equals(m)
    assert bool((mask_operator(m, uk.to_dataset()).mask == op.mask).all())
    # Without a time dimension: B = 1; an existing domain is reused.
    domain = grid_domain(uk)
    op1 = mask_operator(m, uk.isel({TIME: 0}), domain=domain)
    assert op1.mask.shape == (1, 33 * 49, 1) and op1.domain is domain


def test_mask_operator_aligns_time_varying_masks(uk):
    path = require(data_dir() / "era5" / UK_FILE)
    full = open_era5(path, "t2m")["t2m"].isel({TIME: slice(0, 24)})
    m = random_mask(full, 0.6, seed=7, per_time=True)
    like = uk.isel({TIME: [4, 1, 2]})  # a subset, out of order
    op = mask_operator(m, like)
    assert op.mask.shape == (3, 33 * 49, 1)
    for b, t in enumerate(like[TIME].values):
        expected = m.sel({TIME: t}).values.reshape(-1)
        np.testing.assert_array_equal(op.mask[b, :, 0].numpy(), expected)
    # A like with a scalar time picks that step.
    one = mask_operator(m, uk.isel({TIME: 3}))
    np.testing.assert_array_equal(one.mask[0, :, 0].numpy(), m.isel({TIME: 3}).values.ravel())


def test_mask_operator_on_the_shipped_sample(uk):
    sample = open_era5(default_sample_path(), "t2m")["t2m"].isel({TIME: slice(0, 4)})
    m = station_mask(sample, np.array(list(TOWNS.values())))
    op = mask_operator(m, sample)
    assert op.mask.shape == (4, 33 * 49, 1) and int(op.mask[0].sum()) == 3
    # The sample shares the grid of the real file, so masks move between them.
    assert mask_operator(m, uk).mask.shape == (6, 33 * 49, 1)


def test_mask_operator_errors(uk, world):
    m = random_mask(uk, 0.5)
    with pytest.raises(ValueError, match=r"the mask is on another grid: mask latitude \(181,\)"):
        mask_operator(random_mask(world, 0.5), uk)
    with pytest.raises(ValueError, match="the mask is on another grid"):
        mask_operator(m.isel({LONGITUDE: slice(0, 48)}), uk)
    with pytest.raises(ValueError, match="observed must be a boolean mask.*got dtype int64"):
        mask_operator(m.astype("int64"), uk)
    with pytest.raises(ValueError, match=r"extra dims \['level'\]"):
        mask_operator(m.expand_dims(level=[500]), uk)
    varying = random_mask(uk, 0.5, per_time=True)
    varying[2] = False
    with pytest.raises(ValueError, match="observes nothing at time 2019-03-01 02:00:00"):
        mask_operator(varying, uk)
    with pytest.raises(ValueError, match="observes nothing"):
        mask_operator(m & ~m, uk)
    later = uk.assign_coords({TIME: uk[TIME] + np.timedelta64(6, "h")})
    with pytest.raises(ValueError, match=r"no mask for 6 time step\(s\) of like"):
        mask_operator(random_mask(uk, 0.5, per_time=True), later)
    with pytest.raises(ValueError, match="observed varies in time.*like has no 'time'"):
        mask_operator(random_mask(uk, 0.5, per_time=True), uk.isel({TIME: 0}).drop_vars(TIME))
    with pytest.raises(ValueError, match=r"domain does not fit the grid: it has 65160 nodes"):
        mask_operator(m, uk, domain=grid_domain(world))
