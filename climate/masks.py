"""Observation masks on lat-lon and HEALPix grids as boolean DataArrays, and their `Mask` operator.

Every builder returns a boolean `xr.DataArray` named "observed" (True = observed, False = hidden)
on the grid of `like`: dims `(latitude, longitude)` for a static mask, `(time, latitude,
longitude)` for one that varies in time, with the coordinates of `like` and a short
`attrs["description"]`. On a HEALPix field (pixels along `values`, with their centres as
`latitude`/`longitude` coordinates: a HEALPix GRIB or `climate.regrid.healpix_field`) every
builder acts on the pixel centres and returns dims `(values,)` or `(time, values)`. Masks
combine with plain xarray: `a & b` observes where both observe, `a | b` where either does, `~a`
swaps observed and hidden. `mask_operator` turns a mask into the
`manifold_aps.operators.Mask` on `climate.era5.grid_domain(like)`.

The shapes are those of `manifold_aps.operators.masks` (the training generators' too):
`random_mask` draws a permutation for `random_observed`, `box_mask` and `crop_region` use
`lat_lon_box`, `swath_mask` draws circles for `great_circle_bands`; the builders here add the
xarray side (validation of the grid, coordinates, time steps, descriptions). The masks that only
a geographic grid has (`missing_mask`, `station_mask`, `land_mask`, `sea_mask`) live here alone.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.spatial import cKDTree

from climate.era5 import grid_domain, spatial_dims
from climate.schema import LATITUDE, LONGITUDE, TIME, VALUES
from manifold_aps.geometry import Domain, SphereGrid
from manifold_aps.geometry.grids import cell_bounds
from manifold_aps.operators import Mask
from manifold_aps.operators.masks import (
    great_circle_bands,
    lat_lon_box,
    pole_through,
    random_observed,
)

__all__ = [
    "EARTH_RADIUS_KM",
    "MASK_NAME",
    "align_mask",
    "box_mask",
    "crop_region",
    "land_mask",
    "mask_operator",
    "missing_mask",
    "parse_mask_spec",
    "random_mask",
    "sea_mask",
    "station_mask",
    "swath_mask",
]

EARTH_RADIUS_KM = 6371.0  # mean Earth radius, km
MASK_NAME = "observed"
LAND_SHAPEFILE = Path("shapefiles", "natural_earth", "physical", "ne_110m_land.shp")


# ----------------------------------------------------------------------------------------------
# Grid helpers
# ----------------------------------------------------------------------------------------------


def _grid(like, what: str = "like") -> tuple[np.ndarray, np.ndarray]:
    """Latitudes `(nlat,)` and longitudes `(nlon,)` of `like` in degrees, validated."""
    if not isinstance(like, (xr.DataArray, xr.Dataset)):
        raise TypeError(f"{what} must be an xarray DataArray or Dataset, got {type(like).__name__}")
    out = []
    for name in (LATITUDE, LONGITUDE):
        if name not in like.dims or name not in like.coords:
            raise ValueError(
                f"{what} needs a {name!r} dimension with coordinates; "
                f"got dims {tuple(like.dims)} and coords {list(like.coords)}"
            )
        values = np.asarray(like[name].values, dtype=np.float64)
        if values.size < 2 or not np.all(np.isfinite(values)):
            raise ValueError(
                f"{what}[{name!r}] must hold at least 2 finite values, got {values[:6].tolist()}"
            )
        out.append(values)
    lat, lon = out
    if np.any(np.abs(lat) > 90):
        raise ValueError(
            f"{what}[{LATITUDE!r}] must lie in [-90, 90], got [{lat.min()}, {lat.max()}]"
        )
    return lat, lon


def _is_pixels(like) -> bool:
    """Whether `like` is a HEALPix field (its pixels along `values`, `climate.era5`)."""
    return isinstance(like, (xr.DataArray, xr.Dataset)) and spatial_dims(like) == (VALUES,)


def _pixel_lat_lon(like) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes and longitudes `(P,)` in degrees of the pixel centres of a HEALPix field."""
    out = []
    for name in (LATITUDE, LONGITUDE):
        if name not in like.coords or like[name].dims != (VALUES,):
            raise ValueError(
                f"a HEALPix field needs {name!r} coordinates along {VALUES!r} (its pixel "
                f"centres, as `climate.open_era5` and `climate.regrid.healpix_field` give them); "
                f"got coords {list(like.coords)}"
            )
        out.append(np.asarray(like[name].values, dtype=np.float64))
    return out[0], out[1]


