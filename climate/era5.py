"""Open ERA5 files with xarray; convert fields to and from `(B, N, C)` signals on their domain.

A field is on a latitude-longitude grid (dimensions `latitude`, `longitude`: a `SphereGrid`) or
on HEALPix pixels (one dimension `values`, with `latitude`/`longitude` coordinates along it and
the attributes `healpix_nside` and `healpix_ordering` "ring" or "nested": a `HealpixSphere`).
`open_era5` gives a HEALPix-gridded GRIB field (``gridType = healpix``) those attributes from the
keys `Nside` and `orderingConvention` of its first message, which cfgrib does not keep.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from climate.schema import ALIASES, LATITUDE, LONGITUDE, SAMPLE, TIME, VALUES
from manifold_aps.geometry import HealpixSphere, SphereGrid

__all__ = [
    "HEALPIX_NSIDE",
    "HEALPIX_ORDERING",
    "NETCDF_ENGINE",
    "FieldLayout",
    "from_signal",
    "grid_domain",
    "open_era5",
    "spatial_dims",
    "to_signal",
]

HEALPIX_NSIDE = "healpix_nside"  # attribute of a HEALPix field: its nside
HEALPIX_ORDERING = "healpix_ordering"  # and its pixel ordering, "ring" or "nested"

NETCDF_ENGINE = "h5netcdf"  # engine for writing netCDF-4 (see `_engine` for why not netCDF4)


def _engine(path: str) -> str:
    """The xarray engine for a file, from its suffix and its first bytes.

    netCDF-4 (HDF5) files are read with h5netcdf and classic netCDF-3 files with scipy, never
    with the netCDF4 library: its wheel bundles a libcurl that clashes with pyproj's and makes
    the interpreter abort at exit once cartopy has been used ("double free or corruption").
    """
    suffix = Path(path.rstrip("/")).suffix.lower()
    if suffix in (".grib", ".grb", ".grib2", ".grb2"):
        return "cfgrib"
    if suffix == ".zarr" or os.path.isdir(path):
        return "zarr"
    with open(path, "rb") as fh:
        magic = fh.read(8)
    if magic.startswith(b"\x89HDF"):
        return "h5netcdf"
    if magic.startswith(b"CDF"):
        return "scipy"
    if magic.startswith(b"GRIB"):
        return "cfgrib"
    raise ValueError(f"{path}: not a netCDF, GRIB or zarr file (first bytes {magic[:4]!r})")


def _expand(paths) -> list[str]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[str] = []
    for item in items:
        item = os.fspath(item)
        matches = sorted(glob.glob(item)) if any(ch in item for ch in "*?[") else [item]
        if not matches:
            raise FileNotFoundError(f"no file matches {item!r}")
        for m in matches:
            if not os.path.exists(m):
                raise FileNotFoundError(f"ERA5 file not found: {m}")
        out.extend(matches)
    return out


def normalise(ds: xr.Dataset) -> xr.Dataset:
    """Rename ERA5's coordinate variants to `climate.schema` names and drop GRIB leftovers.

    `valid_time` becomes `time` when it is the time dimension (CDS netCDF since 2024); a scalar
    `time` beside a `valid_time` dimension is dropped first.
    """
    if "valid_time" in ds.dims and TIME in ds.coords and TIME not in ds.dims:
        ds = ds.drop_vars(TIME)
    renames = {k: v for k, v in ALIASES.items() if k in ds.variables and v not in ds.variables}
    ds = ds.rename(renames)
    healpix = VALUES in ds.dims and all(
        name in ds.coords and ds[name].dims == (VALUES,) for name in (LATITUDE, LONGITUDE)
    )
    if not healpix and (LATITUDE not in ds.dims or LONGITUDE not in ds.dims):
        raise ValueError(
            f"expected latitude/longitude dimensions (or lat/lon), or HEALPix {VALUES!r} with "
            f"latitude/longitude coordinates, got dimensions {list(ds.dims)}"
        )
    return ds


def _grib_healpix(path: str) -> tuple[int, str] | None:
    """`(Nside, orderingConvention)` of a GRIB file whose first message is HEALPix, else None."""
    import eccodes

    with open(path, "rb") as fh:
        handle = eccodes.codes_grib_new_from_file(fh)
        if handle is None:
            return None
        try:
            if eccodes.codes_get(handle, "gridType") != "healpix":
                return None
            return int(eccodes.codes_get(handle, "Nside")), str(
                eccodes.codes_get(handle, "orderingConvention")
            )
        finally:
            eccodes.codes_release(handle)


def _mark_healpix(ds: xr.Dataset, files: list[str]) -> xr.Dataset:
    """Give the HEALPix variables of GRIB `files` their nside and ordering (`HEALPIX_NSIDE`, ...).

    Raises:
        ValueError: files of other HEALPix grids, a ring/nested ordering eccodes does not name, or
            latitude/longitude coordinates that are not the pixel centres of that grid.
    """
    import healpy as hp

    grids = {_grib_healpix(f) for f in files}
    if grids == {None}:
        return ds
    if len(grids) > 1:
        raise ValueError(
            f"the GRIB files {files} are on different grids: {sorted(map(str, grids))}"
        )
    nside, ordering = grids.pop()
    if ordering not in ("ring", "nested"):
        raise ValueError(
            f"{files[0]}: HEALPix orderingConvention {ordering!r}; expected 'ring' or 'nested'"
        )
    theta, phi = hp.pix2ang(nside, np.arange(hp.nside2npix(nside)), nest=ordering == "nested")
    lat, lon = ds[LATITUDE].values, ds[LONGITUDE].values
    if lat.shape != theta.shape or not (
        np.allclose(lat, 90 - np.degrees(theta), atol=1e-6)
        and np.allclose((lon - np.degrees(phi) + 180) % 360 - 180, 0, atol=1e-6)
    ):
        raise ValueError(
            f"{files[0]}: the latitudes/longitudes of its {lat.size} values are not the pixel "
            f"centres of HEALPix nside {nside} ({ordering})"
        )
    marks = {HEALPIX_NSIDE: nside, HEALPIX_ORDERING: ordering}
    for name, var in ds.data_vars.items():
        if VALUES in var.dims:
            ds[name].attrs.update(marks)
    return ds


def spatial_dims(obj: xr.Dataset | xr.DataArray) -> tuple[str, ...]:
    """The spatial dimensions of a field: `(latitude, longitude)`, or `(values,)` on HEALPix."""
    return (VALUES,) if VALUES in obj.dims else (LATITUDE, LONGITUDE)


_NO_MESSAGE = "it holds no GRIB message"


def _grib_damage(path: str) -> str | None:
    """What is wrong with a GRIB file's framing, or None when it is a clean run of messages.

    Walks the messages with eccodes (headers only): each must start where the previous one ended,
    after nothing but zero padding, and the file must end after the last one (zero padding
    again). A truncated copy, a message whose header was overwritten or garbage between
    messages all break that; cfgrib alone would drop such messages, often without a word.
    """
    import eccodes

    size, end, count = os.path.getsize(path), 0, 0
    with open(path, "rb") as fh, open(path, "rb") as raw:

        def padding(start: int, stop: int) -> bool:
            raw.seek(start)
            return not raw.read(stop - start).strip(b"\0")

        while True:
            try:
                handle = eccodes.codes_new_from_file(
                    fh, eccodes.CODES_PRODUCT_GRIB, headers_only=True
                )
            except eccodes.GribInternalError as err:
                return (
                    f"message {count + 1} (from byte {end} of {size}) is cut short or unreadable "
                    f"({err})"
                )
            if handle is None:
                break
            try:
                offset = int(eccodes.codes_get_message_offset(handle))
                length = int(eccodes.codes_get_message_size(handle))
            finally:
                eccodes.codes_release(handle)
            if not padding(end, offset):
                return (
                    f"{offset - end} bytes that are no GRIB message lie before message {count + 1} "
                    f"(byte {end})"
                )
            end, count = offset + length, count + 1
        if count == 0:
            return _NO_MESSAGE
        if not padding(end, size):
            return (
                f"{size - end} bytes that are no GRIB message follow the last complete message "
                f"({count})"
            )
    return None


class _SkippedMessages(logging.Handler):
    """Counts cfgrib's "skipping corrupted Message" log records (and keeps them off stderr)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "corrupted" in record.getMessage():
            self.count += 1


