"""The `manifold-aps impute` workflow: read, select, mask, fit or load a model, impute, score, write, map."""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from climate.era5 import _expand as input_files
from climate.era5 import open_era5
from climate.impute import OBSERVED, impute, write_imputation
from climate.masks import align_mask, crop_region, missing_mask, parse_mask_spec
from climate.model import GaussianImputer, ImputationModel, load_model
from climate.plot import plot_imputation
from climate.schema import LATITUDE, LONGITUDE, TIME
from climate.scores import imputation_scores
from manifold_aps.training import read_weights_file

__all__ = ["DEFAULT_NOISE_STD", "ImputeRequest", "coarsen_grid", "parse_period", "run_impute"]

DEFAULT_NOISE_STD = 0.1  # observation error std (variable units) when neither --noise-std nor a model gives one


@dataclass(frozen=True, kw_only=True)
class ImputeRequest:
    """Everything `manifold-aps impute` was asked (see its `--help` for each field).

    Attributes:
        input: file, glob or zarr store.
        skip_corrupt_grib: read GRIB files with corrupted messages without them (else refused).
        variable: variable name.
        masks: mask specs, combined with "and" (observed only where all observe).
        engine: "gaussian", "dps", "aps", "implicit" or "avi".
        checkpoint: model file (required for dps/aps).
        fit_period: "START:END" of the gaussian fit, or None.
        period: "START:END" of the imputed times, or None (all).
        select: "DIM=VALUE" selections of extra dimensions.
        region: "S:N:W:E" box to crop the field to (degrees), or None.
        coarsen: average blocks of `coarsen x coarsen` cells first (1: keep the grid).
        save_model: where to save a fitted gaussian model, or None.
        samples: posterior samples per field (>= 2 unless the engine is gaussian: the others'
            std is that of their samples).
        noise_std: observation error std of the likelihood, variable units, > 0; None: the model's
            own (a `--save-model` file, a distilled engine), else `DEFAULT_NOISE_STD`. Given with a
            gaussian `checkpoint` it replaces the saved value (the prior is unchanged); a distilled
            engine (aps, implicit, avi) refuses a value other than its own.
        quantiles, seed, chunk_size, dps_steps, guidance: as in `impute`, `load_model`.
        output: output netCDF path.
        plot: output PNG path, or None.
        plot_time: time to map, or None (the first).
        progress: progress bars.
    """

    input: str
    skip_corrupt_grib: bool = False
    variable: str = "t2m"
    masks: tuple[str, ...] = ("nan",)
    engine: str = "gaussian"
    checkpoint: str | None = None
    fit_period: str | None = None
    period: str | None = None
    select: tuple[str, ...] = ()
    region: str | None = None
    coarsen: int = 1
    save_model: str | None = None
    samples: int = 16
    quantiles: tuple[float, ...] = ()
    seed: int = 0
    noise_std: float | None = None
    chunk_size: int | None = None
    dps_steps: int = 1000
    guidance: float = 1.0
    output: str = "imputed.nc"
    plot: str | None = None
    plot_time: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.engine not in ("gaussian", "dps", "aps", "implicit", "avi"):
            raise ValueError(f"engine must be gaussian, dps, aps, implicit or avi, got {self.engine!r}")
        if self.engine != "gaussian" and not self.checkpoint:
            raise ValueError(f"--engine {self.engine} needs --checkpoint (a trained prior or distilled flow)")
        if self.coarsen < 1:
            raise ValueError(f"--coarsen must be >= 1, got {self.coarsen}")
        if self.save_model and (self.engine != "gaussian" or self.checkpoint):
            raise ValueError("--save-model saves a gaussian model fitted here (no --checkpoint)")
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        if self.samples < 2 and self.engine != "gaussian":  # climate.model._summary: std of the samples
            raise ValueError(
                f"--samples {self.samples}: the {self.engine} engine's std is that of its samples and needs "
                "--samples 2 or more (only the gaussian engine has an exact std)"
            )
        if self.noise_std is not None and not (math.isfinite(self.noise_std) and self.noise_std > 0):
            raise ValueError(f"--noise-std must be a positive number (variable units), got {self.noise_std:g}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be a positive integer, got {self.chunk_size}")


def parse_period(text: str | None) -> slice:
    """`"START:END"` (ISO dates/times, either side may be empty) -> a label slice for `.sel`."""
    if text is None:
        return slice(None)
    parts = text.split(":") if text.count(":") == 1 else None
    if parts is None:
        # times may contain colons: split on the one ':' that separates two ISO stamps ("..T12:00:...")
        for i in range(len(text)):
            if text[i] == ":" and _is_stamp(text[:i]) and _is_stamp(text[i + 1 :]):
                parts = [text[:i], text[i + 1 :]]
                break
        else:
            raise ValueError(f"a period must be START:END (ISO times), got {text!r}")
    start, end = (p or None for p in parts)
    for p in (start, end):
        if p is not None and not _is_stamp(p):
            raise ValueError(f"{p!r} in period {text!r} is not an ISO date/time")
    return slice(start, end)