def _node_lat_lon(like) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude `(N,)` in degrees of every node, in `to_signal` order.

    The cells of a lat-lon grid row by row (node `i_lat * nlon + j_lon`), or the pixels of a
    HEALPix field along `values`.
    """
    if _is_pixels(like):
        return _pixel_lat_lon(like)
    lat, lon = _grid(like)
    return np.repeat(lat, lon.size), np.tile(lon, lat.size)


def _node_geometry(like) -> tuple[torch.Tensor, np.ndarray]:
    """Unit vectors `(N, 3)` and areas `(N,)` of every node: the engines' own grid.

    The cell centres and areas of `SphereGrid` on a lat-lon grid; the pixel centres and their
    equal areas on HEALPix.
    """
    if _is_pixels(like):
        lat, lon = _pixel_lat_lon(like)
        return torch.from_numpy(_unit_vectors(lat, lon)), np.ones(lat.size)
    grid = SphereGrid(*_grid(like))
    return grid.positions, grid.mass.numpy()


def _result(values: np.ndarray, like, description: str, *, per_time: bool = False, **attrs):
    """A boolean DataArray "observed" on `like`'s grid (and times when `per_time`).

    `values` is `(N,)` or `(T, N)` in node order (or already of the grid's shape): the result has
    dims `(latitude, longitude)`, or `(values,)` on HEALPix with the pixel centres as
    coordinates, `time` first when `per_time`.
    """
    if _is_pixels(like):
        spatial, shape = (VALUES,), (like.sizes[VALUES],)
    else:
        spatial, shape = (LATITUDE, LONGITUDE), (like.sizes[LATITUDE], like.sizes[LONGITUDE])
    names = ((TIME,) if per_time else ()) + (LATITUDE, LONGITUDE)
    return xr.DataArray(
        np.asarray(values, dtype=bool).reshape(((-1,) if per_time else ()) + shape),
        dims=((TIME,) if per_time else ()) + spatial,
        coords={name: like.coords[name].variable.copy() for name in names},
        name=MASK_NAME,
        attrs={"description": description, **attrs},
    )


def _num_times(like, per_time: bool) -> int:
    """Number of masks to draw: `like`'s time steps when `per_time`, else 1."""
    if not per_time:
        return 1
    if TIME not in like.dims or TIME not in like.coords:
        raise ValueError(
            f"per_time=True needs like with a {TIME!r} dimension, got dims {tuple(like.dims)}"
        )
    return int(like.sizes[TIME])


def _unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """Unit vectors `(..., 3)` of points given in degrees (same shapes, broadcast)."""
    phi, lam = np.deg2rad(lat_deg), np.deg2rad(lon_deg)
    return np.stack(
        np.broadcast_arrays(np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)),
        axis=-1,
    )


def _lon_unwrapped(lon: np.ndarray) -> np.ndarray:
    """Longitudes made increasing across 360/180 (as `SphereGrid` reads them)."""
    step = np.diff(lon) % 360.0
    if np.any(step <= 0) or np.any(step >= 180):
        raise ValueError(
            f"like[{LONGITUDE!r}] must increase (crossing 360 or 180 is fine), "
            f"got {lon[:6].tolist()}..."
        )
    return lon[0] + np.concatenate([[0.0], np.cumsum(step)])


