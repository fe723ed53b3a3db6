"""The ERA5 training datasets of the project's priors, registered with `manifold_aps.datasets`.

`manifold_aps.build_prior_dataset("era5-uk")` and ``"era5-global"`` reach these builders through
the ``manifold_aps.datasets`` entry points of this package (`pyproject.toml`): the core package
never imports `climate`.

* ``era5-uk``: ERA5 t2m over the UK at 0.25° (the shipped sample). Train: 1-18 March 2019,
  validation: 19-21 March, test: 25-31 March.
* ``era5-global``: ERA5 t2m, global 1° (24 steps, 25-31 March 2026), regridded to HEALPix
  (nside 16); augmented by rotations about the polar axis by whole degrees (an exact roll of
  the lat-lon field before regridding). Train: steps 0-15, validation 16-17, test 18-23.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from climate.demo import default_sample_path
from climate.era5 import grid_domain, open_era5, spatial_dims, to_signal
from climate.regrid import healpix_field, latlon_to_healpix_matrix, parse_grid
from climate.schema import TIME
from manifold_aps.datasets import (
    PriorDataset,
    SO3Rotations,
    TensorSource,
    checked_digest,
    require_file,
    split_train_validation,
)
from manifold_aps.geometry import HealpixSphere
from manifold_aps.geometry.domain import sparse_to_torch

__all__ = [
    "AUGMENTATIONS",
    "era5_global",
    "era5_uk",
    "era5_uk_days",
    "grid_file_dataset",
    "longitude_rolls",
]

AUGMENTATIONS = ("auto", "longitude", "so3", "none")  # grid_file_dataset's `augment`


def longitude_rolls(nlat: int, nlon: int):
    """An augmentation `(x (n, N, C), generator) -> (n, N, C)` of random longitude rotations.

    It rotates each field of a global, evenly spaced lat-lon grid about the polar axis by a random
    whole number of cells (an exact rotation of the sphere: `torch.roll` along longitude).
    """

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        shifts = torch.randint(0, nlon, (x.shape[0],), generator=generator)
        grid = x.reshape(x.shape[0], nlat, nlon, x.shape[-1])
        rolled = [torch.roll(g, int(k), dims=1) for g, k in zip(grid, shifts, strict=True)]
        return torch.stack(rolled).reshape(x.shape)

    return augment


def _rolls_exactly(domain) -> bool:
    """A global lat-lon grid of even longitude spacing: a roll is a rotation of the sphere."""
    step = np.diff(domain.lon_deg) % 360.0
    return domain.periodic and (step.size == 0 or bool(np.allclose(step, step[0])))


def grid_file_dataset(
    path: str | Path,
    var: str | list[str],
    *,
    select: tuple[str, ...] = (),
    channels_from: str | None = None,
    fit_period: str | None = None,
    coarsen: int = 1,
    val_fraction: float = 0.1,
    augment: str = "auto",
    sample_dim: str = "time",
    grid: str = "native",
    digest: str | None = None,
) -> PriorDataset:
    """A user's gridded fields as a prior's training data (``train-prior --input FILE --var VAR``).

    Several variables (``--var t2m msl``) and/or the values of a dimension (``--channels-from
    level=500,850``) become the channels of the signals `(S, N, C)`, in the order of
    `climate.workflow.channel_fields`: variable by variable, each at the values in the order
    given. The prior standardises each channel by its own mean and std (`ChannelNormalizer`); the
    dataset's `extra["channel_fields"]` (recorded in the checkpoint's `data`) lists each channel's
    variable, units and value of `channels_from` (`climate.model.Channel.to_dict`).

    Arguments:
        path: a netCDF, GRIB or zarr file (`open_era5`: any variable, CF times, cftime calendars).
        var: the variable, or several (on the same grid and sample steps).
        select: `DIM=VALUE` items fixing other dimensions (e.g. `level=500`), as `impute --select`.
        channels_from: `DIM=V1,V2,...` (each value of DIM a channel, in this order) or `DIM` (all
            of its values, in the file's order), e.g. `level=500,850`; None: one channel per
            variable.
        fit_period: time ranges trained on (`parse_period`), default all.
        coarsen: average blocks of `coarsen x coarsen` cells first (`coarsen_grid`).
        val_fraction: share of the time steps held out for validation (the last ones).
        augment: "longitude" (random rotations about the polar axis: global, evenly spaced grids
            only), "so3" (random rotations in SO(3): HEALPix fields, `SO3Rotations`), "none", or
            "auto" (longitude where it is exact, so3 on HEALPix, else none: regional grids).
        sample_dim: the dimension whose entries are the training fields (default time; e.g.
            `month` for a file of monthly means indexed by month number, `number` for ensemble
            members). `fit_period` applies to time only.
        grid: "native" (the file's own grid) or "healpix:NSIDE": a global lat-lon field averaged
            into HEALPix pixels first (`climate.regrid.healpix_field`; RING order), the prior's
            domain then a `HealpixSphere` (and `augment="auto"` SO(3) rotations).
        digest: the SHA-256 the file must have (a rebuilt dataset: the same file).

    Time steps with any missing cell (in any channel) are left out (the prior learns complete
    fields); the log of the dataset's `description` says how many.

    Raises:
        ValueError: dimensions left besides time/latitude/longitude (say `select` or
            `channels_from`), variables of other grids or sample steps, no complete time step, a
            file of another digest, `augment="longitude"` on a grid it would distort.
    """
    from climate.model import Channel
    from climate.workflow import channel_fields

    path = Path(path)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {list(AUGMENTATIONS)}, got {augment!r}")
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    # a zarr folder has no one digest
    found = checked_digest(path, digest) if path.is_file() else None
    fields = channel_fields(open_era5(path), var, select=tuple(select), channels_from=channels_from)
    fields = [_training_field(da, sample_dim, fit_period, coarsen) for da in fields]
    nside = parse_grid(grid)
    if nside is not None:
        fields = [healpix_field(da, nside) for da in fields]
    first = fields[0]
    for da in fields[1:]:
        _same_steps_and_grid(da, first, sample_dim)
    dim = None if channels_from is None else channels_from.partition("=")[0].strip()
    channels = [Channel.of(da, dim) for da in fields]
    labels = ", ".join(c.label for c in channels)
    complete = np.logical_and.reduce([~da.isnull().any(spatial_dims(da)).values for da in fields])
    if not complete.any():
        raise ValueError(
            f"no field of {labels} in {path.name} is complete"
            f"{' in every channel' if len(fields) > 1 else ''}; a prior trains on complete fields"
        )
    left_out = int((~complete).sum())
    fields = [da.isel({sample_dim: np.flatnonzero(complete)}) for da in fields]
    domain = grid_domain(fields[0])
    x = torch.cat([to_signal(da, dtype=torch.float32)[0] for da in fields], dim=-1)
    train, val = split_train_validation(x, val_fraction)
    if isinstance(domain, HealpixSphere):  # a HEALPix GRIB field: full-sky, so3 (or none)
        if augment == "longitude":
            raise ValueError(
                "augment='longitude' rotates lat-lon grids; a HEALPix field takes so3 or none"
            )
        rotate = augment in ("auto", "so3")
        augmentation = SO3Rotations(domain.nside, nest=domain.nest) if rotate else None
        grid_text = f"HEALPix nside {domain.nside} ({'nested' if domain.nest else 'ring'}) pixels"
        if nside is not None:
            grid_text += " (averaged from its lat-lon cells)"
        augmented = "random SO(3) rotations" if rotate else "none"
    else:
        if augment == "so3":
            raise ValueError("augment='so3' rotates full-sky HEALPix fields, not lat-lon grids")
        rolls = _rolls_exactly(domain)
        if augment == "longitude" and not rolls:
            raise ValueError(
                "augment='longitude' needs a global grid of even longitude spacing (a roll is "
                "then a rotation)"
            )
        use_rolls = augment == "longitude" or (augment == "auto" and rolls)
        nlat, nlon = domain.shape
        augmentation = longitude_rolls(nlat, nlon) if use_rolls else None
        grid_text = f"{nlat} x {nlon} grid"
        augmented = "random longitude rotations" if use_rolls else "none"
    args = {
        "path": str(path),
        "var": var if isinstance(var, str) else list(var),
        "select": list(select),
        "fit_period": fit_period,
        "coarsen": coarsen,
        "val_fraction": val_fraction,
        "augment": augment,
        "sample_dim": sample_dim,
        "digest": found,
    }
    if channels_from is not None:  # (a one-variable prior's record as it always was)
        args["channels_from"] = channels_from
    if nside is not None:  # likewise
        args["grid"] = grid
    source = {"builder": "grid-file", "args": args}
    steps = fields[0][sample_dim].values
    span = f"{sample_dim} {str(steps[0])[:16]} .. {str(steps[-1])[:16]}"
    variables = list(dict.fromkeys(c.variable for c in channels))
    return PriorDataset(
        f"{labels} of {path.name}",
        domain,
        TensorSource(train, val, augmentation),
        torch.zeros(0, domain.num_nodes, len(channels)),
        ", ".join(c.units for c in channels),
        f"{labels} of {path.name} on its {grid_text}"
        f"{f' coarsened {coarsen}x' if coarsen > 1 else ''}, "
        f"{train.shape[0]} training + {val.shape[0]} validation fields ({span}"
        f"{f'; {left_out} incomplete fields left out' if left_out else ''}); augmentation: "
        f"{augmented}",
        extra={
            "variable": ", ".join(variables),
            "source": source,
            "channel_fields": [c.to_dict() for c in channels],
        },
    )


def _training_field(da, sample_dim: str, fit_period: str | None, coarsen: int):
    """One channel's field `(sample_dim, latitude, longitude)`, its period, coarsened, loaded."""
    from climate.workflow import coarsen_grid, parse_period

    name = da.name
    if sample_dim not in da.dims:
        if sample_dim != TIME:
            raise ValueError(
                f"--sample-dim {sample_dim}: {name!r} has no such dimension; it has {list(da.dims)}"
            )
        da = da.expand_dims(TIME)
    extra_dims = [d for d in da.dims if d not in (sample_dim, *spatial_dims(da))]
    if extra_dims:
        raise ValueError(
            f"{name!r} has dimensions {extra_dims} besides {sample_dim}/latitude/longitude; "
            "fix them with --select DIM=VALUE, make them channels with --channels-from DIM (or "
            "name the fields' dimension with --sample-dim)"
        )
    if fit_period:
        if sample_dim != TIME:
            raise ValueError(
                f"--fit-period selects times; the fields here are along {sample_dim!r}"
            )
        da = parse_period(fit_period, "--fit-period").select(da)
    if coarsen > 1:
        da = coarsen_grid(da, coarsen)
    return da.transpose(sample_dim, *spatial_dims(da)).load()


def _same_steps_and_grid(da, first, sample_dim: str) -> None:
    """Refuse a channel's field on another grid or at other steps than the first channel's."""
    for dim in (sample_dim, *spatial_dims(first)):
        a, b = np.asarray(da[dim].values), np.asarray(first[dim].values)
        same = a.shape == b.shape and (
            np.allclose(a, b, rtol=0, atol=1e-6) if a.dtype.kind in "fiu" else bool((a == b).all())
        )
        if not same:
            raise ValueError(
                f"{da.name!r} and {first.name!r} have other {dim} values ({a.size} and {b.size}); "
                "the channels of one prior share the grid and the steps"
            )


def era5_uk(root: Path) -> PriorDataset:
    """``era5-uk``: the shipped UK sample (33 x 49 cells, K); `root` is not used (it ships)."""
    da = open_era5(default_sample_path(), "t2m")["t2m"].load()
    day = da["time"].dt.day
    return _uk_split(
        da,
        day <= 18,
        (day >= 19) & (day <= 21),
        day >= 25,
        "era5-uk",
        "ERA5 t2m UK 0.25°, hourly; train 1-18 Mar 2019, val 19-21, test 25-31",
    )


def era5_uk_days(held_out: tuple[int, ...], validation: tuple[int, ...]) -> PriorDataset:
    """The UK sample split by days of March 2019: `held_out` days test, `validation` days val.

    The days next to each held-out day are left out (hourly fields a day apart are not
    independent); every other day trains. E.g. `era5_uk_days((4, 10, 16, 22, 28), (1, 31))`:
    336 training hours, 48 validation and 120 test hours (`benchmarks/uk_interleaved_days.py`).
    """
    da = open_era5(default_sample_path(), "t2m")["t2m"].load()
    day = da["time"].dt.day
    gap = sorted({d + s for d in held_out for s in (-1, 1)})
    test, val = day.isin(list(held_out)), day.isin(list(validation))
    return _uk_split(
        da,
        ~(test | val | day.isin(gap)),
        val,
        test,
        "era5-uk-interleaved",
        f"ERA5 t2m UK 0.25°, hourly, March 2019; held-out days {held_out}",
    )


def _uk_split(da, train, val, test, name: str, description: str) -> PriorDataset:
    """A `PriorDataset` of the UK field `da` from three boolean selections of its times."""

    def signals(selected):
        return to_signal(da.where(selected, drop=True), dtype=torch.float32)[0]

    return PriorDataset(
        name,
        grid_domain(da),
        TensorSource(signals(train), signals(val)),
        signals(test),
        "K",
        description,
        extra={"variable": "t2m"},
    )


def era5_global(root: Path, nside: int = 16) -> PriorDataset:
    """``era5-global``: `root`/era5's global 1° file on HEALPix `nside` (K), rolled in longitude."""
    da = open_era5(
        require_file(root / "era5" / "era5_global_1deg_2026-03-25_to_31_24steps.nc"), "t2m"
    )["t2m"].load()
    grid = grid_domain(da)
    matrix = sparse_to_torch(latlon_to_healpix_matrix(grid, nside), torch.float32)
    fields = torch.from_numpy(da.values.astype(np.float32))  # (T, nlat, nlon)
    nlon = fields.shape[-1]

    def regrid(x):  # (n, nlat, nlon) -> (n, Npix, 1)
        flat = x.reshape(x.shape[0], -1).T
        return torch.sparse.mm(matrix, flat).T[:, :, None]

    train_ll = fields[:16]

    class _Rolled(TensorSource):
        def batch(self, generator, n):
            idx = torch.randint(0, train_ll.shape[0], (n,), generator=generator)
            shifts = torch.randint(0, nlon, (n,), generator=generator)
            x = torch.stack(
                [torch.roll(train_ll[i], int(s), dims=-1) for i, s in zip(idx, shifts, strict=True)]
            )
            return regrid(x)

    source = _Rolled(regrid(train_ll), regrid(fields[16:18]))
    return PriorDataset(
        "era5-global",
        HealpixSphere(nside),
        source,
        regrid(fields[18:]),
        "K",
        f"ERA5 t2m global 1° regridded to HEALPix nside {nside}; train steps 0-15 (rolled in "
        "longitude), val 16-17, test 18-23",
    )
