"""`manifold-aps impute`: read, select, mask, fit or load a model, impute, score, write, map."""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from climate.era5 import _expand as input_files
from climate.era5 import open_era5, spatial_dims
from climate.impute import OBSERVED, _same_units, impute, write_imputation
from climate.masks import _describe_grid, align_mask, crop_region, missing_mask, parse_mask_spec
from climate.model import VARIANCE_SCALES, GaussianImputer, ImputationModel, load_model
from climate.plot import ATTRIBUTION_ATTRS, plot_imputation
from climate.regrid import healpix_cell_index, healpix_field, healpix_to_cells, parse_grid
from climate.schema import LATITUDE, LONGITUDE, TIME
from climate.scores import imputation_scores
from manifold_aps.posterior.engines import ENGINES, ZERO_SHOT_ENGINES
from manifold_aps.training import read_weights_file

__all__ = [
    "DEFAULT_NOISE_STD",
    "OUTPUT_GRIDS",
    "ImputeRequest",
    "Period",
    "channel_fields",
    "coarsen_grid",
    "parse_channels_from",
    "parse_period",
    "run_impute",
    "upsample_blocks",
]

DEFAULT_NOISE_STD = (
    0.1  # observation error std (variable units) when neither --noise-std nor a model gives one
)
OUTPUT_GRIDS = ("coarse", "native")  # --output-grid: the --coarsen grid, or the input's