@contextlib.contextmanager
def _count_skipped_messages():
    """Within the block, count (and silence) the messages cfgrib skips as corrupted."""
    handler, logger = _SkippedMessages(), logging.getLogger("cfgrib")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _check_grib(files: list[str], allow_corrupt: bool) -> list[str]:
    """Refuse (or, with `allow_corrupt`, warn about and return) GRIB files with damaged messages."""
    damaged = []
    for f in files:
        damage = _grib_damage(f)
        if damage is None:
            continue
        if damage == _NO_MESSAGE:
            raise ValueError(f"{f}: corrupted GRIB file: {damage}")
        if not allow_corrupt:
            raise ValueError(
                f"{f}: corrupted GRIB file: {damage}; re-download it, or pass allow_corrupt=True "
                "(manifold-aps impute --skip-corrupt-grib) to read only its readable messages"
            )
        warnings.warn(f"skipped corrupted GRIB data in {f}: {damage}", RuntimeWarning, stacklevel=3)
        damaged.append(f)
    return damaged


def _open(files: list[str], chunks, kwargs: dict) -> xr.Dataset:
    if len(files) == 1:
        return xr.open_dataset(files[0], chunks=chunks, **kwargs)
    return xr.open_mfdataset(files, chunks=chunks or {}, combine="by_coords", **kwargs)


