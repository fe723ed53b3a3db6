"""Impute the hidden cells of gridded fields: xarray in, xarray out, chunk by chunk with dask.

`impute(data, mask, model)` returns an `xr.Dataset` with `<var>_mean`, `<var>_std`,
`<var>_samples` (dimension `sample`), optional `<var>_quantiles` and the `observed` flag, on the
input's coordinates, with CF attributes and a `history` line. Observed cells keep the input's
values bit for bit in the mean, the samples and the quantiles (their std is 0).

Time steps are processed in blocks of `chunk_size` fields by `dask.array.map_blocks`: an
in-memory input is computed at once (with a progress bar); a dask-backed input gives a lazy
Dataset, and `write_imputation` streams it to netCDF block by block, so memory stays bounded by a
few blocks whatever the length of the series. Under an active `dask.distributed.Client` the blocks
run on its workers (the model is sent to each worker once, torch uses one thread per block there)
and the output is the single-process one bit for bit: a block's seed depends on its first time
index only, never on where or in which order it runs.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import threading
import warnings
from pathlib import Path

import cf_units
import dask
import dask.array as dsa
import numpy as np
import torch
import xarray as xr

from climate.era5 import HEALPIX_NSIDE, HEALPIX_ORDERING, NETCDF_ENGINE, spatial_dims
from climate.masks import align_mask
from climate.model import Channel, ImputationModel, channels_text
from climate.schema import ALL_SAMPLES, LATITUDE, SAMPLE, TIME
from manifold_aps.checkpoint import atomic_path
from manifold_aps.operators.masks import seed_to_int

__all__ = ["OBSERVED", "QUANTILE", "impute", "select_variable", "write_imputation"]

OBSERVED = "observed"
QUANTILE = "quantile"
_BLOCK_BYTES = 2**28  # working memory aimed at per block (256 MiB) when chunk_size is not given
_REVERSED = {LATITUDE: slice(None, None, -1)}
_FAR_Z = 10.0  # model standard deviations beyond which an observation is implausible
# Units a field is often given in by mistake: tried to explain observations far from the model's.
_COMMON_UNITS = (
    "K",
    "degC",
    "degF",
    "Pa",
    "hPa",
    "kPa",
    "m",
    "cm",
    "mm",
    "km",
    "m s-1",
    "km h-1",
    "knot",
    "kg m-2",
    "percent",
    "1",
)


def select_variable(data: xr.Dataset | xr.DataArray, variable: str | None) -> xr.DataArray:
    """The DataArray to impute: `data[variable]` of a Dataset, or `data` itself.

    Raises:
        KeyError: the variable is not in the Dataset (the message lists those that are).
        TypeError: `data` is neither a Dataset nor a DataArray.
    """
    if isinstance(data, xr.Dataset):
        if variable is None:
            if len(data.data_vars) != 1:
                raise ValueError(
                    f"the Dataset holds {list(data.data_vars)}: say which variable to impute"
                )
            variable = next(iter(data.data_vars))
        if variable not in data.data_vars:
            raise KeyError(
                f"variable {variable!r} not in the Dataset; it holds {list(data.data_vars)}"
            )
        return data[variable]
    if isinstance(data, xr.DataArray):
        if variable is not None and data.name is not None and data.name != variable:
            raise KeyError(f"the DataArray is {data.name!r}, not {variable!r}")
        return data if data.name is not None else data.rename(variable)
    raise TypeError(f"data must be an xarray Dataset or DataArray, got {type(data).__name__}")


def _check_field(da: xr.DataArray, model: ImputationModel, channel: Channel) -> None:
    """A field's dimensions, name, units (`channel`'s) and grid (the model's), checked."""
    spatial = spatial_dims(da)  # (latitude, longitude), or HEALPix (values,)
    for name in spatial:
        if name not in da.dims:
            raise ValueError(
                f"{da.name!r} has no {name!r} dimension; its dimensions are {list(da.dims)}"
            )
    extra = [d for d in da.dims if d not in (TIME, *spatial)]
    if extra:
        raise ValueError(
            f"{da.name!r} has extra dimensions {extra}; select one level/member first, "
            "e.g. da.sel(level=500)"
        )
    if da.name != channel.variable:
        warnings.warn(
            f"imputing {da.name!r} with a model made for {channel.variable!r}", stacklevel=4
        )
    units = da.attrs.get("units")
    if units is None:
        warnings.warn(
            f"{da.name!r} has no units attribute; assuming the model's {channel.units!r}",
            stacklevel=4,
        )
    elif channel.units and not _same_units(units, channel.units):
        raise ValueError(
            f"{da.name!r} is in {units!r} but the model expects {channel.units!r}; "
            f"{_conversion(units, channel.units)}"
        )
    model.check_grid(da.isel(_REVERSED) if model.latitudes_reversed(da) else da)


def _unit(text: str) -> cf_units.Unit | None:
    """The cf-units `Unit` of a units string, or None when udunits cannot parse it."""
    try:
        return cf_units.Unit(text)
    except ValueError:
        return None


def _same_units(units: str, expected: str) -> bool:
    """Whether two units strings name one unit ("K", "kelvin", "degK"; by string if unparsable)."""
    have, want = _unit(units), _unit(expected)
    return units == expected or (have is not None and want is not None and have == want)


def _conversion(units: str, expected: str) -> str:
    """How to bring values in `units` to `expected`, e.g. "convert it first: K = degC + 273.15"."""
    have, want = _unit(units), _unit(expected)
    if have is None or want is None:
        return "convert it first"
    if not have.is_convertible(want):
        return f"{units!r} is not convertible to {expected!r}: is it another variable?"
    offset = float(have.convert(0.0, want))
    scale = float(have.convert(1.0, want)) - offset
    formula = units if np.isclose(scale, 1.0) else f"{scale:.6g} * {units}"
    if not np.isclose(offset, 0.0):
        formula += f" {'+' if offset > 0 else '-'} {abs(offset):.6g}"
    return f"convert it first: {expected} = {formula}"


def _departure_sums(
    da: xr.DataArray, observed: xr.DataArray, model: ImputationModel, channel: int = 0
):
    """Lazy sums over the finite observed cells, compared with `model.reference`, or None.

    `da` is the field of the model's channel `channel`.

    Returns a dask-delayed array `[count, count farther than _FAR_Z scales, sum of the values,
    sum of the reference means, sum of the reference scales]`, block by block over time.
    """
    if model.reference(None, channel) is None:
        return None
    dims = ((TIME,) if TIME in da.dims else ()) + spatial_dims(da)
    times = (
        da[TIME].values
        if TIME in da.dims and np.issubdtype(da[TIME].dtype, np.datetime64)
        else None
    )
    values, obs = (a.transpose(*dims).data for a in (da, observed))
    lazy = isinstance(values, dsa.Array)
    values = values if lazy else dsa.from_array(np.asarray(values), chunks=-1)
    if TIME not in da.dims:
        values, obs = values[None], dsa.asarray(obs)[None]
    values = values.rechunk((values.chunks[0] if lazy else 24, -1, -1))  # blocks of time steps
    obs = dsa.asarray(obs).rechunk(values.chunks)

    def sums(x: np.ndarray, m: np.ndarray, start: int, shipped: tuple) -> np.ndarray:
        model, times = shipped
        x = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
        m = np.asarray(m, dtype=bool).reshape(x.shape) & np.isfinite(x)
        mean, scale = model.reference(
            None if times is None else times[start : start + x.shape[0]], channel
        )
        mean, scale = np.broadcast_to(mean, x.shape), np.broadcast_to(scale, x.shape)
        far = np.abs(x - mean) > _FAR_Z * scale
        return np.array([m.sum(), (far & m).sum(), x[m].sum(), mean[m].sum(), scale[m].sum()])

    starts = np.cumsum((0,) + values.chunks[0][:-1])
    shipped = _shipped(model, times)
    parts = [
        dask.delayed(sums)(x, m, int(start), shipped)
        for x, m, start in zip(
            values.to_delayed().ravel(), obs.to_delayed().ravel(), starts, strict=True
        )
    ]
    return dask.delayed(np.sum)(dask.delayed(np.stack)(parts), axis=0)


def _implausible(name: str, channel: Channel, sums: np.ndarray) -> str | None:
    """The one-line error when most observations lie `_FAR_Z` model scales from its reference.

    `channel` is the model's channel the observations are of.
    """
    n, far, total, reference, scale = (float(v) for v in sums)
    if n == 0 or far <= 0.5 * n:
        return None
    mean, reference, scale = total / n, reference / n, scale / n
    offset = mean - reference
    units = f" {channel.units}" if channel.units else ""
    text = (
        f"observed {name} values are {abs(offset):.4g}{units} "
        f"{'below' if offset < 0 else 'above'} the model's climatology on average "
        f"({100 * far / n:.0f} % of them more than {_FAR_Z:g} standard deviations away)"
    )
    want = _unit(channel.units) if channel.units else None
    for candidate in _COMMON_UNITS:
        have = _unit(candidate)
        if want is None or have is None or have == want or not have.is_convertible(want):
            continue
        if abs(float(have.convert(mean, want)) - reference) < 3 * scale:
            return f"{text}: are they in {candidate}? {_conversion(candidate, channel.units)}"
    return (
        f"{text}: are they in the model's units ({channel.units or 'unknown'}), of the variable "
        f"it was made for ({channel.variable!r}) and of the season it was fitted on?"
    )


def _align_mask(mask: xr.DataArray | None, da: xr.DataArray) -> xr.DataArray:
    """The observed flag `(time, latitude, longitude)` of `da` (True = observed), lazily if dask."""
    if mask is None:
        return da.notnull().rename(OBSERVED)
    return align_mask(mask, da, name="mask").broadcast_like(da).transpose(*da.dims).rename(OBSERVED)


def _validate(
    da: xr.DataArray, observed: xr.DataArray, model: ImputationModel, channel: int = 0
) -> None:
    """Clear errors for bad observations of the model's channel `channel`, in one pass.

    That is time steps with nothing observed, NaN or ±inf in observed cells, and observations far
    from the model's statistics (other units?).
    """
    spatial = spatial_dims(da)
    counts, nan, inf, departure = dask.compute(
        observed.sum(spatial),
        (observed & da.isnull()).sum(spatial),
        (observed & np.isinf(da)).sum(spatial),
        _departure_sums(da, observed, model, channel),
    )
    counts, nan, inf = (np.atleast_1d(np.asarray(c)) for c in (counts, nan, inf))

    def first(steps: np.ndarray) -> str:
        return (
            str(da[TIME].values[np.flatnonzero(steps)[0]])[:19] if TIME in da.dims else "the field"
        )

    if (counts == 0).any():
        raise ValueError(
            f"nothing is observed at {int((counts == 0).sum())} time step(s) of {da.name!r}, "
            f"first at {first(counts == 0)}; drop them or observe something"
        )
    if nan.sum():
        raise ValueError(
            f"{int(nan.sum())} observed cells of {da.name!r} are NaN (first at {first(nan)}); "
            "the mask must mark them as missing (combine it with climate.masks.missing_mask)"
        )
    if inf.sum():
        raise ValueError(
            f"{int(inf.sum())} observed cells of {da.name!r} are infinite (+inf or -inf), first at "
            f"{first(inf)}; fix them or hide them with the mask (e.g. mask & np.isfinite(field))"
        )
    problem = (
        None
        if departure is None
        else _implausible(str(da.name), model.channels[channel], departure)
    )
    if problem:
        raise ValueError(problem)


class _Progress:
    """A tqdm bar over fields, opened when the first block starts (compute may come later).

    It advances as each field is finished (`update` is thread-safe: blocks run on dask's threads).
    """

    def __init__(self, total: int, enabled: bool, desc: str):
        self.total, self.enabled, self.desc = total, enabled, desc
        self._bar, self._lock = None, threading.Lock()

    def start(self) -> None:
        """Open the bar (when the first block starts)."""
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        with self._lock:
            if self._bar is None:
                self._bar = tqdm(total=self.total, desc=self.desc, unit="field")

    def update(self, n: int) -> None:
        """Count `n` finished fields; closes the bar at the total."""
        if not self.enabled:
            return
        self.start()
        with self._lock:
            self._bar.update(n)
            if self._bar.n >= self.total:
                self._bar.close()
                self._bar = None

    def __getstate__(self) -> dict:
        """The copy a dask.distributed worker gets is off: a bar shows only where it was made."""
        return {"total": self.total, "enabled": False, "desc": self.desc}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


def _shipped(*objects):
    """`objects` as one literal of the dask graph (a Delayed tuple), for blocks to take as argument.

    A distributed scheduler then sends them to each worker once instead of inside every block's
    task (a model closed over by the block function would travel with each block: megabytes for
    a distilled flow, the climatology of a large grid).
    """
    return dask.delayed(objects, pure=False, traverse=False)


def _one_torch_thread_on_dask_worker() -> None:
    """On a dask.distributed worker, make torch run each block on one thread.

    The worker's threads and processes already run blocks in parallel; more would oversubscribe
    the cores.
    """
    if "distributed" not in sys.modules:  # never imported: not a worker
        return
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:  # a client or a plain process
        return
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _channel_fields(
    data: xr.Dataset | xr.DataArray | list | tuple, variable, model: ImputationModel
) -> list[xr.DataArray]:
    """The field `([time,] latitude, longitude)` of each channel imputed, in the order given.

    `data` may be a list of fields (one per channel); a Dataset gives `variable` (a name or
    several), or, for a model of several channels and no `variable`, the model's own channels
    (each variable at its `Channel.select`).
    """
    if isinstance(data, (list, tuple)):
        fields = list(data)
        if not fields or not all(isinstance(f, xr.DataArray) for f in fields):
            raise TypeError("a list of fields must hold xarray DataArrays, one per channel")
        return fields
    if isinstance(variable, (list, tuple)):
        return [select_variable(data, v) for v in variable]
    if variable is None and len(model.channels) > 1 and isinstance(data, xr.Dataset):
        return [
            select_variable(data, c.variable).sel(
                {d: v for d, v in c.select if d in data[c.variable].dims}
            )
            for c in model.channels
        ]
    return [select_variable(data, variable)]


def _check_channels(fields: list[xr.DataArray], model: ImputationModel) -> None:
    """Each field is the model's channel at its place: its variable, `select` value and units.

    One field for a model of one channel is checked as always (another name is a warning).

    Raises:
        ValueError: channels missing, in another order or of other variables (naming what the
            model expects, and the --var to give), units that differ from a channel's.
    """
    channels = model.channels
    if len(channels) == 1 and len(fields) == 1:
        _check_field(fields[0], model, channels[0])
        return
    given = []
    for i, da in enumerate(fields):
        want = channels[min(i, len(channels) - 1)]
        dims = [d for d, _ in want.select if d in da.coords and da[d].ndim == 0]
        given.append(Channel.of(da, dims[0] if dims else None))
    if len(given) != len(channels) or not all(
        c.matches(g) for c, g in zip(channels, given, strict=True)
    ):
        variables = " ".join(dict.fromkeys(c.variable for c in channels))
        hint = f"--var {variables}"
        at = [c.select[0] for c in channels if c.select and c.variable == channels[0].variable]
        if at:
            values = ",".join(str(value) for _, value in at)
            hint += f" --channels-from {at[0][0]}={values}"
        raise ValueError(
            f"the model imputes {len(channels)} channel(s) {channels_text(channels)} jointly, in "
            f"this order; got {len(given)}: {channels_text(given)}; give {hint}"
        )
    for da, channel in zip(fields, channels, strict=True):
        _check_field(da, model, channel)
    first = fields[0]
    for da in fields[1:]:
        for dim in (TIME, *spatial_dims(first)):
            if (dim in da.dims) != (dim in first.dims) or (
                dim in da.dims and not np.array_equal(da[dim].values, first[dim].values)
            ):
                raise ValueError(
                    f"{da.name!r} and {first.name!r} have other {dim} values; the channels "
                    "imputed together share the grid and the time steps"
                )


def impute(
    data: xr.Dataset | xr.DataArray | list[xr.DataArray],
    mask: xr.DataArray | list[xr.DataArray] | None,
    model: ImputationModel,
    *,
    variable: str | list[str] | tuple[str, ...] | None = None,
    n_samples: int = 16,
    seed: int = 0,
    quantiles: tuple[float, ...] = (),
    chunk_size: int | None = None,
    compute: bool | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Posterior mean, standard deviation and samples of the hidden cells of gridded fields.

    A model of several channels (`train-prior --var t2m msl`) imputes them jointly: the fields
    are given in its channel order (`model.channels`), each hidden where its own mask says.

    Arguments:
        data: a Dataset (then `variable`, default its only variable, or a model of several
            channels' own), a DataArray, or a list of DataArrays (one per channel, in the model's
            order), with dimensions `([time,] latitude, longitude)`, in the model's units, on the
            model's grid; may be dask-backed.
        mask: boolean DataArray, True = observed, `(latitude, longitude)` (the same every time) or
            `(time, latitude, longitude)` (see `climate.masks`), for every channel, or a list of
            them, one per channel; None = observed where not NaN.
        model: an `ImputationModel` (`climate.model.GaussianImputer`, `load_model(...)`).
        variable: the variable of a Dataset to impute, or several (the model's channels).
        n_samples: posterior samples per field.
        seed: seed of the samples; a block starting at time index `i` draws from seed `(seed, i)`,
            so results repeat exactly for the same seed and `chunk_size`.
        quantiles: levels in (0, 1) of per-cell sample quantiles to add (e.g. `(0.05, 0.95)`).
        chunk_size: fields per block; default: as many as fit in about 256 MiB, at most 24.
        compute: compute now (default: when the input is not dask-backed); else a lazy Dataset.
        progress: a tqdm bar over fields while blocks are computed, advancing per field.

    Returns:
        a Dataset with `<var>_mean`, `<var>_std` `([time,] latitude, longitude)`, `<var>_samples`
        `(sample, [time,] latitude, longitude)`, `<var>_quantiles` `(quantile, ...)` when asked and
        `observed` (int8, 1 = observed), on the input's coordinates, in its dtype and units, with
        the scalar coordinate `all_samples` (the number of samples) that the `cell_methods` of
        the mean and std name. Several channels: those of each variable, the flag
        `<var>_observed` instead of `observed`, and a variable of several channels along a
        dimension (`--channels-from level=...`) has that dimension after time.

    Raises:
        KeyError: the variable is not in the Dataset.
        ValueError: a missing latitude/longitude dimension, extra dimensions, a mask or field on
            another grid than the model's, units that differ from the model's, a time step with
            nothing observed, NaN in observed cells; channels missing or in another order than
            the model's.
    """
    fields = _channel_fields(data, variable, model)
    for da in fields:
        if TIME in da.dims and da.sizes[TIME] == 0:
            raise ValueError(
                f"no time steps selected: {da.name!r} has an empty {TIME!r} dimension; "
                "select at least one"
            )
    _check_channels(fields, model)
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    quantiles = tuple(float(q) for q in quantiles)
    if any(not 0 < q < 1 for q in quantiles):
        raise ValueError(f"quantiles must lie in (0, 1), got {quantiles}")
    if quantiles and n_samples < 2:
        raise ValueError("quantiles need at least 2 samples")
    masks = list(mask) if isinstance(mask, (list, tuple)) else [mask] * len(fields)
    if len(masks) != len(fields):
        raise ValueError(f"mask: one per channel ({len(fields)}), got {len(masks)}")
    observed = [_align_mask(m, da) for m, da in zip(masks, fields, strict=True)]
    # work in the model's latitude order, give back the input's
    reverse = model.latitudes_reversed(fields[0])
    if reverse:
        fields = [da.isel(_REVERSED) for da in fields]
        observed = [o.isel(_REVERSED) for o in observed]
    for channel, (da, seen) in enumerate(zip(fields, observed, strict=True)):
        _validate(da, seen, model, channel)
    lazy = any(da.chunks is not None for da in fields)
    compute = not lazy if compute is None else compute

    no_time = TIME not in fields[0].dims
    if no_time:
        fields = [da.expand_dims(TIME) for da in fields]
        observed = [o.expand_dims(TIME) for o in observed]
    spatial = spatial_dims(fields[0])  # (latitude, longitude), or HEALPix (values,)
    fields = [da.transpose(TIME, *spatial) for da in fields]
    observed = [o.transpose(TIME, *spatial) for o in observed]
    da = fields[0]
    n_time, *grid = da.shape
    n_nodes = int(np.prod(grid))
    n_ch = len(fields)
    dtypes = [
        np.dtype(f.dtype) if np.issubdtype(f.dtype, np.floating) else np.dtype(np.float64)
        for f in fields
    ]
    dtype = np.result_type(*dtypes)
    n_q = len(quantiles)
    depth = n_samples + 2 + n_q  # samples, mean, std, quantiles
    if chunk_size is None:
        chunk_size = int(max(1, min(24, _BLOCK_BYTES // (8 * (depth + 4) * n_nodes * n_ch))))
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def as_dask(a: xr.DataArray):
        return a.data if isinstance(a.data, dsa.Array) else dsa.from_array(np.asarray(a.values))

    values = dsa.stack([as_dask(f) for f in fields], axis=-1).rechunk((chunk_size, -1, -1, -1))
    obs = dsa.stack([as_dask(o) for o in observed], axis=-1).rechunk((chunk_size, -1, -1, -1))
    times = None if no_time or not np.issubdtype(da[TIME].dtype, np.datetime64) else da[TIME].values
    names = [str(f.name) for f in fields]
    bar = _Progress(n_time, progress, f"imputing {', '.join(names)} ({model.engine})")
    q_levels = torch.tensor(quantiles, dtype=torch.float64)

    def block(x: np.ndarray, m: np.ndarray, shipped: tuple, block_info=None) -> np.ndarray:
        model, times = shipped
        start, stop = block_info[0]["array-location"][0]
        b = stop - start
        _one_torch_thread_on_dask_worker()
        bar.start()
        xt = torch.from_numpy(np.asarray(x, dtype=np.float64).reshape(b, n_nodes, n_ch))
        mt = torch.from_numpy(np.asarray(m, dtype=bool).reshape(b, n_nodes, n_ch))
        rng = torch.Generator().manual_seed(seed_to_int(f"impute:{seed}:{start}"))
        post = model.posterior(
            xt,
            mt,
            n_samples,
            times=None if times is None else times[start:stop],
            rng=rng,
            on_field=bar.update,  # the bar advances per field (thread-safe)
        )
        parts = [post.samples, post.mean[None], post.std[None]]
        if n_q:
            parts.append(torch.quantile(post.samples, q_levels, dim=0))
        out = torch.cat(parts).numpy().astype(dtype).reshape(depth, b, *grid, n_ch)
        keep = np.asarray(m, dtype=bool)[None]
        given = np.broadcast_to(np.asarray(x).astype(dtype)[None], out.shape)
        out = np.where(keep, given, out)  # observed cells: the input, bit for bit
        out[n_samples + 1][keep[0]] = 0  # and no spread
        return out

    stacked = dsa.map_blocks(
        block,
        values,
        obs,
        _shipped(model, times),
        new_axis=0,
        chunks=((depth,),) + values.chunks,
        dtype=dtype,
        name=f"impute-{'-'.join(names)}-{model.engine}-"
        f"{dask.base.tokenize(values, obs, seed, n_samples, quantiles, id(model))}",
    )
    out = xr.Dataset(coords={k: v for k, v in da.coords.items() if k not in _channel_dims(model)})
    variables = list(dict.fromkeys(names))
    for name in variables:
        members = [c for c, n in enumerate(names) if n == name]
        along = {d for c in members for d, _ in model.channels[c].select}
        if len(members) > 1 and len(along) != 1:
            raise ValueError(
                f"{name!r} is given {len(members)} times; its channels must be taken along one "
                "dimension (--channels-from)"
            )
        layers = {
            "mean": [stacked[n_samples, ..., c] for c in members],
            "std": [stacked[n_samples + 1, ..., c] for c in members],
            "samples": [stacked[:n_samples, ..., c] for c in members],
            "quantiles": [stacked[n_samples + 2 :, ..., c] for c in members],
            OBSERVED: [obs[..., c].astype(np.int8) for c in members],
        }
        _add_variable(
            out,
            name,
            OBSERVED if n_ch == 1 else f"{name}_observed",
            [fields[c] for c in members],
            along.pop() if len(members) > 1 else None,
            layers,
            quantiles,
            dtypes[members[0]],
        )
    _describe_samples(out, n_samples, variables[0] if n_ch == 1 else None)
    source_attrs = dict(data.attrs) if isinstance(data, xr.Dataset) else {}
    previous = source_attrs.pop("history", "")
    mask_desc = (
        "NaN cells"
        if all(m is None for m in masks)
        else next(m for m in masks if m is not None).attrs.get("description", "user mask")
    )
    what = ", ".join(variables)
    line = (
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} manifold-aps impute: {what} "
        f"hidden where missing ({mask_desc}); {n_samples} samples, seed {seed}, "
        f"chunk_size {chunk_size}; {model.describe()}"
    )
    out.attrs.update(source_attrs)
    out.attrs.update(
        Conventions="CF-1.8",
        title=f"Imputation of {what} ({model.engine} posterior)",
        history=line + ("\n" + previous if previous else ""),
    )
    out = _label_time_axis(out)
    if reverse:
        out = out.isel(_REVERSED)
    if no_time:
        out = out.isel({TIME: 0}, drop=True)
    if compute:
        out = out.compute()
    return out


def _channel_dims(model: ImputationModel) -> set[str]:
    """The dimensions the model's channels are taken along (`--channels-from`), e.g. {"level"}."""
    return {d for c in model.channels for d, _ in c.select}


def _add_variable(
    out: xr.Dataset,
    name: str,
    flag: str,
    fields: list[xr.DataArray],
    along: str | None,
    layers: dict[str, list],
    quantiles: tuple[float, ...],
    dtype: np.dtype,
) -> None:
    """Add one variable's `<name>_mean`, `_std`, `_samples`, `_quantiles` and `flag` to `out`.

    Arguments:
        out: the Dataset written to.
        name: the variable.
        flag: the name of its observed flag (`observed`, or `<name>_observed`).
        fields: the variable's channels' input fields `(time, latitude, longitude)`.
        along: the dimension its channels were taken at (several channels), else None.
        layers: per output ("mean", "std", "samples", "quantiles", `OBSERVED`) one dask array per
            channel, `([sample or quantile,] time, latitude, longitude)`.
        quantiles: the quantile levels (empty: none).
        dtype: the variable's float dtype.
    """
    spatial = spatial_dims(fields[0])
    dims = (TIME, *spatial)

    def gather(arrays: list, lead: tuple[str, ...] = (), coords_extra=None) -> xr.DataArray:
        parts = [
            xr.DataArray(a, dims=lead + dims, coords={**field.coords, **(coords_extra or {})})
            for a, field in zip(arrays, fields, strict=True)
        ]
        if len(parts) == 1:
            return parts[0]
        joined = xr.concat(parts, dim=along)
        return joined.transpose(*lead, TIME, along, *spatial)

    cast = {k: [a.astype(dtype) for a in v] for k, v in layers.items() if k != OBSERVED}
    out[f"{name}_mean"] = gather(cast["mean"])
    out[f"{name}_std"] = gather(cast["std"])
    out[f"{name}_samples"] = gather(cast["samples"], (SAMPLE,))
    if quantiles:
        out[f"{name}_quantiles"] = gather(
            cast["quantiles"], (QUANTILE,), {QUANTILE: list(quantiles)}
        )
    out[flag] = gather(layers[OBSERVED])
    da = fields[0]
    units = da.attrs.get("units", "")
    long_name = da.attrs.get("long_name", name)
    ancillary = " ".join(
        [f"{name}_std", f"{name}_samples", flag] + ([f"{name}_quantiles"] if quantiles else [])
    )
    keep_attrs = {
        k: da.attrs[k]
        for k in ("standard_name", "GRIB_shortName", HEALPIX_NSIDE, HEALPIX_ORDERING)
        if da.attrs.get(k, "unknown") != "unknown"
    }
    out[f"{name}_mean"].attrs.update(
        units=units,
        long_name=f"{long_name}, posterior mean",
        cell_methods=f"{ALL_SAMPLES}: mean",
        ancillary_variables=ancillary,
        **keep_attrs,
    )
    out[f"{name}_std"].attrs.update(
        units=units,
        long_name=f"{long_name}, posterior standard deviation (0 where observed)",
        cell_methods=f"{ALL_SAMPLES}: standard_deviation",
    )
    out[f"{name}_samples"].attrs.update(
        units=units, long_name=f"{long_name}, posterior samples", **keep_attrs
    )
    if quantiles:
        out[f"{name}_quantiles"].attrs.update(
            units=units, long_name=f"{long_name}, posterior quantiles"
        )
        out[QUANTILE].attrs.update(long_name="quantile level", units="1")
    out[flag].attrs.update(
        long_name=f"1 where {name} was observed (kept as given), 0 where imputed",
        flag_values=np.array([0, 1], dtype=np.int8),
        flag_meanings="imputed observed",
    )


def _describe_samples(out: xr.Dataset, n_samples: int, name: str | None) -> None:
    """The `sample` coordinate and the scalar `all_samples` of `out` (one variable's `name`)."""
    out[SAMPLE] = np.arange(n_samples, dtype=np.int32)
    out[SAMPLE].attrs.update(long_name="posterior sample number")
    out.coords[ALL_SAMPLES] = np.int32(n_samples)
    over = f"{name}_mean and {name}_std are" if name else "each <var>_mean and <var>_std is"
    out[ALL_SAMPLES].attrs.update(
        long_name=f"all posterior samples (their number), over which {over} taken",
        units="1",
    )


def _label_time_axis(out: xr.Dataset) -> xr.Dataset:
    """Label the time coordinate variable `standard_name='time'` unless the fields are forecasts.

    cfgrib labels the `time` axis of a GRIB file `forecast_reference_time` (and files converted
    from GRIB keep that label), beside a `valid_time` coordinate and a `step`
    (`forecast_period`). For analyses such as ERA5 the step is 0, the two times agree and the
    fields are valid at `time`, as the models take it (hour-of-day climatology); CF 5.1 (and the
    compliance checker) then wants the axis labelled `time`. Fields with a non-zero step, or
    valid times that differ from `time`, keep their labels.
    """
    if TIME not in out.dims or out[TIME].attrs.get("standard_name", "time") == "time":
        return out
    for name, coord in out.coords.items():
        standard_name = coord.attrs.get("standard_name")
        if name == TIME or standard_name not in ("time", "forecast_period"):
            continue
        if standard_name == "time" and not bool((coord == out[TIME]).all()):
            return out
        if standard_name == "forecast_period" and bool((coord != np.zeros((), coord.dtype)).any()):
            return out
    return out.assign_coords({TIME: out[TIME].assign_attrs(standard_name="time", long_name="time")})


# CF-1.8 2.2: no int64, no unsigned
_CF_INTEGERS = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.int32))


def _cf_dtype_encoding(var: xr.Variable) -> dict:
    """Encoding that stores an in-memory variable as a CF-1.8 type (`{}` when it already is one).

    Integers wider than int32 or unsigned, and times and time spans whose numbers would be int64,
    are written as int32: times in their own units when the numbers fit, else in the units xarray
    picks from the data (the first time as reference); float64 when even those do not fit.
    A dask-backed variable is left as it is (checking its range would compute it).
    """
    if var.chunks is not None:
        return {}
    trials = [var, var.copy(deep=False)]
    trials[1].encoding = {}
    for trial in trials:
        disk = xr.conventions.encode_cf_variable(trial)
        if disk.dtype.kind not in "iu" or disk.dtype in _CF_INTEGERS:
            return {}
        units = {
            k: disk.attrs[k]
            for k in ("units", "calendar")
            if k in disk.attrs and var.dtype.kind in "mM"
        }
        limits = np.iinfo(np.int32)
        if disk.size == 0 or limits.min <= disk.values.min() and disk.values.max() <= limits.max:
            return {"dtype": "int32", **units}
    return {"dtype": "float64", **units}


def _cf_encoding(ds: xr.Dataset, complevel: int) -> dict[str, dict]:
    """NetCDF encoding of an imputation that CF-1.8 accepts.

    Data variables are compressed (in chunks of the dask blocks); coordinate variables (those
    named after their dimension) get no `_FillValue` (CF 2.5.1); every variable is stored as a
    CF-1.8 type (`_cf_dtype_encoding`).
    """
    encoding: dict[str, dict] = {}
    for name, var in ds.variables.items():
        enc = _cf_dtype_encoding(var)
        if name in ds.dims:
            enc["_FillValue"] = None
        if name in ds.data_vars:
            enc.update(zlib=True, complevel=complevel)
            if var.chunks is not None:
                enc["chunksizes"] = tuple(max(c) for c in var.chunks)
        if enc:
            encoding[str(name)] = enc
    return encoding


def _list_all_samples_where_used(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy: the scalar `all_samples` in the `coordinates` of `<var>_mean`/`_std` only.

    xarray lists a scalar coordinate in the `coordinates` of every variable; `all_samples`
    describes only the variables whose `cell_methods` name it.
    """
    if ALL_SAMPLES not in ds.coords:
        return ds
    ds = ds.copy(deep=False)
    for name, var in ds.data_vars.items():
        if ALL_SAMPLES not in var.attrs.get("cell_methods", ""):
            others = sorted(
                str(c)
                for c in ds.coords
                if c not in ds.dims and c != ALL_SAMPLES and set(ds[c].dims) <= set(var.dims)
            )
            ds[name].encoding["coordinates"] = " ".join(others) or None
    return ds


def write_imputation(ds: xr.Dataset, path: str | os.PathLike, *, complevel: int = 4) -> Path:
    """Write an imputation to compressed netCDF-4 (CF-1.8), atomically, streaming dask blocks.

    A lazy Dataset (from a dask-backed input) is computed block by block while it is written,
    so memory stays bounded by a few blocks. The file passes the IOOS compliance checker's
    `cf:1.8` test with no errors (see `_cf_encoding`, `_label_time_axis`).
    """
    encoding = _cf_encoding(ds, complevel)
    ds = _list_all_samples_where_used(ds)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine=NETCDF_ENGINE, encoding=encoding)
    return Path(path)
