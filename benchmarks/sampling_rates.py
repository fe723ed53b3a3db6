"""Samples per second of every engine for one observation, by ensemble size, on one CPU thread.

A distilled engine pays once per observation (the first estimate, the conditioner networks that
depend on the observation only) and then a little per sample, so its rate depends on how many
samples are drawn: this measures `n` = 1, 16, 128 and 1024 samples of one observation (70 % of
the nodes hidden at random) and the marginal rate between the two largest. DPS pays per sample
and per reverse step: its rate is that of a 1000-step sample, from the time of a few steps.

Domains: the native 1-degree ERA5 grid (181 x 360 = 65,160 cells; issue 16's goal: APS-spectral
at >= 100 samples/s) and HEALPix nside 16 (3072 pixels; issue 17's: >= 1000 samples/s). The
engines are built on an untrained score prior of `train-prior`'s default architecture: their
cost does not depend on the weights.

    python benchmarks/sampling_rates.py [--domains 1deg healpix16] [--sizes 1 16 128 1024]

Writes `results/sampling_rates.csv` (one row per domain, engine and size, with the machine's
load average during the run).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_csv  # noqa: E402
from native_grid_engines import RESULTS, native_engines, seconds_per_sample  # noqa: E402

from manifold_aps.geometry import HealpixSphere, SphereGrid  # noqa: E402
from manifold_aps.nn import ScoreNetConfig  # noqa: E402
from manifold_aps.operators import GaussianNoise, Mask  # noqa: E402
from manifold_aps.posterior import DPS  # noqa: E402
from manifold_aps.priors.score import ScorePrior  # noqa: E402

DOMAINS = {
    "1deg": lambda: SphereGrid(np.linspace(90.0, -90.0, 181), np.arange(360.0)),
    "healpix16": lambda: HealpixSphere(16),
}
DPS_STEPS = 1000  # the default of impute and reconstruct


def timed_draw(engine, domain, n: int, *, grad: bool = False) -> float:
    """Wall seconds of `engine.sample` of `n` samples for one observation (after a warm-up).

    `grad`: the engine needs autograd (amortized VI's guided inner steps).
    """
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(1, domain.num_nodes, 1, generator=g) > 0.7
    y, op = mask.float(), Mask(domain, mask)
    with torch.enable_grad() if grad else torch.no_grad():
        engine.sample(y, op, 1, rng=g)
        start = time.perf_counter()
        engine.sample(y, op, n, rng=g)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[1, 16, 128, 1024])
    parser.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="seconds one draw may take: larger sizes of a slow engine are left out (default 120)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "sampling_rates.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    rows = []
    for key in args.domains:
        domain = DOMAINS[key]()
        print(f"{key}: {domain.num_nodes} nodes; building the engines", flush=True)
        prior = ScorePrior(domain, 1, ScoreNetConfig()).eval()
        dps = DPS(prior, GaussianNoise(0.1), steps=5, guidance=1.0)
        per_step = seconds_per_sample(dps, domain, 1, grad=True) / 5
        rows.append(
            {
                "domain": key,
                "nodes": domain.num_nodes,
                "engine": "dps",
                "samples": 1,
                "seconds": round(per_step * DPS_STEPS, 3),
                "samples_per_second": round(1 / (per_step * DPS_STEPS), 5),
                "note": f"{DPS_STEPS} reverse steps, timed over 5",
                "load_average": round(os.getloadavg()[0], 2),
                "machine": machine,
            }
        )
        print("  " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
        for name, engine in native_engines(prior).items():
            times = {}
            for n in sorted(args.sizes):
                if times and n * max(times.values()) / max(times) > args.budget:
                    print(f"  {name}: {n} samples would take over {args.budget} s: left out")
                    break
                times[n] = timed_draw(engine, domain, n, grad=name == "avi")
                rows.append(
                    {
                        "domain": key,
                        "nodes": domain.num_nodes,
                        "engine": name,
                        "samples": n,
                        "seconds": round(times[n], 4),
                        "samples_per_second": round(n / times[n], 3),
                        "note": "",
                        "load_average": round(os.getloadavg()[0], 2),
                        "machine": machine,
                    }
                )
                print("  " + ", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
                write_csv(args.out, rows)
            if len(times) < 2:
                continue
            big, bigger = sorted(times)[-2:]
            marginal = (bigger - big) / max(times[bigger] - times[big], 1e-9)
            rows[-1]["note"] = f"marginal {marginal:.1f} samples/s between {big} and {bigger}"
            write_csv(args.out, rows)
            print(f"  {name}: {rows[-1]['note']}", flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