def decode_calendar_months(ds: xr.Dataset, error: Exception) -> xr.Dataset:
    """Decode times in whole `months since` / `years since` a date as calendar months.

    Classic reanalysis files have such times, which neither pandas nor cftime decode in the
    standard calendar (CF's month is udunits' 30.44 days; cftime takes months only in the 360-day
    calendar). They become calendar months after the reference, with a `UserWarning` that says so;
    every other time coordinate is decoded by xarray as usual.

    Raises:
        ValueError: `error` (xarray's own) when a time is not a whole number of months or years, or
            its units are of another kind.
    """
    import pandas as pd

    decoded = {}
    for name, var in ds.variables.items():
        units = str(var.attrs.get("units", ""))
        match = re.fullmatch(r"\s*(months|years)\s+since\s+(.+?)\s*", units)
        if match is None:
            continue
        values = np.asarray(var.values, dtype=np.float64)
        if not np.all(np.isfinite(values)) or not np.allclose(values, np.round(values)):
            raise ValueError(
                f"{error} (and {name!r} holds fractional {match[1]}, which have no calendar "
                "meaning)"
            ) from error
        step = 12 if match[1] == "years" else 1
        start = pd.Timestamp(match[2])
        decoded[name] = xr.Variable(
            var.dims,
            np.array(
                [
                    start + pd.DateOffset(months=int(k) * step)
                    for k in np.round(values).astype(int).ravel()
                ],
                dtype="datetime64[ns]",
            ).reshape(values.shape),
            {k: v for k, v in var.attrs.items() if k not in ("units", "calendar")},
        )
        warnings.warn(
            f"decoded {name!r} ({units!r}) as calendar {match[1]} after {match[2]}: pandas and "
            "cftime cannot decode it in the standard calendar",
            UserWarning,
            stacklevel=3,
        )
    if not decoded:
        raise error
    ds = ds.assign_coords({k: v for k, v in decoded.items() if k in ds.coords or k in ds.dims})
    return xr.decode_cf(ds)  # the other variables' times, fill values and scales as usual