def _half_sizes(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest half-extent of each cell in latitude `(nlat,)` and longitude `(nlon,)`, degrees."""
    lat_b = cell_bounds(lat, -90.0, 90.0)
    lon_u = _lon_unwrapped(lon)
    lon_b = cell_bounds(lon_u)
    h_lat = np.maximum(np.abs(lat - lat_b[:-1]), np.abs(lat_b[1:] - lat))
    h_lon = np.maximum(np.abs(lon_u - lon_b[:-1]), np.abs(lon_b[1:] - lon_u))
    return h_lat, h_lon


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def missing_mask(da: xr.DataArray) -> xr.DataArray:
    """Observed where `da` has a value (not NaN); every dimension of `da` is kept.

    NaN means "missing". ±inf is not a gap but a broken value: it counts as observed here, so
    `climate.impute` refuses it (naming the variable, time and count) unless another mask hides
    it, e.g. `missing_mask(da) & np.isfinite(da)`.

    Lazy on dask-backed data: nothing is computed until the mask's values are asked for.

    Arguments:
        da: a field with `latitude` and `longitude` dimensions (any others, e.g. `time`, are kept).

    Returns:
        boolean DataArray "observed" with `da`'s dims and coords.
    """
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"da must be an xarray DataArray, got {type(da).__name__}")
    if VALUES not in da.dims and (LATITUDE not in da.dims or LONGITUDE not in da.dims):
        raise ValueError(
            f"da must have {LATITUDE!r} and {LONGITUDE!r} dimensions (or HEALPix {VALUES!r}), "
            f"got {tuple(da.dims)}"
        )
    out = da.notnull().rename(MASK_NAME)
    out.attrs = {"description": f"values present in {da.name or 'the field'}"}
    return out


def _random_draws(n: int, missing: float, seed: int, times: int) -> tuple[np.ndarray, str]:
    """Observed flags `(times, n)`, `round(missing * n)` hidden per row, and their description."""
    rng = np.random.default_rng(seed)
    values = np.stack(
        [
            random_observed(torch.from_numpy(rng.permutation(n)), missing).numpy()
            for _ in range(times)
        ]
    )
    return values, f"random {100 * missing:g} % missing, seed {seed}"


def random_mask(
    like, missing: float = 0.7, *, seed: int = 0, per_time: bool = False
) -> xr.DataArray:
    """Cells hidden independently at random: exactly `round(missing * N)` of the `N` per field.

    At least one cell stays observed (the count is capped at `N - 1`).

    Arguments:
        like: a DataArray or Dataset with `latitude`/`longitude` coordinates (degrees), or a
            HEALPix field (pixels along `values`, `climate.era5`).
        missing: fraction of cells hidden, in [0, 1).
        seed: seed of `numpy.random.default_rng`.
        per_time: draw one mask per time step of `like` (dims `(time, latitude, longitude)`).

    Returns:
        boolean DataArray "observed", `(latitude, longitude)` or `(time, latitude, longitude)`
        (`values` in place of both on HEALPix).
    """
    if not np.isscalar(missing) or not 0 <= float(missing) < 1:
        raise ValueError(f"missing must be a fraction in [0, 1), got {missing!r}")
    n = _node_lat_lon(like)[0].size
    values, description = _random_draws(n, float(missing), seed, _num_times(like, per_time))
    if per_time:
        description += ", one mask per time step"
    return _result(values if per_time else values[0], like, description, per_time=per_time)


def _read_stations(stations) -> tuple[np.ndarray, str]:
    """Station latitudes and longitudes `(K, 2)` in degrees, and a name for messages."""
    if isinstance(stations, (str, os.PathLike)):
        path = Path(stations)
        if not path.is_file():
            raise FileNotFoundError(f"station file not found: {path}")
        frame, source = pd.read_csv(path), f"station file {path}"
    elif isinstance(stations, pd.DataFrame):
        frame, source = stations, "the stations DataFrame"
    else:
        frame, source = None, "the stations array"
    if frame is not None:
        columns = {str(c).strip().lower(): c for c in frame.columns}
        picked = []
        for names in (("lat", "latitude"), ("lon", "longitude")):
            found = [columns[n] for n in names if n in columns]
            if not found:
                raise ValueError(
                    f"{source} needs a column {' or '.join(names)} (any case), "
                    f"got columns {list(frame.columns)}"
                )
            picked.append(found[0])
        points = frame[picked].to_numpy(dtype=np.float64)
    else:
        points = np.asarray(stations, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(
                f"stations must be a CSV path, a DataFrame or an array (K, 2) of (lat, lon), "
                f"got an array of shape {points.shape}"
            )
    if points.shape[0] == 0:
        raise ValueError(f"{source} holds no station")
    if not np.all(np.isfinite(points)) or np.any(np.abs(points[:, 0]) > 90):
        raise ValueError(f"{source}: latitudes must lie in [-90, 90] and coordinates be finite")
    return points, source


def station_mask(like, stations) -> xr.DataArray:
    """Observed at the grid cells nearest to stations (great-circle nearest); hidden elsewhere.

    A station farther from its nearest cell centre than that cell's half-diagonal (from the grid
    spacing) lies outside the grid and is dropped.

    Arguments:
        like: a DataArray or Dataset with `latitude`/`longitude` coordinates (degrees), or a
            HEALPix field (pixels along `values` with their centres as coordinates).
        stations: a CSV path with columns `lat`/`latitude` and `lon`/`longitude` (any case, other
            columns ignored), a DataFrame with such columns, or an array `(K, 2)` of
            (lat, lon) in degrees.

    Returns:
        boolean DataArray "observed" `(latitude, longitude)` (HEALPix: `(values,)`, each
        station at its nearest pixel centre, none dropped); `attrs["num_stations"]` is the
        number of stations used, `attrs["num_dropped"]` the number outside the grid.
    """
    points, source = _read_stations(stations)
    station_vecs = _unit_vectors(points[:, 0], points[:, 1])
    _, node = cKDTree(_node_geometry(like)[0].numpy()).query(station_vecs)  # the grid's nodes
    if _is_pixels(like):  # the whole sphere: every station has a nearest pixel centre
        values = np.zeros(like.sizes[VALUES], dtype=bool)
        values[node] = True
        used = int(np.unique(node).size)
        description = f"{len(points)} stations on {used} pixels"
        return _result(values, like, description, num_stations=len(points), num_dropped=0)
    lat, lon = _grid(like)
    i, j = np.divmod(node, lon.size)
    # Angle from each station to its cell centre vs from the centre to the farthest cell corner.
    h_lat, h_lon = _half_sizes(lat, lon)
    centre = _unit_vectors(lat[i], lon[j])
    corner_lat = np.clip(np.stack([lat[i] - h_lat[i], lat[i] + h_lat[i]]), -90.0, 90.0)
    corners = _unit_vectors(corner_lat, (lon[j] + h_lon[j])[None, :])
    cos_corner = np.einsum("ckx,kx->ck", corners, centre).min(axis=0)
    cos_station = np.einsum("kx,kx->k", station_vecs, centre)
    inside = cos_station >= cos_corner - 1e-12
    if not inside.any():
        raise ValueError(
            f"{source}: none of its {len(points)} stations lies inside the grid "
            f"(latitude {lat.min():g}..{lat.max():g}, longitude {lon[0]:g}..{lon[-1]:g})"
        )
    values = np.zeros(lat.size * lon.size, dtype=bool)
    values[node[inside]] = True
    used, dropped = int(inside.sum()), int((~inside).sum())
    description = f"{used} stations" + (f" ({dropped} outside the grid dropped)" if dropped else "")
    return _result(
        values.reshape(lat.size, lon.size),
        like,
        description,
        num_stations=used,
        num_dropped=dropped,
    )


def swath_mask(
    like,
    *,
    num_swaths: int = 2,
    width_km: float = 1000.0,
    seed: int = 0,
    per_time: bool = False,
) -> xr.DataArray:
    """Satellite swaths observed: bands of full width `width_km` around random great circles.

    Each great circle passes through a random grid cell (chosen with probability proportional to
    its area, so regional grids are crossed) with a uniformly random heading. A cell is observed
    when its angular distance to one of the great circles is at most half the width
    (`width_km / 2 / EARTH_RADIUS_KM` radians).

    Arguments:
        like: a DataArray or Dataset with `latitude`/`longitude` coordinates (degrees), or a
            HEALPix field (pixels along `values` with their centres as coordinates).
        num_swaths: great circles per mask (>= 1).
        width_km: full width of a swath in km, in (0, pi * EARTH_RADIUS_KM].
        seed: seed of `numpy.random.default_rng`.
        per_time: draw one mask per time step of `like` (dims `(time, latitude, longitude)`).

    Returns:
        boolean DataArray "observed", `(latitude, longitude)` or `(time, latitude, longitude)`
        (`values` in place of both on HEALPix).
    """
    if (
        isinstance(num_swaths, bool)
        or not isinstance(num_swaths, (int, np.integer))
        or num_swaths < 1
    ):
        raise ValueError(f"num_swaths must be an integer >= 1, got {num_swaths!r}")
    if not np.isscalar(width_km) or not 0 < float(width_km) <= np.pi * EARTH_RADIUS_KM:
        raise ValueError(
            f"width_km must lie in (0, {np.pi * EARTH_RADIUS_KM:.0f}] km, got {width_km!r}"
        )
    half = 0.5 * float(width_km) / EARTH_RADIUS_KM  # radians
    positions, area = _node_geometry(like)  # the nodes and areas of the grid the engines use
    prob = area / area.sum()
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(_num_times(like, per_time)):
        through = rng.choice(area.size, size=int(num_swaths), p=prob)
        heading = rng.uniform(0.0, 2 * np.pi, size=int(num_swaths))
        poles = [
            pole_through(positions[node], float(theta))
            for node, theta in zip(through, heading, strict=True)
        ]
        rows.append(great_circle_bands(positions, torch.stack(poles), half).numpy())
    values = np.stack(rows)
    description = f"{num_swaths} swath(s) of {float(width_km):g} km, seed {seed}"
    if per_time:
        description += ", drawn per time step"
    return _result(values if per_time else values[0], like, description, per_time=per_time)


def crop_region(da: xr.DataArray, *, lat, lon) -> xr.DataArray:
    """The part of a field inside a latitude-longitude box, longitudes eastwards from `west`.

    Same box conventions as `box_mask` (`lon=(-10, 2)` and `(350, 2)` are the same region; a box
    across 0/360 or the dateline keeps its cells in eastward order, which `SphereGrid` accepts).

    Raises:
        ValueError: the box contains no row or no column of the grid.
    """
    grid_lat, grid_lon = _grid(da)
    in_lat, in_lon, offset = lat_lon_box(grid_lat, grid_lon, lat, lon)
    rows, cols = np.flatnonzero(in_lat), np.flatnonzero(in_lon)
    if rows.size == 0 or cols.size == 0:
        raise ValueError(
            f"the region lat {lat}, lon {lon} contains no cell of the grid "
            f"({_describe_grid(grid_lat, grid_lon)})"
        )
    cols = cols[np.argsort(offset[cols], kind="stable")]
    return da.isel({LATITUDE: rows, LONGITUDE: cols})


def box_mask(like, *, lat, lon, hide: bool = True) -> xr.DataArray:
    """A latitude-longitude box hidden (default) or, with `hide=False`, the only part observed.

    Longitudes are compared modulo 360, so `lon=(-10, 2)` and `lon=(350, 2)` give the same box on
    any grid convention; a box runs eastwards from `west` to `east` (west > east crosses 0/360,
    e.g. `(350, 2)`, or the dateline, e.g. `(170, -170)`). Edges are inclusive.

    Arguments:
        like: a DataArray or Dataset with `latitude`/`longitude` coordinates (degrees), or a
            HEALPix field (pixels along `values` with their centres as coordinates).
        lat: `(south, north)` in degrees, -90 <= south <= north <= 90.
        lon: `(west, east)` in degrees; `east - west >= 360` covers every longitude.
        hide: True hides the box (observed outside); False observes only the box.

    Returns:
        boolean DataArray "observed" `(latitude, longitude)` (HEALPix: `(values,)`).
    """
    in_lat, in_lon, _ = lat_lon_box(*_node_lat_lon(like), lat, lon)
    (south, north), (west, east) = map(float, lat), map(float, lon)
    inside = in_lat & in_lon
    what = "hidden" if hide else "observed only"
    description = f"box lat {south:g}..{north:g}, lon {west:g}..{east:g} {what}"
    return _result(~inside if hide else inside, like, description)


@functools.lru_cache(maxsize=4)
def _land_geometry(path: str):
    """Union of the land polygons of a Natural Earth shapefile, prepared for point queries."""
    import shapely
    from cartopy.io import shapereader

    geometry = shapely.union_all(list(shapereader.Reader(path).geometries()))
    shapely.prepare(geometry)
    return geometry


def _land(like) -> np.ndarray:
    """Land cells `(nlat, nlon)` of `like`'s grid from the Natural Earth 1:110m land polygons."""
    import cartopy
    import shapely

    from climate.plot import configure_cartopy_offline

    lat, lon = _node_lat_lon(like)
    configure_cartopy_offline()
    folder = cartopy.config["pre_existing_data_dir"]
    path = Path(folder) / LAND_SHAPEFILE
    if not path.is_file():
        raise FileNotFoundError(
            f"Natural Earth land polygons not found: {path}; set CARTOPY_DATA_DIR to a folder "
            f"with Natural Earth shapefiles holding {LAND_SHAPEFILE.as_posix()} "
            "(e.g. ../shared/data/natural_earth)"
        )
    geometry = _land_geometry(str(path.resolve()))
    # Points on a polygon edge count as land (the dateline cut, the south pole row).
    return shapely.intersects_xy(geometry, np.mod(lon + 180.0, 360.0) - 180.0, lat)