def _is_stamp(text: str) -> bool:
    if text == "":
        return True
    try:
        np.datetime64(text)
    except ValueError:
        return False
    return True


def coarsen_grid(da: xr.DataArray, factor: int) -> xr.DataArray:
    """Plain mean of blocks of `factor x factor` cells (NaN where any cell of a block is NaN),
    trimming rows/columns that do not fill a block; attributes are kept. Centres become the
    blocks' mean coordinates."""
    for dim in (LATITUDE, LONGITUDE):
        if da.sizes[dim] < factor:
            raise ValueError(f"--coarsen {factor}: the field has only {da.sizes[dim]} {dim} values")
    blocks = {LATITUDE: factor, LONGITUDE: factor}
    out = da.coarsen(blocks, boundary="trim").mean()
    any_nan = da.isnull().coarsen(blocks, boundary="trim").max()
    return out.where(~any_nan).assign_attrs(da.attrs)


def _select(da: xr.DataArray, select: tuple[str, ...]) -> xr.DataArray:
    for item in select:
        if "=" not in item:
            raise ValueError(f"--select takes DIM=VALUE, got {item!r}")
        dim, value = item.split("=", 1)
        if dim not in da.dims:
            raise ValueError(f"--select {item}: {da.name!r} has no dimension {dim!r}; it has {list(da.dims)}")
        coord = da[dim].values
        try:
            typed = coord.dtype.type(value)
        except ValueError as err:
            raise ValueError(f"--select {item}: {value!r} is not a {coord.dtype} value of {dim}") from err
        if typed not in coord:
            raise ValueError(f"--select {item}: {dim} has no value {value}; it has {coord.tolist()[:12]}")
        da = da.sel({dim: typed})
    return da


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through symlinks and hard links; either may not exist yet)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_paths(req: ImputeRequest) -> None:
    """Refuse, before any work, an output that would replace an input, another output, or is a folder."""
    inputs = [(f"the input {f}", Path(f)) for f in input_files(req.input)]
    if req.checkpoint:
        inputs.append((f"the --checkpoint {req.checkpoint}", Path(req.checkpoint)))
    outputs = [(flag, Path(path)) for flag, path in
               (("--output", req.output), ("--plot", req.plot), ("--save-model", req.save_model)) if path]
    for i, (flag, path) in enumerate(outputs):
        if path.is_dir():
            raise ValueError(f"{flag} {path} is a folder; give a file name")
        folder = next(f for f in path.absolute().parents if f.exists())  # the folders below it are made
        if not folder.is_dir():
            raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
        for what, other in inputs + [(f"{f} {p}", p) for f, p in outputs[:i]]:
            if _same_file(path, other):
                raise ValueError(f"{flag} {path} is {what}: writing it would replace that file; give another one")


def _with_noise_std(model: ImputationModel, req: ImputeRequest, log) -> ImputationModel:
    """A loaded model with the likelihood noise of `req.noise_std` (None: the model's own)."""
    if req.noise_std is None or model.engine == "dps" or math.isclose(req.noise_std, model.noise_std):
        return model  # load_model gave DPS the value asked for
    if isinstance(model, GaussianImputer):
        log(f"likelihood noise std {req.noise_std:g} {model.units} from --noise-std (the saved model has "
            f"{model.noise_std:g}; its prior is unchanged)")
        return GaussianImputer.from_state({**read_weights_file(req.checkpoint), "noise_std": req.noise_std})
    raise ValueError(
        f"--noise-std {req.noise_std:g}: the {model.engine} engine of {req.checkpoint} was distilled for a noise "
        f"std of {model.noise_std:g} {model.units} and cannot use another; leave --noise-std out"
    )


