"""Every engine on the global 1° ERA5 file through the own-data commands; costs at 65,160 cells.

Issue 16, must-show 1(a). Part A, end to end as a user would, from subprocesses, on the file's
field averaged over 4 x 4 blocks (`--coarsen 4`: 45 x 90 cells): `train-prior --input FILE --var
t2m --fit-period ...` (the first 18 steps, 25-30 March 2026), `distill --prior ...` for each
distilled engine (no --dataset: the prior knows its data), then `impute --period 2026-03-31
--mask random:0.7 --engine E --checkpoint C` on the 4 held-out steps of 31 March, whose scores
(over the hidden cells, against the file's own values) are parsed from its log; the gaussian
engine fitted on the same steps and DPS on the same cells. Part B, at the native 1° grid (65,160
cells): seconds per training step of the score prior (`train-prior` itself, a few steps),
samples per second of every distilled engine for one observation on one CPU thread (built on
that prior; sampling costs do not depend on training), and DPS's seconds per reverse step (a
sample takes `--dps-steps` of them).

Not at native resolution: distilling (Part A's `distill`) first fits the engines' first estimate to
the prior's per-mode variances, estimated from 128 reverse-SDE samples of 200 steps on 512
Laplace-Beltrami modes; at 65,160 cells that is 25,600 network evaluations of the full grid (and
9 GB): hours on this CPU. The scores of Part A say what such short CPU runs reach
(`--prior-steps`, `--engine-steps`), not what the engines can. Writes
`results/native_grid_engines.csv`.

    OMP_NUM_THREADS=1 python benchmarks/native_grid_engines.py                 # ~40 min on 2 cores
    python benchmarks/native_grid_engines.py --prior-steps 5 --engine-steps 3   # smoke

    # 1(b), a variable not used before, Part A only:
    python benchmarks/native_grid_engines.py --var msl --engines aps --skip-native \
        --out benchmarks/results/native_grid_engines_msl.csv

    # Part A on HEALPix pixels instead of block means (`--grid healpix:32`: 12,288 pixels):
    python benchmarks/native_grid_engines.py --grid healpix:32 --engines aps --skip-native \
        --runs runs/native-hp32 --out benchmarks/results/native_grid_engines_hp32.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_csv

from manifold_aps.datasets import data_dir

RESULTS = Path(__file__).resolve().parent / "results"
FILE = Path("era5") / "era5_global_1deg_2026-03-25_to_31_24steps.nc"
FIT_PERIOD = "2026-03-25:2026-03-30T04"  # steps 0-17
TEST_DAY = "2026-03-31"  # steps 20-23
DISTILLED = {  # row name -> distill options
    "aps": ["--engine", "aps"],
    "aps-spectral": ["--engine", "aps", "--coupling", "spectral"],
    "implicit": ["--engine", "implicit"],
    "avi": ["--engine", "avi"],
}
SCORES = re.compile(
    r"RMSE of the mean ([\d.]+), of one sample ([\d.]+), CRPS ([\d.]+), 90 % coverage ([\d.]+) %, "
    r"spread/skill ([\d.na]+)"
)


def cli(*args, cwd: Path) -> tuple[str, float]:
    """Run `manifold-aps ARGS` in a subprocess (one torch thread); its output and wall time."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "manifold_aps.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(
            f"manifold-aps {' '.join(map(str, args[:3]))} failed:\n{res.stderr[-3000:]}"
        )
    return res.stdout + res.stderr, time.perf_counter() - start