def open_era5(paths, variables=None, *, chunks=None, allow_corrupt: bool = False) -> xr.Dataset:
    """Open one or many ERA5 files (netCDF, GRIB via cfgrib, zarr) as one normalised Dataset.

    Arguments:
        paths: a path, a glob pattern or a list of them.
        variables: names to keep (default all data variables).
        chunks: dask chunks (e.g. `{"time": 24}`) for lazy loading; None loads eagerly on access.
        allow_corrupt: read a GRIB file with truncated or damaged messages anyway, without those
            messages (with a `RuntimeWarning`); by default such a file is refused.

    Returns:
        a Dataset with `latitude`, `longitude` (and `time`, `level`, `number` when present), units
        and attributes as in the files.

    Raises:
        FileNotFoundError: a path matches no file.
        KeyError: a requested variable is not in the files.
        ValueError: a GRIB file with corrupted messages (unless `allow_corrupt`); mixed formats.
    """
    files = _expand(paths)
    engines = {_engine(f) for f in files}
    if len(engines) > 1:
        raise ValueError(f"cannot mix file formats in one call: {files}")
    engine = engines.pop()
    kwargs: dict = {"engine": engine}
    damaged = []
    if engine == "cfgrib":
        kwargs["backend_kwargs"] = {"indexpath": ""}  # no .idx files beside read-only data
        damaged = _check_grib(files, allow_corrupt)
    with _count_skipped_messages() as skipped:  # what cfgrib drops that the framing check missed
        try:
            ds = _open(files, chunks, kwargs)
        except ValueError as err:
            if "unable to decode time units" not in str(err):
                raise
            ds = decode_calendar_months(
                _open(files, chunks, {**kwargs, "decode_times": False}), err
            )
    if skipped.count and not damaged:  # (damaged files were refused or warned about above)
        where = files[0] if len(files) == 1 else f"one of {files}"
        if not allow_corrupt:
            ds.close()
            raise ValueError(
                f"{where}: corrupted GRIB file: cfgrib skipped {skipped.count} unreadable "
                "message(s); re-download it, or pass allow_corrupt=True "
                "(manifold-aps impute --skip-corrupt-grib)"
            )
        warnings.warn(
            f"skipped corrupted GRIB data in {where}: {skipped.count} unreadable message(s)",
            RuntimeWarning,
            stacklevel=2,
        )
    ds = normalise(ds)
    if engine == "cfgrib":
        ds = _mark_healpix(ds, files)
    if variables is not None:
        variables = [variables] if isinstance(variables, str) else list(variables)
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise KeyError(f"variable(s) {missing} not in {files}; available: {list(ds.data_vars)}")
        ds = ds[variables]
    return ds


def grid_domain(obj: xr.Dataset | xr.DataArray) -> SphereGrid | HealpixSphere:
    """The domain of a field: a `SphereGrid`, or a `HealpixSphere` along `values`.

    The `SphereGrid` is that of the field's `latitude`/`longitude` coordinates (degrees); a
    HEALPix field's is that of its `healpix_nside` and `healpix_ordering` attributes (a Dataset:
    those of its variables).

    Raises:
        ValueError: no latitude/longitude coordinates; a HEALPix field without its nside and
            ordering, or of another pixel count.
    """
    if VALUES in obj.dims:
        return _healpix_domain(obj)
    for name in (LATITUDE, LONGITUDE):
        if name not in obj.coords:
            raise ValueError(
                f"the field has no {name!r} coordinate; coordinates: {list(obj.coords)}"
            )
    return SphereGrid(obj[LATITUDE].values, obj[LONGITUDE].values)


def _healpix_domain(obj: xr.Dataset | xr.DataArray) -> HealpixSphere:
    """The `HealpixSphere` of a field along `values`, from its `HEALPIX_*` attributes."""
    holders = [obj] if isinstance(obj, xr.DataArray) else [obj, *obj.data_vars.values()]
    marks = {
        (a.attrs[HEALPIX_NSIDE], a.attrs.get(HEALPIX_ORDERING))
        for a in holders
        if HEALPIX_NSIDE in a.attrs
    }
    if len(marks) != 1:
        raise ValueError(
            f"a field along {VALUES!r} needs the attributes {HEALPIX_NSIDE!r} and "
            f"{HEALPIX_ORDERING!r} (ring or nested) to be read as HEALPix"
            + (f"; found several grids {sorted(map(str, marks))}" if marks else "")
        )
    nside, ordering = marks.pop()
    if ordering not in ("ring", "nested"):
        raise ValueError(f"{HEALPIX_ORDERING} must be 'ring' or 'nested', got {ordering!r}")
    domain = HealpixSphere(int(nside), nest=ordering == "nested")
    if obj.sizes[VALUES] != domain.num_nodes:
        raise ValueError(
            f"HEALPix nside {int(nside)} has {domain.num_nodes} pixels, the field "
            f"{obj.sizes[VALUES]} {VALUES}"
        )
    return domain