def _model(req: ImputeRequest, field: xr.DataArray, log, target=None, observed=None) -> ImputationModel:
    """The engine: loaded from `--checkpoint`, or the gaussian one fitted to complete training fields
    (`--fit-period`, else the complete time steps outside `--period`), else to the observed values of
    `target` where `observed` (what a geostatistician does with gappy fields only)."""
    if req.checkpoint:
        model = load_model(
            req.checkpoint, engine=req.engine, noise_std=DEFAULT_NOISE_STD if req.noise_std is None else req.noise_std,
            dps_steps=req.dps_steps, guidance=req.guidance,
        )
        model = _with_noise_std(model, req, log)
        log(f"model: {model.describe()}")
        return model
    if TIME not in field.dims:
        raise ValueError("the gaussian engine fits on time steps; the field has no time dimension (give --checkpoint)")
    if req.fit_period:
        train = field.sel({TIME: parse_period(req.fit_period)})
    else:
        inside = field[TIME].isin(field.sel({TIME: parse_period(req.period)})[TIME]) if req.period else None
        candidates = field if inside is None else field.isel({TIME: ~inside.values})
        complete = ~candidates.isnull().any((LATITUDE, LONGITUDE)).compute()
        train = candidates.isel({TIME: np.flatnonzero(complete.values)})
        if inside is None:
            log("warning: fitting on complete time steps of the imputed period itself; give --fit-period "
                "for a test on held-out times")
    noise_std = DEFAULT_NOISE_STD if req.noise_std is None else req.noise_std
    if train.sizes[TIME] < 2:
        if req.fit_period or target is None:
            raise ValueError(
                f"only {train.sizes[TIME]} complete time step(s) to fit the gaussian engine; give --fit-period"
            )
        log(f"no complete training fields ({train.sizes[TIME]} complete time steps outside --period): fitting the "
            "gaussian engine to the observed values of the imputed fields themselves")
        model = GaussianImputer.fit_to_observations(target, observed, noise_std=noise_std, log=log, progress=req.progress)
    else:
        log(f"fitting the gaussian engine on {train.sizes[TIME]} complete training fields "
            f"({str(train[TIME].values[0])[:16]} .. {str(train[TIME].values[-1])[:16]})")
        model = GaussianImputer.fit(train, noise_std=noise_std, log=log, progress=req.progress)
    if req.save_model:
        model.save(req.save_model)
        log(f"saved the model to {req.save_model}")
    return model


def run_impute(req: ImputeRequest, *, log=print) -> dict:
    """Run one imputation end to end; returns the scores (empty when nothing hidden has a value)."""
    start = time.perf_counter()
    _check_paths(req)
    with warnings.catch_warnings():  # "chunks separate the stored chunks": harmless for reading
        warnings.simplefilter("ignore", UserWarning)
        try:
            ds = open_era5(req.input, req.variable, chunks={TIME: req.chunk_size or 24}, allow_corrupt=req.skip_corrupt_grib)
        except FileNotFoundError:
            raise
        except OSError as err:  # e.g. a truncated netCDF file (HDF5: "truncated file")
            raise ValueError(f"cannot read --input {req.input}: {err}") from err
    field = _select(ds[req.variable], req.select)
    if req.region:
        try:
            south, north, west, east = (float(v) for v in req.region.split(":"))
        except ValueError as err:
            raise ValueError(f"--region takes S:N:W:E in degrees, got {req.region!r}") from err
        field = crop_region(field, lat=(south, north), lon=(west, east))
    if req.coarsen > 1:
        field = coarsen_grid(field, req.coarsen)
    log(f"read {req.variable} {dict(field.sizes)} from {req.input}")
    target = field.sel({TIME: parse_period(req.period)}) if req.period and TIME in field.dims else field
    if TIME in target.dims and target.sizes[TIME] == 0:
        raise ValueError(f"--period {req.period} selects no time step of {req.input}")
    observed = missing_mask(target)
    descriptions = [observed.attrs["description"]]
    for spec in req.masks:
        if spec != "nan":
            mask = parse_mask_spec(spec, target, seed=req.seed)
            descriptions.append(mask.attrs.get("description", spec))
            observed = observed & mask
    observed.attrs["description"] = " & ".join(descriptions)
    align_mask(observed, target, name="mask")  # its checks (e.g. repeated input times) before any fit
    model = _model(req, field, log, target, observed)
    result = impute(
        target, observed, model, n_samples=req.samples, seed=req.seed, quantiles=req.quantiles,
        chunk_size=req.chunk_size, compute=False, progress=req.progress,
    )
    result.attrs["source"] = Path(str(req.input)).name
    write_imputation(result, req.output)
    log(f"wrote {req.output}")
    written = xr.open_dataset(req.output, engine="h5netcdf")
    try:
        scores = imputation_scores(written, target, req.variable)
        if scores:
            log(
                f"scores over the {100 * scores['hidden_fraction']:.0f} % hidden cells that have a value in the input "
                f"(area-weighted): RMSE of the mean {scores['rmse_mean']:.3f}, of one sample "
                f"{scores['rmse_sample']:.3f}, CRPS {scores['crps']:.3f}, 90 % coverage "
                f"{100 * scores['coverage_90']:.1f} %, spread/skill {scores['spread_skill']:.2f} [{model.units}]"
            )
        if req.plot:
            when = req.plot_time
            plot_imputation(written, target, req.variable, req.plot, time=when, engine=model.engine)
            log(f"wrote {req.plot}")
        hidden = float((written[OBSERVED] == 0).mean())
    finally:
        written.close()
    log(f"{100 * hidden:.0f} % of cells imputed in {time.perf_counter() - start:.1f} s")
    return scores