def land_mask(like) -> xr.DataArray:
    """Observed over land only (cell centres inside Natural Earth 1:110m land), hidden over sea.

    The shapefile is read offline: `climate.plot.configure_cartopy_offline()` picks the folder
    (`$CARTOPY_DATA_DIR`), which must hold
    `shapefiles/natural_earth/physical/ne_110m_land.shp`.

    Arguments:
        like: a DataArray or Dataset with `latitude`/`longitude` coordinates (degrees), or a
            HEALPix field (pixels along `values` with their centres as coordinates).

    Returns:
        boolean DataArray "observed" `(latitude, longitude)` (HEALPix: `(values,)`).

    Raises:
        FileNotFoundError: the land shapefile is not in the configured folder.
    """
    return _result(_land(like), like, "land observed (Natural Earth 1:110m)")


def sea_mask(like) -> xr.DataArray:
    """Observed over sea only: the complement of `land_mask` (same shapefile, same rules)."""
    return _result(~_land(like), like, "sea observed (Natural Earth 1:110m)")


# ----------------------------------------------------------------------------------------------
# Operator
# ----------------------------------------------------------------------------------------------


def _describe_grid(lat: np.ndarray, lon: np.ndarray) -> str:
    return (
        f"latitude ({lat.size},) {lat[0]:g}..{lat[-1]:g}, "
        f"longitude ({lon.size},) {lon[0]:g}..{lon[-1]:g}"
    )