@dataclass(frozen=True)
class FieldLayout:
    """How a DataArray was flattened into `(B, N, C)`; `from_signal` uses it to rebuild it.

    Attributes:
        batch_dims: dimensions stacked into `B`, in order.
        channel_dim: the dimension used as `C`, or None (then `C = 1`).
        sizes: size of every dimension of the original DataArray.
        coords: its coordinates (no data is kept).
        name: its name.
        attrs: its attributes.
        spatial_dims: the dimensions flattened into `N` (`spatial_dims`).
    """

    batch_dims: tuple[str, ...]
    channel_dim: str | None
    sizes: dict
    coords: dict
    name: str | None
    attrs: dict
    spatial_dims: tuple[str, ...] = (LATITUDE, LONGITUDE)

    @property
    def shape(self) -> tuple[int, int, int]:
        """`(B, N, C)`."""
        b = int(np.prod([self.sizes[d] for d in self.batch_dims])) if self.batch_dims else 1
        c = self.sizes[self.channel_dim] if self.channel_dim else 1
        return b, int(np.prod([self.sizes[d] for d in self.spatial_dims])), c


def to_signal(
    da: xr.DataArray, *, channel_dim: str | None = None, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, FieldLayout]:
    """Flatten a field `(..., latitude, longitude)` or `(..., values)` into a signal `(B, N, C)`.

    `N = nlat * nlon` in the DataArray's own latitude/longitude order (node `i * nlon + j`, as in
    `SphereGrid`), or the HEALPix pixels in the file's order (`grid_domain`'s ordering); every
    other dimension except `channel_dim` is stacked into `B`, in the DataArray's order. NaN stays
    NaN.

    Returns:
        the signal and the `FieldLayout` that `from_signal` needs to invert it exactly.
    """
    if not isinstance(da, xr.DataArray):
        raise TypeError(f"expected an xarray.DataArray, got {type(da).__name__}")
    spatial = spatial_dims(da)
    if any(d not in da.dims for d in spatial):
        raise ValueError(
            f"{da.name!r} needs latitude and longitude dimensions (or HEALPix {VALUES!r}), "
            f"got {da.dims}"
        )
    if channel_dim is not None and channel_dim not in da.dims:
        raise ValueError(
            f"channel_dim {channel_dim!r} is not a dimension of {da.name!r}: {da.dims}"
        )
    batch_dims = tuple(d for d in da.dims if d not in (*spatial, channel_dim))
    order = batch_dims + ((channel_dim,) if channel_dim else ()) + spatial
    layout = FieldLayout(
        batch_dims=batch_dims,
        channel_dim=channel_dim,
        sizes=dict(da.sizes),
        coords={k: v.variable.copy() for k, v in da.coords.items()},
        name=da.name,
        attrs=dict(da.attrs),
        spatial_dims=spatial,
    )
    b, n, c = layout.shape
    arr = np.asarray(da.transpose(*order).values).reshape(b, c, n).transpose(0, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(arr)).to(dtype), layout


def from_signal(
    signal: torch.Tensor, layout: FieldLayout, *, name: str | None = None, attrs: dict | None = None
) -> xr.DataArray:
    """Rebuild a DataArray from a signal `(B, N, C)`, or `(S, B, N, C)` with a leading `sample` dim.

    The dimension order is `([sample,] *batch_dims, [channel_dim,] latitude, longitude)` (or
    `values` last for a HEALPix field); the coordinates are those of the original field.
    """
    b, n, c = layout.shape
    arr = signal.detach().cpu().numpy()
    if arr.shape[-3:] != (b, n, c) or arr.ndim not in (3, 4):
        raise ValueError(f"signal must have shape ([S,] {b}, {n}, {c}), got {tuple(arr.shape)}")
    lead = (SAMPLE,) if arr.ndim == 4 else ()
    arr = np.swapaxes(arr, -1, -2)  # (..., B, C, N)
    channel = (layout.channel_dim,) if layout.channel_dim else ()
    shape = [layout.sizes[d] for d in layout.batch_dims + channel + layout.spatial_dims]
    arr = arr.reshape(*arr.shape[: len(lead)], *shape)
    dims = lead + layout.batch_dims + channel + layout.spatial_dims
    return xr.DataArray(
        arr,
        dims=dims,
        coords=layout.coords,
        name=name if name is not None else layout.name,
        attrs=dict(layout.attrs if attrs is None else attrs),
    )