def seconds_per_step(run: Path) -> float:
    """Mean wall seconds per training step of a `Trainer` run (its `log.csv`)."""
    with open(run / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    return float(rows[-1]["seconds"]) / int(rows[-1]["step"])


def parse_scores(log: str) -> dict:
    match = SCORES.search(log)
    if match is None:
        raise SystemExit(f"no scores in the impute log:\n{log[-2000:]}")
    rmse, rmse1, crps, cov, ss = match.groups()
    return {
        "rmse": float(rmse),
        "rmse_sample": float(rmse1),
        "crps": float(crps),
        "coverage_90": float(cov) / 100,
        "spread_skill": float(ss) if ss != "nan" else float("nan"),
    }


def seconds_per_sample(sampler, domain, n: int, *, grad: bool = False) -> float:
    """Wall seconds per sample of `sampler.sample` for one observation (70 % hidden), one thread.

    Timed after a warm-up call (caches, first-call overheads); `grad`: the sampler needs autograd.
    """
    from manifold_aps.operators import Mask

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(1, domain.num_nodes, 1, generator=g) > 0.7
    y, op = 280.0 * mask.float(), Mask(domain, mask)
    with torch.enable_grad() if grad else torch.no_grad():
        sampler.sample(y, op, 1, rng=g)
        start = time.perf_counter()
        sampler.sample(y, op, n, rng=g)
    return (time.perf_counter() - start) / n


def native_engines(prior) -> dict:
    """Every distilled engine built (untrained) on the native `prior`: `{row name: engine}`."""
    from manifold_aps.flows import FlowConfig
    from manifold_aps.operators import GaussianNoise
    from manifold_aps.posterior.aps import APSConfig
    from manifold_aps.posterior.engines import ENGINES

    settings = {
        "aps": ("aps", None),
        "aps-spectral": ("aps", APSConfig(flow=FlowConfig(coupling="spectral"))),
        "implicit": ("implicit", None),
        "avi": ("avi", None),
    }
    engines = {}
    for row, (name, config) in settings.items():
        recipe = ENGINES[name].engine_recipe()
        engines[row] = recipe.build(
            prior.domain, 1, prior, GaussianNoise(0.1), config or recipe.config_cls(), 0
        ).eval()
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--file", type=Path, default=None, help=f"ERA5 file (default $MANIFOLD_APS_DATA/{FILE})"
    )
    parser.add_argument(
        "--runs", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "native-1deg"
    )
    parser.add_argument("--prior-steps", type=int, default=1000)
    parser.add_argument("--engine-steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--native-steps", type=int, default=5, help="prior training steps timed at native 1 deg"
    )
    parser.add_argument(
        "--samples", type=int, default=8, help="posterior samples per test field (impute)"
    )
    parser.add_argument(
        "--rate-samples", type=int, default=16, help="samples timed per engine for samples/s"
    )
    parser.add_argument(
        "--dps-steps",
        type=int,
        default=20,
        help="DPS steps in the impute run (2 samples per field; its cost is linear in steps)",
    )
    parser.add_argument(
        "--var", default="t2m", help="variable of the file (default t2m; msl: issue 16, 1(b))"
    )
    parser.add_argument(
        "--engines",
        nargs="*",
        default=list(DISTILLED),
        choices=list(DISTILLED),
        help="distilled engines of Part A (default all)",
    )
    parser.add_argument(
        "--grid",
        default=None,
        metavar="healpix:NSIDE",
        help="Part A on HEALPix pixels of the field (train-prior/impute --grid) instead of its "
        "4 x 4 block means",
    )
    parser.add_argument("--skip-native", action="store_true", help="Part A only")
    parser.add_argument("--out", type=Path, default=RESULTS / "native_grid_engines.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = (args.file or data_dir() / FILE).resolve()
    runs = args.runs.resolve()  # the commands run with it as their working directory
    runs.mkdir(parents=True, exist_ok=True)
    train = [
        "--steps",
        args.prior_steps,
        "--batch-size",
        args.batch_size,
        "--validate-every",
        "0",
        "--quiet",
    ]
    rows: list[dict] = []
    coarse = ["--grid", args.grid] if args.grid else ["--coarsen", 4]
    if args.grid:
        nside = int(args.grid.partition(":")[2])
        part_a, nodes_a = f"A: HEALPix {nside} (--grid {args.grid})", 12 * nside**2
    else:
        part_a, nodes_a = "A: 45x90 (--coarsen 4)", 4050
    print(
        f"A: train-prior on {path.name} ({' '.join(map(str, coarse))}, {FIT_PERIOD}), "
        f"{args.prior_steps} steps",
        flush=True,
    )
    _, prior_s = cli(
        "train-prior",
        "--input",
        path,
        "--var",
        args.var,
        "--fit-period",
        FIT_PERIOD,
        *coarse,
        "--out",
        "prior",
        "--overwrite",
        *train,
        cwd=runs,
    )
    prior_ckpt = runs / "prior" / "checkpoint.pt"
    checkpoints = {"dps": prior_ckpt}
    per_step = {"dps": seconds_per_step(runs / "prior")}
    for name, options in DISTILLED.items():
        if name not in args.engines:
            continue
        print(f"A: distill {name}, {args.engine_steps} steps", flush=True)
        cli(
            "distill",
            "--prior",
            prior_ckpt,
            *options,
            "--out",
            name,
            "--overwrite",
            "--steps",
            args.engine_steps,
            "--batch-size",
            args.batch_size,
            "--quiet",
            cwd=runs,
        )
        checkpoints[name], per_step[name] = (
            runs / name / "checkpoint.pt",
            seconds_per_step(runs / name),
        )
    impute = [
        "impute",
        "--input",
        path,
        "--var",
        args.var,
        "--period",
        TEST_DAY,
        "--mask",
        "random:0.7",
        "--samples",
        args.samples,
        *coarse,
        "--output-grid",
        "coarse",
        "--quiet",
    ]
    for name in ["gaussian", *checkpoints]:
        extra = (
            ["--fit-period", FIT_PERIOD]
            if name == "gaussian"
            else ["--checkpoint", checkpoints[name]]
        )
        if name == "dps":  # sequential reverse diffusions: 2 samples per field
            extra += ["--dps-steps", args.dps_steps, "--samples", 2]
        print(f"A: impute {name}", flush=True)
        log, wall = cli(
            *impute,
            "--engine",
            name.removesuffix("-spectral"),
            *extra,
            "--output",
            f"{name}.nc",
            cwd=runs,
        )
        row = {
            "part": part_a,
            "variable": args.var,
            "engine": name,
            "nodes": nodes_a,
            "train_steps": ""
            if name == "gaussian"
            else (args.prior_steps if name == "dps" else args.engine_steps),
            "seconds_per_train_step": "" if name == "gaussian" else round(per_step[name], 3),
            "impute_wall_s": round(wall, 1),
            **parse_scores(log),
        }
        rows.append(row)
        write_csv(args.out, rows)
        print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if args.skip_native:
        print(f"prior training {prior_s:.0f} s in all; wrote {args.out}")
        return
    print(f"B: train-prior at native 1 deg, {args.native_steps} steps", flush=True)
    cli(
        "train-prior",
        "--input",
        path,
        "--var",
        args.var,
        "--fit-period",
        FIT_PERIOD,
        "--out",
        "prior-native",
        "--overwrite",
        "--steps",
        args.native_steps,
        "--batch-size",
        args.batch_size,
        "--validate-every",
        "0",
        "--quiet",
        cwd=runs,
    )
    from manifold_aps.operators import GaussianNoise
    from manifold_aps.posterior import DPS
    from manifold_aps.priors.train import load_prior

    prior = load_prior(runs / "prior-native" / "checkpoint.pt")
    dps_timed = 5  # reverse steps timed
    step_s = (
        seconds_per_sample(
            DPS(prior, GaussianNoise(0.1), steps=dps_timed), prior.domain, 1, grad=True
        )
        / dps_timed
    )
    rows.append(
        {
            "part": "B: native 181x360",
            "variable": args.var,
            "engine": "dps",
            "nodes": 65160,
            "train_steps": args.native_steps,
            "seconds_per_train_step": round(seconds_per_step(runs / "prior-native"), 3),
            "samples_per_second": round(1 / (step_s * args.dps_steps), 5),
            "seconds_per_dps_step": round(step_s, 4),
            "note": f"the prior's training step (batch {args.batch_size}); a DPS sample is "
            f"{args.dps_steps} reverse steps ({1000 * step_s:.0f} s at 1000)",
        }
    )
    write_csv(args.out, rows)
    print("  " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    for name, engine in native_engines(prior).items():
        rate = 1 / seconds_per_sample(engine, prior.domain, args.rate_samples, grad=name == "avi")
        rows.append(
            {
                "part": "B: native 181x360",
                "variable": args.var,
                "engine": name,
                "nodes": 65160,
                "samples_per_second": round(rate, 3),
                "note": "untrained weights (the cost does not depend on them)",
            }
        )
        write_csv(args.out, rows)
        print("  " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    print(f"prior training {prior_s:.0f} s in all; wrote {args.out}")
    goal = next((r for r in rows if r["engine"] == "aps-spectral" and r["nodes"] == 65160), None)
    if goal is not None:
        rate = goal["samples_per_second"]
        print(
            f"APS-spectral at 1 deg: {rate:.1f} samples/s on one thread (goal >= 100: "
            f"{'met' if rate >= 100 else 'missed'})"
        )


if __name__ == "__main__":
    main()