def align_mask(observed: xr.DataArray, like, *, name: str = "observed") -> xr.DataArray:
    """A boolean mask checked against the grid and times of `like` and aligned to them.

    The one place where masks are validated: `mask_operator` (which then takes the values) and
    `climate.impute` (which keeps dask-backed masks lazy) both use it.

    Arguments:
        observed: boolean DataArray with dims `latitude`, `longitude` and optionally `time`, on
            the grid of `like` (True = observed); a time-varying mask may have more time steps
            than `like`, in any order.
        like: the field(s) the mask is for (DataArray or Dataset).
        name: what to call the mask in error messages.

    Returns:
        the mask with dims `(time, latitude, longitude)` when both vary in time (`like`'s time
        steps, in its order), `(latitude, longitude)` otherwise, carrying `like`'s coordinates;
        lazy where `observed` is.

    Raises:
        TypeError: `observed` is not a DataArray.
        ValueError: the mask is not boolean, has other dims, is on another grid, or lacks a time
            step of `like`.
    """
    if not isinstance(observed, xr.DataArray):
        raise TypeError(f"{name} must be an xarray DataArray, got {type(observed).__name__}")
    if observed.dtype != bool:
        raise ValueError(
            f"{name} must be a boolean mask (True = observed), got dtype {observed.dtype}; "
            "use e.g. `da.notnull()` or `missing_mask(da)`"
        )
    spatial = spatial_dims(like)  # (latitude, longitude), or HEALPix (values,)
    extra = [d for d in observed.dims if d not in (TIME, *spatial)]
    if extra or any(d not in observed.dims for d in spatial):
        where = ", ".join(spatial)
        raise ValueError(
            f"{name} must have dims ({where}) or (time, {where}), "
            f"got {tuple(observed.dims)}" + (f" (extra dims {extra})" if extra else "")
        )
    if spatial == (VALUES,):  # the pixels of one HEALPix grid: as many, in the same order
        if observed.sizes[VALUES] != like.sizes[VALUES]:
            raise ValueError(
                f"the mask is on another grid: mask {observed.sizes[VALUES]} {VALUES}, "
                f"like {like.sizes[VALUES]}"
            )
    else:
        lat, lon = _grid(like)
        m_lat, m_lon = _grid(observed, name)
        same = (
            m_lat.shape == lat.shape
            and m_lon.shape == lon.shape
            and np.allclose(m_lat, lat, atol=1e-6)
            and np.allclose(m_lon, lon, atol=1e-6)
        )
        if not same:
            raise ValueError(
                f"the mask is on another grid: mask {_describe_grid(m_lat, m_lon)}, "
                f"like {_describe_grid(lat, lon)}"
            )
    out = observed
    if TIME in observed.dims:
        if TIME in like.dims:
            like_times = like.indexes.get(TIME)
        elif TIME in like.coords and like[TIME].ndim == 0:
            like_times = pd.Index([like[TIME].values])
        else:
            raise ValueError(
                f"{name} varies in time ({observed.sizes[TIME]} steps) but like has no "
                f"{TIME!r} coordinate; select a time step of the mask or pass like with times"
            )
        if TIME not in observed.indexes:
            raise ValueError(f"{name} has a {TIME!r} dimension without coordinates")
        if not like_times.is_unique:  # checked first: a mask made from the input repeats them too
            repeated = [str(t) for t in like_times[like_times.duplicated()].unique()[:3]]
            raise ValueError(
                f"the input has repeated {TIME!r} values: {repeated}; drop the duplicates first, "
                f"e.g. da.drop_duplicates({TIME!r})"
            )
        mask_times = observed.indexes[TIME]
        if not mask_times.is_unique:
            raise ValueError(f"{name} has repeated {TIME!r} values")
        where = mask_times.get_indexer(like_times)
        if np.any(where < 0):
            absent = [str(t) for t in like_times[where < 0][:3]]
            raise ValueError(
                f"{name} has no mask for {int((where < 0).sum())} time step(s) of like, "
                f"e.g. {absent}; mask times run {mask_times[0]}..{mask_times[-1]}"
            )
        if TIME in like.dims:
            out = observed.isel({TIME: where}).assign_coords({TIME: like[TIME]})
        else:
            out = observed.isel({TIME: int(where[0])})
    dims = (TIME, *spatial) if TIME in out.dims else spatial
    return out.transpose(*dims).assign_coords(
        {LATITUDE: like[LATITUDE], LONGITUDE: like[LONGITUDE]}
    )