@dataclass(frozen=True, kw_only=True)
class ImputeRequest:
    """Everything `manifold-aps impute` was asked (see its `--help` for each field).

    Attributes:
        input: file, glob or zarr store.
        skip_corrupt_grib: read GRIB files with corrupted messages without them (else refused).
        variable: variable name, or several (a tuple): imputed jointly as the channels of a
            dps/daps/aps/implicit/avi `checkpoint` trained on them, in its order.
        channels_from: `DIM=V1,V2,...` or `DIM`: each value of DIM a channel of each variable, as
            given to `train-prior --channels-from` (`parse_channels_from`), or None.
        masks: mask specs, combined with "and" (observed only where all observe).
        engine: "gaussian", "dps", "daps", "aps", "implicit" or "avi".
        checkpoint: model file (required but for gaussian).
        fit_period: times of the gaussian fit (`parse_period`: stamps and START:END ranges,
            comma-separated), or None.
        period: the imputed times (as `fit_period`), or None (all).
        select: "DIM=VALUE" selections of extra dimensions.
        region: "S:N:W:E" box to crop the field to (degrees), or None.
        coarsen: average blocks of `coarsen x coarsen` cells first (1: keep the grid).
        output_grid: "coarse" (the result on the grid imputed: the `coarsen` blocks or the
            `grid` pixels) or "native" (brought back to the input grid, piecewise constant per
            block or pixel, the input's observed cells kept exactly).
        grid: "native" (impute on the file's grid) or "healpix:NSIDE": the global lat-lon field
            averaged into HEALPix pixels first (`climate.regrid.healpix_field`: a pixel observed
            where any of its cells holds a value), the imputation on the pixels (the grid of a
            prior trained with `train-prior --grid healpix:NSIDE`).
        truth: a file to score the imputation against (the same variable and grid, e.g. the
            complete field behind real gaps), or None.
        save_model: where to save a fitted gaussian model, or None.
        samples: posterior samples per field (>= 2 unless the engine is gaussian: the others'
            std is that of their samples).
        noise_std: observation error std of the likelihood, variable units, > 0; None: the model's
            own (a `--save-model` file, a distilled engine), else `DEFAULT_NOISE_STD`. Given with a
            gaussian `checkpoint` it replaces the saved value (the prior is unchanged); a distilled
            engine (aps, implicit, avi) refuses a value other than its own.
        variance_scale: the gaussian engine's covariance per field: "observed" (its scale
            re-estimated from each field's observed values; `GaussianImputer`), "fitted" (the
            training fields'), "refit" (range, std and nugget re-fitted to each field's observed
            values), or None (a loaded model's own setting; "observed" for a model fitted here).
        quantiles, seed, chunk_size, dps_steps, guidance, daps_steps: as in `impute`,
        daps_covariance: DAPS's inner Gaussian (`climate.load_model`),
            `load_model`.
        output: output netCDF path.
        plot: output PNG path, or None.
        plot_time: time to map, or None (the first).
        attribution: the credit of the data, written as the output's `attribution` attribute and
            under the `plot` map; None: the input file's own credit attributes (licence,
            institution...), if any.
        progress: progress bars.
        scheduler: where the dask blocks run: None (this process, threads), "local:N" (a
            `LocalCluster` of N single-threaded worker processes on 127.0.0.1, closed at the end)
            or the address of a running dask scheduler, e.g. "tcp://host:8786" (its workers must
            see the input and output paths); the output is the same bit for bit.
    """

    input: str
    skip_corrupt_grib: bool = False
    variable: str | tuple[str, ...] = "t2m"
    channels_from: str | None = None
    masks: tuple[str, ...] = ("nan",)
    engine: str = "gaussian"
    checkpoint: str | None = None
    fit_period: str | None = None
    period: str | None = None
    select: tuple[str, ...] = ()
    region: str | None = None
    coarsen: int = 1
    output_grid: str = "coarse"
    grid: str = "native"
    truth: str | None = None
    save_model: str | None = None
    samples: int = 16
    quantiles: tuple[float, ...] = ()
    seed: int = 0
    noise_std: float | None = None
    variance_scale: str | None = None
    chunk_size: int | None = None
    dps_steps: int = 1000
    guidance: float | str = "auto"
    daps_steps: int = 20
    daps_covariance: str = "white"
    output: str = "imputed.nc"
    plot: str | None = None
    plot_time: str | None = None
    attribution: str | None = None
    progress: bool = True
    scheduler: str | None = None

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables imputed, in the order given (one, or the channels of a checkpoint)."""
        return (self.variable,) if isinstance(self.variable, str) else tuple(self.variable)

    @property
    def several(self) -> bool:
        """Whether several channels are imputed jointly (several variables or --channels-from)."""
        return len(self.variables) > 1 or self.channels_from is not None

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if not self.variables:
            raise ValueError("--var needs at least one variable")
        if self.channels_from is not None:
            parse_channels_from(self.channels_from)  # its syntax, before any work
        if self.several and self.engine == "gaussian":
            raise ValueError(
                "the gaussian engine imputes one variable: give one --var (and no "
                "--channels-from), or several with a dps/aps/implicit/avi --checkpoint trained on "
                "them (train-prior --var A B)"
            )
        if self.several and (self.truth or self.output_grid == "native"):
            raise ValueError(
                f"{'--truth' if self.truth else '--output-grid native'} takes one variable; "
                "impute several --var without it"
            )
        if self.engine != "gaussian" and not self.checkpoint:
            raise ValueError(
                f"--engine {self.engine} needs --checkpoint (a trained prior or distilled flow)"
            )
        if self.coarsen < 1:
            raise ValueError(f"--coarsen must be >= 1, got {self.coarsen}")
        if parse_grid(self.grid) is not None and self.truth and self.output_grid != "native":
            raise ValueError(
                f"--grid {self.grid} imputes on HEALPix pixels: --truth takes lat-lon results "
                "(add --output-grid native, or leave it out)"
            )
        if self.variance_scale not in (None, *VARIANCE_SCALES):
            raise ValueError(
                f"--variance-scale must be one of {', '.join(VARIANCE_SCALES)}, "
                f"got {self.variance_scale!r}"
            )
        if self.variance_scale is not None and self.engine != "gaussian":
            raise ValueError(
                f"--variance-scale is a setting of the gaussian engine, not of {self.engine}"
            )
        if self.output_grid not in OUTPUT_GRIDS:
            raise ValueError(
                f"--output-grid must be one of {list(OUTPUT_GRIDS)}, got {self.output_grid!r}"
            )
        for option, text in (("--period", self.period), ("--fit-period", self.fit_period)):
            if text:
                parse_period(text, option)  # its syntax, before any work
        if self.save_model and (self.engine != "gaussian" or self.checkpoint):
            raise ValueError("--save-model saves a gaussian model fitted here (no --checkpoint)")
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        # climate.model._summary: std of the samples
        if self.samples < 2 and not ENGINES[self.engine].exact_std:
            raise ValueError(
                f"--samples {self.samples}: the {self.engine} engine's std is that of its samples "
                "and needs --samples 2 or more (only the gaussian engine has an exact std)"
            )
        if self.noise_std is not None and not (
            math.isfinite(self.noise_std) and self.noise_std > 0
        ):
            raise ValueError(
                f"--noise-std must be a positive number (variable units), got {self.noise_std:g}"
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be a positive integer, got {self.chunk_size}")
        if self.scheduler is not None:
            _parse_scheduler(self.scheduler)


@dataclass(frozen=True)
class Period:
    """A union of time ranges, what `--period` / `--fit-period` take (made by `parse_period`).

    Attributes:
        text: the option's value, e.g. `"2002-07-01,2002-07-11,2002-07-21"` or `"A:B,C:D"`.
        option: the option's name for messages, e.g. `"--period"`.
        items: one `(item text, label slice)` per comma-separated item, in the order given; a
            single stamp `S` is the slice `S:S` (a date: its whole day, an hour: that hour).
    """

    text: str
    option: str
    items: tuple[tuple[str, slice], ...]

    def _picks(self, times) -> list[tuple[str, np.ndarray]]:
        """Each item with the positions `(k,)` of the steps of `times` `(T,)` it selects."""
        values = np.asarray(getattr(times, "values", times))
        positions = xr.DataArray(np.arange(values.size), coords={TIME: values}, dims=TIME)
        return [
            (item, np.atleast_1d(positions.sel({TIME: label}).values)) for item, label in self.items
        ]

    def contains(self, times) -> np.ndarray:
        """Whether each step of `times` `(T,)` (DataArray or array of datetimes) is in the period.

        Unlike `indices`, an item may select none of `times`: this asks which of them a period
        recorded elsewhere (a checkpoint's training period) holds. Returns bool `(T,)`.
        """
        inside = np.zeros(np.size(getattr(times, "values", times)), dtype=bool)
        for _, picked in self._picks(times):
            inside[picked] = True
        return inside

    def indices(self, times: xr.DataArray) -> np.ndarray:
        """Positions `(T_selected,)`, in time order, of the steps of `times` `(T,)` selected.

        Raises:
            ValueError: an item selects no time step, or two items select a common one (naming
                them).
        """
        chosen: dict[str, np.ndarray] = {}
        for item, picked in self._picks(times):
            if picked.size == 0:
                span = (
                    f"{_stamp(times.values[0])} .. {_stamp(times.values[-1])}"
                    if times.size
                    else "none"
                )
                raise ValueError(
                    f"{self.option} item {item!r} selects no time step (the times are {span})"
                )
            for other, before in chosen.items():
                common = np.intersect1d(before, picked)
                if common.size:
                    raise ValueError(
                        f"{self.option} items {other!r} and {item!r} overlap: both select "
                        f"{_stamp(times.values[common[0]])} ({common.size} time step(s)); "
                        "give each time once"
                    )
            chosen[item] = picked
        return np.sort(np.concatenate(list(chosen.values())))

    def select(self, da: xr.DataArray) -> xr.DataArray:
        """The time steps of `da` that the items select (their union, in time order)."""
        return da.isel({TIME: self.indices(da[TIME])})


def parse_period(text: str, option: str = "--period") -> Period:
    """`"START:END"`, a single stamp, or several of them comma-separated -> a `Period`.

    Each item is an ISO date/time `S` (what `S:S` selects: a date its whole day, `2019-03-01T12`
    that hour) or a range `START:END` (ISO times, ends included, either side may be empty); an
    item that is itself one ISO time (`2019-03-01T12:00`) is a stamp, not a range.

    Raises:
        ValueError: an empty item or one that is not an ISO time or range, naming it and `option`.
    """
    items = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(
                f"{option} {text!r} has an empty item; separate stamps or START:END ranges by "
                "one comma"
            )
        items.append((item, _period_item(item, option)))
    return Period(text=text, option=option, items=tuple(items))


def _period_item(item: str, option: str) -> slice:
    """One item of a period: a stamp `S` -> `slice(S, S)`, `"START:END"` -> `slice(START, END)`."""
    if ":" not in item or _is_stamp(item):
        if not _is_stamp(item):
            raise ValueError(f"{option} item {item!r} is not an ISO date/time or START:END range")
        return slice(item, item)
    parts = item.split(":") if item.count(":") == 1 else None
    if parts is None:
        # times may contain colons: split on the one ':' that separates two ISO stamps
        # ("..T12:00:...")
        for i in range(len(item)):
            if item[i] == ":" and _is_stamp(item[:i]) and _is_stamp(item[i + 1 :]):
                parts = [item[:i], item[i + 1 :]]
                break
        else:
            raise ValueError(f"{option} item {item!r} must be START:END (ISO times)")
    start, end = (p or None for p in parts)
    for p in (start, end):
        if p is not None and not _is_stamp(p):
            raise ValueError(f"{p!r} in {option} item {item!r} is not an ISO date/time")
    return slice(start, end)


def _stamp(value) -> str:
    """A time for messages: `2019-03-01T12:00`."""
    return str(value)[:16]


def _is_stamp(text: str) -> bool:
    if text == "":
        return True
    try:
        # "no explicit representation of timezones": not a stamp either way
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            np.datetime64(text)
    except ValueError:
        return False
    return True


def coarsen_grid(da: xr.DataArray, factor: int) -> xr.DataArray:
    """Plain (unweighted) mean of the observed cells of blocks of `factor x factor` cells.

    A block is NaN only where all its cells are; rows/columns that do not fill a block are
    trimmed; attributes are kept. Centres become the blocks' mean coordinates.

    Arguments:
        da: field `(..., latitude, longitude)`.
        factor: block side, cells.

    Returns:
        `(..., latitude // factor, longitude // factor)`.
    """
    for dim in (LATITUDE, LONGITUDE):
        if da.sizes[dim] < factor:
            raise ValueError(f"--coarsen {factor}: the field has only {da.sizes[dim]} {dim} values")
    with warnings.catch_warnings():  # "Mean of empty slice": an all-NaN block is NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        out = da.coarsen({LATITUDE: factor, LONGITUDE: factor}, boundary="trim").mean()  # skips NaN
    return out.assign_attrs(da.attrs)


def upsample_blocks(
    coarse: xr.Dataset | xr.DataArray, like: xr.DataArray, factor: int
) -> xr.Dataset | xr.DataArray:
    """Piecewise-constant inverse of `coarsen_grid`, on `like`'s latitude/longitude coordinates.

    Each cell of `like`'s grid takes the value of the `factor x factor` block it belongs to (the
    rows/columns `coarsen_grid` trimmed: of the nearest block).

    Arguments:
        coarse: on the grid `coarsen_grid(like, factor)` gives, `(..., nlat_c, nlon_c)`.
        like: a field on the fine grid `(..., nlat, nlon)`.
        factor: the block side of the coarsening.

    Returns:
        `coarse` on the fine grid `(..., nlat, nlon)`, lazily if dask-backed.
    """
    index = {
        dim: np.minimum(np.arange(like.sizes[dim]) // factor, coarse.sizes[dim] - 1)
        for dim in (LATITUDE, LONGITUDE)
    }
    return coarse.isel(index).assign_coords({dim: like[dim] for dim in (LATITUDE, LONGITUDE)})


def select_values(
    da: xr.DataArray, select: tuple[str, ...], option: str = "--select"
) -> xr.DataArray:
    """`da` at the `DIM=VALUE` items of `select` (`--select level=500`), each checked and named.

    `option` names the option in messages.
    """
    for item in select:
        if "=" not in item:
            raise ValueError(f"{option} takes DIM=VALUE, got {item!r}")
        dim, value = item.split("=", 1)
        if dim not in da.dims:
            raise ValueError(
                f"{option} {item}: {da.name!r} has no dimension {dim!r}; it has {list(da.dims)}"
            )
        coord = da[dim].values
        try:
            typed = coord.dtype.type(value)
        except ValueError as err:
            raise ValueError(
                f"{option} {item}: {value!r} is not a {coord.dtype} value of {dim}"
            ) from err
        if typed not in coord:
            raise ValueError(
                f"{option} {item}: {dim} has no value {value}; it has {coord.tolist()[:12]}"
            )
        da = da.sel({dim: typed})
    return da


def parse_channels_from(text: str) -> tuple[str, tuple[str, ...]]:
    """`--channels-from DIM=V1,V2,...` (those values, in this order) or `DIM` (all of its values).

    Returns:
        the dimension and the values as written (empty: all of them, in the file's order).

    Raises:
        ValueError: an empty dimension or value, or a value given twice.
    """
    dim, _, listed = text.partition("=")
    values = tuple(v.strip() for v in listed.split(",")) if listed else ()
    if not dim.strip() or (listed and not all(values)) or (not listed and "=" in text):
        raise ValueError(
            f"--channels-from takes DIM or DIM=V1,V2,... (e.g. level=500,850), got {text!r}"
        )
    if len(set(values)) != len(values):
        raise ValueError(f"--channels-from {text}: a value is given twice")
    return dim.strip(), values


def channel_fields(
    data: xr.Dataset | xr.DataArray,
    variables: str | tuple[str, ...] | list[str],
    *,
    select: tuple[str, ...] = (),
    channels_from: str | None = None,
) -> list[xr.DataArray]:
    """The fields of a model's channels: each variable at `select`, at each `channels_from` value.

    The channels are in the order of `variables`, and for each variable, of the values of
    `channels_from` (`parse_channels_from`): `("t", "u")` with `"level=500,850"` gives t at 500,
    t at 850, u at 500, u at 850. Each field keeps its variable's name and attributes and the
    `channels_from` dimension as a scalar coordinate (`Channel.of` reads it).

    Raises:
        KeyError: a variable not in `data`.
        ValueError: a variable given twice, a `select` or `channels_from` value it lacks.
    """
    from climate.impute import select_variable

    names = [variables] if isinstance(variables, str) else list(variables)
    if not names:
        raise ValueError("--var needs at least one variable")
    twice = sorted({v for v in names if names.count(v) > 1})
    if twice:
        raise ValueError(f"--var names {twice} more than once; give each variable once")
    fields = []
    for name in names:
        da = select_values(select_variable(data, name), tuple(select))
        if channels_from is None:
            fields.append(da)
            continue
        dim, values = parse_channels_from(channels_from)
        if dim not in da.dims:
            raise ValueError(
                f"--channels-from {channels_from}: {name!r} has no dimension {dim!r}; it has "
                f"{list(da.dims)}"
            )
        if values:
            fields += [select_values(da, (f"{dim}={v}",), "--channels-from") for v in values]
        else:
            fields += [da.isel({dim: i}) for i in range(da.sizes[dim])]
    return fields


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through symlinks and hard links; either may not exist)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_paths(req: ImputeRequest) -> None:
    """Refuse, before any work, an output that would replace an input or output, or is a folder."""
    inputs = [(f"the input {f}", Path(f)) for f in input_files(req.input)]
    if req.checkpoint:
        inputs.append((f"the --checkpoint {req.checkpoint}", Path(req.checkpoint)))
    if req.truth:
        try:
            inputs += [(f"the --truth {f}", Path(f)) for f in input_files(req.truth)]
        except FileNotFoundError as err:
            raise ValueError(f"--truth {req.truth}: {err}") from err
    outputs = [
        (flag, Path(path))
        for flag, path in (
            ("--output", req.output),
            ("--plot", req.plot),
            ("--save-model", req.save_model),
        )
        if path
    ]
    for i, (flag, path) in enumerate(outputs):
        if path.is_dir():
            raise ValueError(f"{flag} {path} is a folder; give a file name")
        # the folders below it are made
        folder = next(f for f in path.absolute().parents if f.exists())
        if not folder.is_dir():
            raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
        for what, other in inputs + [(f"{f} {p}", p) for f, p in outputs[:i]]:
            if _same_file(path, other):
                raise ValueError(
                    f"{flag} {path} is {what}: writing it would replace that file; give another one"
                )


def _crop(da: xr.DataArray, req: ImputeRequest) -> xr.DataArray:
    """`da` after `--select` and `--region` (on its own grid, before any `--coarsen`)."""
    return _crop_region(select_values(da, req.select), req)


def _crop_region(da: xr.DataArray, req: ImputeRequest) -> xr.DataArray:
    """`da` cropped to `--region` (as given when there is none).

    Raises:
        ValueError: `--region` or `--coarsen` given for a field on HEALPix pixels (a HEALPix
            GRIB): both take lat-lon grids.
    """
    lat_lon_only = [
        option
        for option, given in (("--region", req.region), ("--coarsen", req.coarsen > 1))
        if given
    ]
    if lat_lon_only and spatial_dims(da) != (LATITUDE, LONGITUDE):
        nside = da.attrs.get("healpix_nside", "?")
        several = len(lat_lon_only) > 1
        raise ValueError(
            f"{' and '.join(lat_lon_only)} {'take' if several else 'takes'} a lat-lon grid; "
            f"this field is on HEALPix pixels (nside {nside}): leave {'them' if several else 'it'} "
            "out"
        )
    if req.region:
        try:
            south, north, west, east = (float(v) for v in req.region.split(":"))
        except ValueError as err:
            raise ValueError(f"--region takes S:N:W:E in degrees, got {req.region!r}") from err
        da = crop_region(da, lat=(south, north), lon=(west, east))
    return da


def _truth_field(req: ImputeRequest, like: xr.DataArray, *, like_units: str | None) -> xr.DataArray:
    """`--truth`'s variable at the times of `like` (lazy, dask-backed), selected like the input.

    It goes through the same `--select`/`--region`/`--coarsen` as the input (no `--coarsen` for
    `--output-grid native`).

    Raises:
        ValueError: the file cannot be read or lacks the variable, another grid than `like`'s,
            other units, or missing times of `like` (each naming the file and the problem).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = open_era5(req.truth, req.variable, chunks={TIME: req.chunk_size or 24})
        truth = _crop(ds[req.variable], req)
        if req.coarsen > 1 and req.output_grid == "coarse":
            truth = coarsen_grid(truth, req.coarsen)
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(
            f"--truth {req.truth}: {err.args[0] if isinstance(err, KeyError) else err}"
        ) from err
    same = all(
        truth.sizes.get(dim) == like.sizes[dim]
        and np.allclose(truth[dim].values, like[dim].values, rtol=0, atol=1e-6)
        for dim in (LATITUDE, LONGITUDE)
    )
    if not same:
        raise ValueError(
            f"--truth {req.truth} is on another grid than the input after "
            "--select/--region/--coarsen: "
            f"{_describe_grid(truth[LATITUDE].values, truth[LONGITUDE].values)}, not "
            f"{_describe_grid(like[LATITUDE].values, like[LONGITUDE].values)}"
        )
    units = truth.attrs.get("units")
    if units and like_units and not _same_units(units, like_units):
        raise ValueError(
            f"--truth {req.truth}: {req.variable} is in {units!r}, the input in {like_units!r}"
        )
    if TIME in like.dims:
        if TIME not in truth.dims:
            raise ValueError(
                f"--truth {req.truth} has no time dimension; the imputed times are "
                f"{like.sizes[TIME]}"
            )
        lacking = ~np.isin(like[TIME].values, truth[TIME].values)
        if lacking.any():
            raise ValueError(
                f"--truth {req.truth} lacks {int(lacking.sum())} of the {lacking.size} imputed "
                "time steps, first "
                f"{_stamp(like[TIME].values[lacking][0])}"
            )
        truth = truth.sel({TIME: like[TIME].values})
    return truth.transpose(*like.dims)


def _on_input_grid(
    result: xr.Dataset,
    native: xr.DataArray,
    masked: xr.DataArray | None,
    upsample,
    how: str,
    variable: str,
) -> xr.Dataset:
    """`--output-grid native`: an imputation on a coarser grid brought back to the input's.

    The coarse grid is the `--coarsen` blocks or the `--grid healpix` pixels; `upsample` gives
    each input cell its block's or pixel's values (`upsample_blocks`, `healpix_to_cells`). A cell
    is observed where the input has a value and the `--mask` specs (on the coarse grid) observe
    its block or pixel: there the mean, samples and quantiles are the input's value bit for bit
    and the std is 0, as at the observed cells of any imputation. A hidden cell of a block or
    pixel that has observed cells takes its value, their average, with std 0 (the coarse
    posterior has no variability within a block or pixel).

    Arguments:
        result: `impute`'s output on the coarse grid.
        native: the imputed input times on the input grid `([time,] latitude, longitude)`.
        masked: True where every `--mask` spec observes, on the coarse grid; None: no spec.
        upsample: coarse DataArray or Dataset -> the same on the input grid.
        how: what `upsample` does, for the output's history.
        variable: the variable name.
    """
    out = upsample(result)
    observed = native.notnull()
    if masked is not None:
        observed = observed & upsample(masked)
    observed = observed.transpose(*native.dims)
    for name in (f"{variable}_mean", f"{variable}_samples", f"{variable}_quantiles"):
        if name in out:
            var = out[name]
            out[name] = (
                var.where(~observed, native.astype(var.dtype))
                .transpose(*var.dims)
                .assign_attrs(var.attrs)
            )
    std = out[f"{variable}_std"]
    out[f"{variable}_std"] = (
        std.where(~observed, np.zeros((), std.dtype)).transpose(*std.dims).assign_attrs(std.attrs)
    )
    out[OBSERVED] = observed.astype(np.int8).assign_attrs(result[OBSERVED].attrs)
    first, _, rest = out.attrs.get("history", "").partition("\n")
    out.attrs["history"] = (
        f"{first}; on the input grid (--output-grid native): {how}, the input's observed cells "
        "kept as given" + (f"\n{rest}" if rest else "")
    )
    return out


def _log_cost_per_field(
    model: ImputationModel, target: xr.DataArray, observed: xr.DataArray, n_samples: int, log
):
    """Log what the gaussian engine spends on one field with hidden cells.

    That is its sparse Cholesky factorisation, exact variances and samples, timed on the first
    imputed field if it has any.
    """
    if not isinstance(model, GaussianImputer):
        return
    first = {TIME: 0} if TIME in target.dims else {}
    spatial = spatial_dims(target)  # (latitude, longitude), or HEALPix (values,)
    values = target.isel(first).transpose(*spatial)
    seen = observed.broadcast_like(target).isel(first).transpose(*spatial)
    if model.latitudes_reversed(values):
        values, seen = (
            values.isel({LATITUDE: slice(None, None, -1)}),
            seen.isel({LATITUDE: slice(None, None, -1)}),
        )
    mask = np.asarray(seen.values, dtype=bool).reshape(1, -1, 1)
    if mask.all():
        return
    y = np.nan_to_num(np.asarray(values.values, dtype=np.float64)).reshape(1, -1, 1)
    when = None if not first else target[TIME].values[:1]
    tic = time.perf_counter()
    model.posterior(
        torch.from_numpy(y),
        torch.from_numpy(mask),
        n_samples,
        times=when,
        rng=torch.Generator().manual_seed(0),
    )
    log(
        f"gaussian posterior of one field ({mask.size} cells, "
        f"{100 * (1 - mask.mean()):.0f} % hidden): {time.perf_counter() - tic:.2f} s "
        "(one sparse Cholesky factorisation per distinct mask, exact variances, "
        f"{n_samples} samples), {target.sizes.get(TIME, 1)} field(s) to impute"
    )


def _scores_line(scores: dict, where: str, units: str) -> str:
    """The log line of `imputation_scores`, over the hidden cells `where` says."""
    return (
        f"scores over the {100 * scores['hidden_fraction']:.0f} % hidden cells {where} "
        f"(area-weighted): RMSE of the mean {scores['rmse_mean']:.3f}, of one sample "
        f"{scores['rmse_sample']:.3f}, CRPS {scores['crps']:.3f}, 90 % coverage "
        f"{100 * scores['coverage_90']:.1f} %, spread/skill {scores['spread_skill']:.2f} [{units}]"
    )


def _with_noise_std(model: ImputationModel, req: ImputeRequest, log) -> ImputationModel:
    """A loaded model with the likelihood noise of `req.noise_std` (None: the model's own)."""
    if (
        req.noise_std is None
        or model.engine in ZERO_SHOT_ENGINES
        or math.isclose(req.noise_std, model.noise_std)
    ):
        return model  # load_model gave DPS / DAPS the value asked for
    if isinstance(model, GaussianImputer):
        log(
            f"likelihood noise std {req.noise_std:g} {model.units} from --noise-std "
            "(the saved model has "
            f"{model.noise_std:g}; its prior is unchanged)"
        )
        return GaussianImputer.from_state(
            {**read_weights_file(req.checkpoint), "noise_std": req.noise_std}
        )
    raise ValueError(
        f"--noise-std {req.noise_std:g}: the {model.engine} engine of {req.checkpoint} was "
        "distilled for a noise "
        f"std of {model.noise_std:g} {model.units} and cannot use another; leave --noise-std out"
    )


def _model(
    req: ImputeRequest, field: xr.DataArray, log, target=None, observed=None
) -> ImputationModel:
    """The engine: loaded from `--checkpoint`, or the gaussian one fitted here.

    The gaussian engine is fitted to complete training fields (`--fit-period`, else the complete
    time steps outside `--period`), else to the observed values of `target` where `observed`
    (what a geostatistician does with gappy fields only).
    """
    if req.checkpoint:
        model = load_model(
            req.checkpoint,
            engine=req.engine,
            noise_std=DEFAULT_NOISE_STD if req.noise_std is None else req.noise_std,
            dps_steps=req.dps_steps,
            guidance=req.guidance,
            daps_steps=req.daps_steps,
            daps_covariance=req.daps_covariance,
            progress=req.progress,
        )
        model = _with_noise_std(model, req, log)
        if req.variance_scale is not None and isinstance(model, GaussianImputer):
            model.variance_scale = req.variance_scale
        log(f"model: {model.describe()}")
        return model
    if TIME not in field.dims:
        raise ValueError(
            "the gaussian engine fits on time steps; the field has no time dimension "
            "(give --checkpoint)"
        )
    if req.fit_period:
        train = parse_period(req.fit_period, "--fit-period").select(field)
    else:
        inside = None
        if req.period:
            inside = np.zeros(field.sizes[TIME], dtype=bool)
            inside[parse_period(req.period).indices(field[TIME])] = True
        candidates = field if inside is None else field.isel({TIME: ~inside})
        complete = ~candidates.isnull().any(spatial_dims(candidates)).compute()
        train = candidates.isel({TIME: np.flatnonzero(complete.values)})
        if inside is None:
            log(
                "warning: fitting on complete time steps of the imputed period itself; "
                "give --fit-period for a test on held-out times"
            )
    noise_std = DEFAULT_NOISE_STD if req.noise_std is None else req.noise_std
    if train.sizes[TIME] < 2:
        if req.fit_period or target is None:
            raise ValueError(
                f"only {train.sizes[TIME]} complete time step(s) to fit the gaussian engine; "
                "give --fit-period"
            )
        log(
            f"no complete training fields ({train.sizes[TIME]} complete time steps outside "
            "--period): fitting the gaussian engine to the observed values of the imputed fields "
            "themselves"
        )
        model = GaussianImputer.fit_to_observations(
            target, observed, noise_std=noise_std, log=log, progress=req.progress
        )
    else:
        log(
            f"fitting the gaussian engine on {train.sizes[TIME]} complete training fields "
            f"({str(train[TIME].values[0])[:16]} .. {str(train[TIME].values[-1])[:16]})"
        )
        model = GaussianImputer.fit(train, noise_std=noise_std, log=log, progress=req.progress)
    if req.variance_scale is not None:
        model.variance_scale = req.variance_scale
    if req.save_model:
        model.save(req.save_model)
        log(f"saved the model to {req.save_model}")
    return model


_ADDRESS = re.compile(r"((tcp|tls|ucx|ws|wss)://)?(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):\d{1,5}")
_SCHEDULER_CONNECT_S = 10  # how long to wait for a scheduler at an address to answer


def _parse_scheduler(text: str) -> int | str:
    """`--scheduler` -> the number of local workers (`"local:N"`) or the scheduler's address."""
    if text.startswith("local:"):
        count = text[len("local:") :]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--scheduler local:N needs N >= 1 worker processes, got {text!r}")
        return int(count)
    if not _ADDRESS.fullmatch(text):
        raise ValueError(
            "--scheduler must be local:N (N worker processes here) or a dask scheduler address "
            f"such as tcp://host:8786, got {text!r}"
        )
    return text


@contextlib.contextmanager
def _dask_scheduler(spec: str | None, log):
    """Run the dask computations inside on `spec`'s cluster (see `ImputeRequest.scheduler`).

    `local:N` starts a `LocalCluster` (processes, one thread each, listening on 127.0.0.1 only,
    no dashboard) and closes it on the way out; an address gets a `Client` connected to that
    scheduler, and only the client is closed. None: nothing changes.
    """
    if spec is None:
        yield
        return
    from distributed import Client, LocalCluster

    target = _parse_scheduler(spec)
    with contextlib.ExitStack() as opened:
        if isinstance(target, int):
            target = opened.enter_context(
                LocalCluster(  # its HTTP server on a free port: runs side by side
                    n_workers=target,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                    scheduler_kwargs={"dashboard": False},
                )
            )
        try:
            client = opened.enter_context(Client(target, timeout=_SCHEDULER_CONNECT_S))
        except OSError as err:  # TimeoutError, refused connection
            raise ValueError(
                f"--scheduler {spec}: no dask scheduler answered there ({err})"
            ) from err
        threads = client.nthreads()  # {worker address: threads}
        log(
            f"dask scheduler {client.scheduler.address}: {len(threads)} worker(s), "
            f"{sum(threads.values())} thread(s)"
        )
        yield


def run_impute(req: ImputeRequest, *, log=print) -> dict:
    """Run one imputation end to end, on `req.scheduler`'s dask cluster when given.

    Returns:
        The scores (empty when nothing hidden has a value), with `--truth`'s under the key "truth".
    """
    with _dask_scheduler(req.scheduler, log):
        return _run_impute_here(req, log=log)


def _run_impute_here(req: ImputeRequest, *, log) -> dict:
    """`run_impute` on the dask scheduler already in force."""
    start = time.perf_counter()
    _check_paths(req)
    with warnings.catch_warnings():  # "chunks separate the stored chunks": harmless for reading
        warnings.simplefilter("ignore", UserWarning)
        try:
            ds = open_era5(
                req.input,
                list(req.variables),
                chunks={TIME: req.chunk_size or 24},
                allow_corrupt=req.skip_corrupt_grib,
            )
        except FileNotFoundError:
            raise
        except OSError as err:  # e.g. a truncated netCDF file (HDF5: "truncated file")
            raise ValueError(f"cannot read --input {req.input}: {err}") from err
    natives = [
        _crop_region(da, req)
        for da in channel_fields(
            ds, req.variables, select=req.select, channels_from=req.channels_from
        )
    ]
    fields = [coarsen_grid(n, req.coarsen) if req.coarsen > 1 else n for n in natives]
    nside = parse_grid(req.grid)
    if nside is not None:  # the pixels of a prior trained with train-prior --grid healpix:NSIDE
        fields = [healpix_field(f, nside) for f in fields]
    native, field = natives[0], fields[0]
    along = f" at {req.channels_from}" if req.channels_from else ""
    log(f"read {', '.join(req.variables)}{along} {dict(field.sizes)} from {req.input}")
    period = parse_period(req.period) if req.period and TIME in field.dims else None
    targets = fields if period is None else [period.select(f) for f in fields]
    target = targets[0]
    if TIME in target.dims and target.sizes[TIME] == 0:
        raise ValueError(f"--period {req.period} selects no time step of {req.input}")
    on_input_grid = req.output_grid == "native" and (req.coarsen > 1 or nside is not None)
    native_target = (
        (native if period is None else period.select(native)) if on_input_grid else target
    )
    descriptions = []
    masked = None  # True where every --mask spec observes (the NaN cells aside)
    for spec in req.masks:
        if spec != "nan":
            mask = parse_mask_spec(spec, target, seed=req.seed)
            descriptions.append(mask.attrs.get("description", spec))
            masked = mask if masked is None else masked & mask
    observed_each = []  # per channel: its own NaN cells, the --mask cells of every channel
    for t in targets:
        seen = missing_mask(t)
        text = " & ".join([seen.attrs["description"], *descriptions])
        seen = seen if masked is None else seen & masked
        seen.attrs["description"] = text
        # its checks (e.g. repeated input times) before any fit
        align_mask(seen, t, name="mask")
        observed_each.append(seen)
    observed = observed_each[0]
    truth = (
        _truth_field(req, native_target, like_units=field.attrs.get("units")) if req.truth else None
    )
    model = _model(req, field, log, target, observed)
    result = impute(
        targets,
        observed_each,
        model,
        n_samples=req.samples,
        seed=req.seed,
        quantiles=req.quantiles,
        chunk_size=req.chunk_size,
        compute=False,
        progress=req.progress,
    )
    _log_cost_per_field(model, target, observed, req.samples, log)
    if on_input_grid and nside is not None:
        cells = healpix_cell_index(native_target, nside)  # shared by the result and the mask
        result = _on_input_grid(
            result,
            native_target,
            masked,
            lambda coarse: healpix_to_cells(coarse, native_target, index=cells),
            f"each HEALPix pixel's values (nside {nside}) on the cells whose centres it holds",
            req.variable,
        )
    elif on_input_grid:
        result = _on_input_grid(
            result,
            native_target,
            masked,
            lambda coarse: upsample_blocks(coarse, native_target, req.coarsen),
            f"each {req.coarsen}x{req.coarsen} block's values repeated over its cells",
            req.variable,
        )
    # the input file's credit (licence, institution) travels to the output and its --plot
    result.attrs.update({k: ds.attrs[k] for k in ATTRIBUTION_ATTRS if k in ds.attrs})
    if req.attribution:
        result.attrs["attribution"] = req.attribution
    result.attrs["source"] = Path(str(req.input)).name
    write_imputation(result, req.output)
    tuned = getattr(getattr(model, "sampler", None), "tuning_summary", lambda: "")()
    if tuned:  # DPS with guidance "auto" (in this process; a cluster's workers tune their own)
        log(tuned)
    log(f"wrote {req.output}")
    written = xr.open_dataset(req.output, engine="h5netcdf")
    try:
        if req.several:
            scores = _channel_scores(written, targets, model, log)
        else:
            scores = imputation_scores(written, native_target, req.variable)
            if scores:
                log(_scores_line(scores, "that have a value in the input", model.units))
        if truth is not None:
            against = imputation_scores(written, truth.load(), req.variable)
            log(
                _scores_line(against, f"that have a value in --truth {req.truth}", model.units)
                if against
                else f"no hidden cell has a value in --truth {req.truth}: nothing to score"
            )
            scores = {**scores, "truth": against}
        first = _channel_view(written, target) if req.several else written
        if req.plot:  # several channels: the first
            when = req.plot_time
            plot_imputation(
                first,
                native_target if truth is None else truth,
                str(target.name),
                req.plot,
                time=when,
                engine=model.engine,
            )
            log(f"wrote {req.plot}")
        flags = [
            v for k, v in written.data_vars.items() if k == OBSERVED or k.endswith("_observed")
        ]
        hidden = float(np.mean([float((f == 0).mean()) for f in flags]))
    finally:
        written.close()
    log(f"{100 * hidden:.0f} % of cells imputed in {time.perf_counter() - start:.1f} s")
    return scores


def _channel_view(written: xr.Dataset, field: xr.DataArray) -> xr.Dataset:
    """One channel of an imputation of several as an imputation of one variable.

    That is the channel's `<var>_mean`, `_std`, `_samples`, `_quantiles` (at the channel's value
    of the dimension its variable's channels are along) and its `<var>_observed` as `observed`,
    what `imputation_scores` and `plot_imputation` read.

    Arguments:
        written: the output of `impute` for several channels.
        field: the channel's input field (its name and scalar coordinates say which it is).
    """
    name = str(field.name)
    keys = [f"{name}_{k}" for k in ("mean", "std", "samples", "quantiles")]
    view = written[[k for k in keys if k in written]]
    view[OBSERVED] = written[f"{name}_observed"]
    at = {d: field[d].values for d in field.coords if field[d].ndim == 0 and d in view.dims}
    return view.sel(at) if at else view


def _channel_scores(
    written: xr.Dataset, targets: list[xr.DataArray], model: ImputationModel, log
) -> dict:
    """The scores of each channel of an imputation of several, logged; keyed by channel label."""
    scores = {}
    for target, channel in zip(targets, model.channels, strict=True):
        found = imputation_scores(_channel_view(written, target), target, str(target.name))
        if found:
            log(
                _scores_line(
                    found, f"of {channel.label} that have a value in the input", channel.units
                )
            )
            scores[channel.label] = found
    return scores
