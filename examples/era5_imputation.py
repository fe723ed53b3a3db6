r"""Impute ERA5 2 m temperature, regional and global, with 70 % of the cells hidden three ways.

A thin script over the `climate` module (what `manifold-aps impute` runs, with one model reused
for every mask). Two domains:

* ``uk``: the ERA5 sample shipped with the package (`climate.default_sample_path()`: t2m,
  UK and Ireland, 0.25°, 33 x 49 cells, hourly, March 2019); the Gaussian engine is fitted on
  1-24 March (576 fields), and 28 March (24 hourly fields) is imputed;
* ``global``: ERA5 t2m global 1° (`$MANIFOLD_APS_DATA/era5/` file
  `era5_global_1deg_2026-03-25_to_31_24steps.nc`, 24 steps over 25-31 March 2026), averaged
  over 4 x 4 blocks (`climate.coarsen_grid`: 45 x 90 = 4050 cells, so that the dense Gaussian
  engine fits); fitted on 25-29 March (17 fields), 30-31 March (7 fields) imputed.

Masks (observed cells, each field keeps its NaN cells hidden too), all about 70 % hidden:

* ``random``: 70 % of the cells hidden at random, a new draw every time step
  (`climate.random_mask`);
* ``stations``: a fixed station network (`climate.station_mask`). There is no real station list in
  the data, so the script makes a synthetic one and says so (`climate.synthetic_stations`): 30 %
  of the cells drawn at random (seeded, probability proportional to cell area) with one station
  at a random point inside each, written to `synthetic_stations_<domain>.csv` in the output
  folder (columns station, lat, lon);
* ``swaths``: satellite swaths, new ones every time step (`climate.swath_mask`): 2 swaths 150 km
  wide over the UK, 3 swaths 1500 km wide on the globe (about 30 % of the cells on average).

Engines: ``--engine gaussian`` (default; `climate.GaussianImputer` fitted on the training period:
hour-of-day climatology, per-cell standard deviation and a Matérn prior of the standardised
anomalies, exact posterior), or ``--engine dps|aps|implicit|avi --checkpoint PATH`` (a
checkpoint of `manifold-aps train-prior` / `distill` on the same grid, opened by
`climate.load_model`; trained checkpoints exist only for the UK grid, so these engines default
to ``--domain uk``).

For each (domain, mask): `<domain>_<mask>.nc` (CF netCDF: posterior mean, std, samples, observed
flag; `climate.write_imputation`) and `<domain>_<mask>.png` (cartopy map of the first imputed time:
truth, observed cells, mean, std; `climate.plot_imputation`); then a table of scores over the
hidden cells, area-weighted (`climate.imputation_scores`), next to the RMSE of the training
period's mean field, and `scores.json`.

Run from the repository root::

    .venv/bin/python examples/era5_imputation.py           # both domains, 3 masks, 16 samples
    .venv/bin/python examples/era5_imputation.py --quick   # 4 UK hours, 2 global steps at 8°
    .venv/bin/python examples/era5_imputation.py --engine aps \
        --checkpoint runs/aps-era5-uk/checkpoint.pt

The UK domain needs only the package; the global one needs the shared data (`$MANIFOLD_APS_DATA`,
default `../shared/data`). Measured on the project's 2-core CPU with two trainings running
beside it, one thread, eigenbases in the disk cache: 2 min 56 s wall (1 min 48 s of CPU) in full,
of which about 2.5 min for the global grid; 12 s with `--quick`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

import climate
from manifold_aps import cell_area_weights, data_dir, xr_rmse

GLOBAL_FILE = "era5/era5_global_1deg_2026-03-25_to_31_24steps.nc"
COLUMNS = {  # scores.json key -> column of the printed table
    "hidden_fraction": "hidden %",
    "rmse_mean": "RMSE mean",
    "rmse_sample": "RMSE 1 sample",
    "crps": "CRPS",
    "coverage_90": "cov. 90 %",
    "spread_skill": "spread/skill",
    "rmse_training_mean_field": "RMSE train mean",
}


@dataclass(frozen=True)
class Setting:
    """One domain: input file, block averaging, fitted and imputed periods, swaths (count, km)."""

    path: Path
    coarsen: int
    fit_period: str
    period: str
    swaths: tuple[int, float]


def settings(quick: bool) -> dict[str, Setting]:
    """The two domains, full or `--quick` (fewer fields, the global grid at 8° instead of 4°)."""
    uk, world = climate.default_sample_path(), data_dir() / GLOBAL_FILE
    if quick:
        return {
            "uk": Setting(
                uk, 1, "2019-03-18:2019-03-24", "2019-03-28T10:2019-03-28T13", (2, 150.0)
            ),
            "global": Setting(
                world, 8, "2026-03-25:2026-03-29", "2026-03-30T00:2026-03-30T12", (3, 1500.0)
            ),
        }
    return {
        "uk": Setting(uk, 1, "2019-03-01:2019-03-24", "2019-03-28T00:2019-03-28T23", (2, 150.0)),
        "global": Setting(world, 4, "2026-03-25:2026-03-29", "2026-03-30:2026-03-31", (3, 1500.0)),
    }


def masks(target, name: str, setting: Setting, args) -> dict:
    """The observed-cell masks of `target` (True = observed), by mask name."""
    stations = Path(args.out) / f"synthetic_stations_{name}.csv"
    stations.parent.mkdir(parents=True, exist_ok=True)
    climate.synthetic_stations(target, 1 - args.missing, args.seed).to_csv(stations, index=False)
    count, width = setting.swaths
    return {
        "random": climate.random_mask(target, args.missing, seed=args.seed, per_time=True),
        "stations": climate.station_mask(target, stations),
        "swaths": climate.swath_mask(
            target, num_swaths=count, width_km=width, seed=args.seed, per_time=True
        ),
    }


def impute_domain(name: str, setting: Setting, args) -> list[dict]:
    """Impute one domain under every mask with one model; write the files, return score rows."""
    field = climate.open_era5(setting.path, "t2m")["t2m"]
    if setting.coarsen > 1:
        field = climate.coarsen_grid(field, setting.coarsen)
    train = climate.parse_period(setting.fit_period, "fit_period").select(field).load()
    target = climate.parse_period(setting.period).select(field).load()
    cells = target.sizes["latitude"] * target.sizes["longitude"]
    print(
        f"{name}: t2m {target.sizes['latitude']} x {target.sizes['longitude']} cells, "
        f"{train.sizes['time']} training fields, {target.sizes['time']} imputed",
        flush=True,
    )
    if args.engine == "gaussian":
        model = climate.GaussianImputer.fit(
            train, noise_std=args.noise_std, log=lambda line: print("  " + line)
        )
    else:
        model = climate.load_model(
            args.checkpoint,
            engine=args.engine,
            noise_std=args.noise_std,
            dps_steps=args.dps_steps,
            guidance=args.guidance,
        )
        print(f"  model: {model.describe()}")
    weights, climatology = cell_area_weights(target["latitude"]), train.mean("time")
    rows = []
    for mask_name, observed in masks(target, name, setting, args).items():
        t0 = time.perf_counter()
        observed = climate.missing_mask(target) & observed
        result = climate.impute(
            target, observed, model, n_samples=args.samples, seed=args.seed, progress=False
        )
        stem = Path(args.out) / f"{name}_{mask_name}"
        climate.write_imputation(result, stem.with_suffix(".nc"))
        climate.plot_imputation(
            result, target, "t2m", stem.with_suffix(".png"), engine=model.engine
        )
        scores = climate.imputation_scores(result, target, "t2m")
        hidden = (result["observed"] == 0) & target.notnull()
        baseline = climatology.broadcast_like(target)
        rmse = xr_rmse(baseline, target, weights=weights, where=hidden, dims=None)
        scores["rmse_training_mean_field"] = float(rmse)
        seconds = round(time.perf_counter() - t0, 1)
        rows.append(
            {
                "domain": name,
                "mask": mask_name,
                "engine": args.engine,
                "fields": target.sizes["time"],
                "cells": cells,
                **scores,
                "seconds": seconds,
                "netcdf": str(stem.with_suffix(".nc")),
                "png": str(stem.with_suffix(".png")),
            }
        )
        print(f"  {mask_name:8s} done in {seconds:.1f} s: {stem}.nc, {stem}.png", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--domain",
        choices=["uk", "global", "both"],
        help="which domain (default: both for gaussian, uk for the trained engines)",
    )
    p.add_argument(
        "--engine",
        default="gaussian",
        choices=["gaussian", "dps", "aps", "implicit", "avi"],
        help="gaussian (fitted here; default), or a trained engine given by --checkpoint",
    )
    p.add_argument(
        "--checkpoint",
        help="train-prior (dps) or distill (aps, implicit, avi) checkpoint on the same grid",
    )
    p.add_argument("--dps-steps", type=int, default=1000, help="DPS steps (default: 1000)")
    p.add_argument("--guidance", type=float, default=1.0, help="DPS step size (default: 1.0)")
    p.add_argument(
        "--missing",
        type=float,
        default=0.7,
        help="share hidden by the random mask; the stations cover the rest (default: 0.7)",
    )
    p.add_argument("--samples", type=int, default=16, help="samples per field (default: 16)")
    p.add_argument("--noise-std", type=float, default=0.1, help="noise, K (default: 0.1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="4 UK hours, 2 global steps on an 8° grid (22 x 45), 4 samples, a week of UK training",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of masks, stations and samples")
    p.add_argument("--out", type=Path, default=Path("example_output/era5"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    if args.engine != "gaussian" and not args.checkpoint:
        p.error(f"--engine {args.engine} needs --checkpoint PATH")
    if args.engine == "gaussian" and args.checkpoint:
        p.error("--checkpoint is for the trained engines; the gaussian engine is fitted here")
    domain = args.domain or ("both" if args.engine == "gaussian" else "uk")
    if args.quick:
        args.samples = 4
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    chosen = {name: s for name, s in settings(args.quick).items() if domain in (name, "both")}
    for setting in chosen.values():
        if not setting.path.is_file():
            sys.exit(
                f"{setting.path} not found; set MANIFOLD_APS_DATA to the folder of the shared data "
                f"(or run --domain uk, which needs only the package)"
            )
    rows = []
    for name, setting in chosen.items():
        try:
            rows += impute_domain(name, setting, args)
        except ValueError as err:  # e.g. a checkpoint of another grid: the message says which
            sys.exit(f"{name}: {err}")
    table = pd.DataFrame(rows).set_index(["domain", "mask"])[list(COLUMNS)].rename(columns=COLUMNS)
    percent = ["hidden %", "cov. 90 %"]
    table[percent] = (100 * table[percent]).round(1)
    print(f"\nscores over the hidden cells, area-weighted [K]:\n{table.round(3).to_string()}")
    path = Path(args.out) / "scores.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"\nwrote {path}; {time.perf_counter() - start:.0f} s in all")
    return rows


if __name__ == "__main__":
    main()