def mask_operator(observed: xr.DataArray, like, *, domain: Domain | None = None) -> Mask:
    """The `Mask` operator of a boolean mask for the fields of `like`.

    The mask has shape `(B, N, 1)` with `B` the number of time steps of `like` (1 without a time
    dimension) and `N = nlat * nlon` in the order of `climate.era5.to_signal` (node
    `i_lat * nlon + j_lon`, in `like`'s own latitude/longitude order), or `N` the pixels of a
    HEALPix field along `values`, in its order. A static mask is repeated
    over time; a time-varying one is matched to `like[time]` (its time steps may be a superset,
    in any order).

    Arguments:
        observed: boolean DataArray with dims `latitude`, `longitude` (HEALPix: `values`) and
            optionally `time`, on the grid of `like` (True = observed).
        like: the field(s) the operator applies to (DataArray or Dataset).
        domain: a domain to reuse (e.g. one already built with `grid_domain(like)`); it must have
            `N` nodes. Default `grid_domain(like)`.

    Returns:
        `manifold_aps.operators.Mask` on the domain, mask `(B, N, 1)` bool.

    Raises:
        ValueError: the mask is not boolean, has other dims, is on another grid, lacks a time of
            `like`, observes nothing at some time, or `domain` does not fit (see `align_mask`).
    """
    aligned = align_mask(observed, like)
    shape = (
        (like.sizes[VALUES],)
        if _is_pixels(like)
        else tuple(a.size for a in _grid(like))  # (nlat, nlon)
    )
    n = int(np.prod(shape))
    b = int(like.sizes[TIME]) if TIME in like.dims else 1
    values = np.asarray(aligned.values, dtype=bool).reshape(-1, n)
    values = np.repeat(values, b, axis=0) if values.shape[0] == 1 else values
    times = None
    if TIME in observed.dims:
        times = [str(t) for t in (like.indexes[TIME] if TIME in like.dims else [like[TIME].values])]

    empty = np.flatnonzero(~values.any(axis=1))
    if empty.size:
        when = f"at time {times[empty[0]]}" if times is not None else "(static mask)"
        raise ValueError(
            f"the mask observes nothing {when}"
            + (f" and {empty.size - 1} other time step(s)" if empty.size > 1 else "")
        )

    if domain is None:
        domain = grid_domain(like)
    elif domain.num_nodes != n or (len(shape) == 2 and getattr(domain, "shape", shape) != shape):
        raise ValueError(
            f"domain does not fit the grid: it has {domain.num_nodes} nodes"
            + (f" (shape {domain.shape})" if hasattr(domain, "shape") else "")
            + f", the grid has {n} ({' x '.join(map(str, shape))})"
        )
    mask = torch.from_numpy(np.ascontiguousarray(values))[:, :, None]
    return Mask(domain, mask)


