"""The APS flow's configurations on the exact Gaussian yardstick, at equal (short) training.

Variants of `FlowConfig`: the default (graph affine couplings), spectral couplings, rational-
quadratic splines with ActNorm, and two-level multiscale couplings with ActNorm. Each is distilled
with the exact Matérn prior of "gaussian-healpix8" (random masks 50-95 % missing, noise 0.1) for
`--steps` steps, then scored on held-out observations against the exact posterior
(`gaussian_yardstick`: KL(q || p(x|y)) per dimension, 90 % coverage). Short training makes this a
check that every variant trains and stays on the yardstick, not a ranking.

Writes results/flow_variants.csv. Usage:
  python benchmarks/flow_variants.py [--steps 150] [--held-out 8] [--samples 128]
      [--runs runs/flow-variants]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import training_seconds, write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.flows import FlowConfig
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.aps import APSConfig
from manifold_aps.posterior.distill import held_out_observations
from manifold_aps.posterior.engines import train_engine
from manifold_aps.posterior.yardstick import gaussian_yardstick
from manifold_aps.training import TrainConfig

VARIANTS = {
    "graph affine (default)": FlowConfig(),
    "spectral couplings": FlowConfig(coupling="spectral"),
    "splines + ActNorm": FlowConfig(transform="spline", actnorm=True),
    "2 levels + ActNorm": FlowConfig(levels=2, actnorm=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--runs", type=Path, default=Path("runs") / "flow-variants")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = build_prior_dataset("gaussian-healpix8")
    noise = GaussianNoise(0.1)
    held = held_out_observations(ds, noise, args.held_out, masks="random", seed=2024)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=8,
        lr=2e-3,
        warmup=20,
        ema_decay=0.0,
        checkpoint_every=1000,
        validate_every=0,
        log_every=50,
    )
    rows = []
    for i, (name, flow) in enumerate(VARIANTS.items()):
        run = args.runs / f"variant-{i}"
        engine, _ = train_engine(
            "aps", ds, "exact", run, cfg, settings=APSConfig(flow=flow), resume=True, progress=False
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            r = gaussian_yardstick(
                engine.eval(),
                ds.reference,
                noise,
                held,
                num_samples=args.samples,
                generator=torch.Generator().manual_seed(1),
            )
        row = {
            "variant": name,
            "flow": str(flow.to_dict()),
            "steps": args.steps,
            "held_out": args.held_out,
            "samples": args.samples,
            "kl_per_dim": round(float(r.kl_per_dim.mean()), 5),
            "kl_per_dim_max": round(float(r.kl_per_dim.max()), 5),
            "coverage_90": round(r.coverage_90, 4),
            "exact_coverage_90": round(r.exact_coverage_90, 4),
            "train_seconds": round(training_seconds(run), 1),
            "eval_seconds": round(time.perf_counter() - t0, 1),
            "parameters": sum(p.numel() for p in engine.parameters()),
        }
        print(row, flush=True)
        rows.append(row)
        write_csv(args.out / "flow_variants.csv", rows)


if __name__ == "__main__":
    main()
