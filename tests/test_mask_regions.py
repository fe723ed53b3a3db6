"""The one implementation of mask shapes (`operators.masks`) against closed forms, and its users.

`random_observed`, `lat_lon_box`, `great_circle_bands` and `pole_through` are what both the
training generators and the xarray masks of `climate.masks` call; here each is checked against
what it must be on a grid whose answer is known, and the climate masks against them on the
engines' own grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import xarray as xr

from climate.masks import box_mask
from manifold_aps.geometry import SphereGrid
from manifold_aps.operators.masks import (
    BoxMaskGenerator,
    directions,
    great_circle_bands,
    lat_lon_box,
    pole_through,
    random_observed,
)


def _world(step: float = 5.0) -> xr.DataArray:
    lat = np.arange(90.0, -90.1, -step)
    lon = np.arange(0.0, 360.0, step)
    return xr.DataArray(
        np.zeros((lat.size, lon.size)),
        dims=("latitude", "longitude"),
        coords={"latitude": lat, "longitude": lon},
    )


def test_random_observed_hides_the_first_of_the_permutation():
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    observed = random_observed(perm, 0.3)
    assert int((~observed).sum()) == 15
    assert not observed[perm[:15]].any() and observed[perm[15:]].all()
    assert int(random_observed(perm, 1.0).sum()) == 1  # one node always stays observed
    assert bool(random_observed(perm, 0.0).all())


def test_lat_lon_box_modulo_360_and_across_the_dateline():
    lon = np.arange(-180.0, 180.0, 1.0)
    lat = np.zeros_like(lon)
    _, a, _ = lat_lon_box(lat, lon, (-1, 1), (-10, 2))
    _, b, _ = lat_lon_box(lat, lon + 360.0, (-1, 1), (350, 2))  # other convention, same box
    assert np.array_equal(a, b) and int(a.sum()) == 13  # -10..2 inclusive
    _, across, offset = lat_lon_box(lat, lon, (-1, 1), (170, -170))
    assert sorted(lon[across].tolist()) == [-180.0 + k for k in range(11)] + [
        170.0 + k for k in range(10)
    ]
    assert offset[lon == 170.0] == pytest.approx(0.0, abs=1e-6)
    assert lat_lon_box(lat, lon, (-1, 1), (0, 360))[1].all()
    with pytest.raises(ValueError, match="south <= north"):
        lat_lon_box(lat, lon, (10, -10), (0, 1))


def test_great_circle_bands_about_the_equator_are_latitude_bands():
    grid = SphereGrid(np.arange(-87.5, 90, 5.0), np.arange(0.0, 360.0, 5.0))
    dirs = directions(grid)
    inside = great_circle_bands(dirs, torch.tensor([[0.0, 0.0, 1.0]]), math.radians(12.6))
    lat = torch.rad2deg(torch.asin(dirs[:, 2]))
    assert torch.equal(inside, lat.abs() <= 12.6)
    # Two circles with their own half-widths: the union of the two bands.
    meridian = torch.tensor([0.0, 1.0, 0.0])  # the circle through both poles at longitude 0/180
    both = great_circle_bands(
        dirs, torch.stack([torch.tensor([0.0, 0.0, 1.0]), meridian]), [0.1, 0.2]
    )
    assert torch.equal(
        both, (dirs[:, 2].abs() <= math.sin(0.1)) | (dirs[:, 1].abs() <= math.sin(0.2))
    )


def test_pole_through_gives_the_equator_heading_east_and_a_meridian_heading_north():
    point = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    east = pole_through(point, math.pi / 2)
    north = pole_through(point, 0.0)
    assert torch.allclose(east.abs(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(north.abs(), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    tilted = pole_through(torch.nn.functional.normalize(torch.tensor([1.0, 2.0, 0.5]), dim=0), 0.7)
    assert float(tilted.norm()) == pytest.approx(1.0)


def test_climate_box_mask_is_lat_lon_box_on_the_engines_grid():
    world = _world()
    grid = SphereGrid(world.latitude.values, world.longitude.values)
    x, y, z = directions(grid).T.numpy()
    node_lat, node_lon = np.rad2deg(np.arcsin(z)), np.rad2deg(np.arctan2(y, x))
    for lat, lon in [((-30, 30), (350, 20)), ((40, 90), (170, -170)), ((-90, 90), (0, 360))]:
        in_lat, in_lon, _ = lat_lon_box(node_lat, node_lon, lat, lon)
        hidden = ~box_mask(world, lat=lat, lon=lon).values.reshape(-1)
        assert np.array_equal(hidden, in_lat & in_lon), (lat, lon)


def test_box_generator_hides_boxes_of_the_drawn_half_width():
    grid = SphereGrid(np.arange(-87.5, 90, 5.0), np.arange(0.0, 360.0, 5.0))
    gen = BoxMaskGenerator(grid, half_width_deg=20.0)
    mask = gen.step(1, seed=3)["mask"][0, :, 0]
    x, y, z = directions(grid).T
    lat = torch.rad2deg(torch.asin(z))
    lon = torch.rad2deg(torch.atan2(y, x))
    hidden_lat, hidden_lon = lat[~mask], lon[~mask]
    # One box of half-width 20 degrees: its hidden cells span at most 40 degrees in latitude and
    # (around its centre) in longitude, and the box hides 9 x 9 cells away from the poles.
    assert float(hidden_lat.max() - hidden_lat.min()) <= 40.0 + 1e-9
    spread = ((hidden_lon - hidden_lon[0] + 180.0) % 360.0 - 180.0).abs().max()
    assert float(spread) <= 40.0 + 1e-9
    assert int((~mask).sum()) <= 9 * 9