MASK_SPECS = (
    "nan | random:FRACTION | stations:FILE | swath:COUNT:WIDTH_KM | box:S:N:W:E | land | sea"
)


def parse_mask_spec(spec: str, like: xr.DataArray, *, seed: int = 0) -> xr.DataArray:
    """A mask from a command-line spec (what `manifold-aps impute --mask` takes).

    `nan` (observed where `like` has values), `random:0.7` (70 % hidden, one draw per time
    step), `stations:FILE.csv`, `swath:2:1000` (2 swaths 1000 km wide observed, per time step),
    `box:S:N:W:E` (the box hidden), `land`, `sea` (only land / sea observed). Random and swath
    masks vary in time when `like` has a time dimension.

    Raises:
        ValueError: an unknown kind or malformed arguments (the message shows the accepted forms).
    """
    kind, _, rest = spec.partition(":")
    args = rest.split(":") if rest else []
    per_time = TIME in getattr(like, "dims", ())

    def numbers(count: int) -> list[float]:
        if len(args) != count:
            raise ValueError(
                f"mask spec {spec!r}: {kind} takes {count} number(s); accepted: {MASK_SPECS}"
            )
        try:
            return [float(a) for a in args]
        except ValueError as err:
            raise ValueError(
                f"mask spec {spec!r}: {args} are not numbers; accepted: {MASK_SPECS}"
            ) from err

    if kind == "nan" and not args:
        return missing_mask(like)
    if kind == "random":
        (frac,) = numbers(1)
        return random_mask(like, frac, seed=seed, per_time=per_time)
    if kind == "stations" and rest:
        return station_mask(like, rest)
    if kind == "swath":
        count, width = numbers(2)
        if count != int(count):
            raise ValueError(f"mask spec {spec!r}: the swath count must be an integer")
        return swath_mask(like, num_swaths=int(count), width_km=width, seed=seed, per_time=per_time)
    if kind == "box":
        south, north, west, east = numbers(4)
        return box_mask(like, lat=(south, north), lon=(west, east))
    if kind in ("land", "sea") and not args:
        return land_mask(like) if kind == "land" else sea_mask(like)
    raise ValueError(f"unknown mask spec {spec!r}; accepted: {MASK_SPECS}")
