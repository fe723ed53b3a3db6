"""APS against DPS with trained priors on real data: accuracy, calibration and speed in one run.

For each dataset with a trained prior in RUNS/<dataset>/checkpoint.pt, distil an APS engine
(RUNS/aps-<dataset>, resumed when present) on observations simulated from the *training*
signals (random masks, 50-95 % missing; noise 5 % of the data's standard deviation), then on
held-out *test* signals with held-out masks compare:

* APS: one flow pass per sample; DPS: 1000 reverse steps with guidance (Chung et al.);
* area-weighted RMSE over hidden cells of one sample and of the mean of S samples (S equal for
  both methods), fair CRPS with S samples, 90 % coverage of the empirical interval;
* seconds per sample of each, measured here, and their ratio.

Writes results/aps_vs_dps.csv. Usage:
  python benchmarks/aps_vs_dps.py --runs /path/to/runs [--datasets era5-uk ...] [--aps-steps 1000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.metrics import central_interval, crps_ensemble, interval_coverage, weighted_rmse
from manifold_aps.posterior import DPS
from manifold_aps.posterior.aps import APSConfig
from manifold_aps.posterior.distill import held_out_observations
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.training import TrainConfig


def scores(samples, truth, mask, weight):
    hidden = ~mask.expand_as(truth)
    lo, hi = central_interval(samples, 0.9)
    return {
        "rmse_single": float(weighted_rmse(samples[0], truth, weight, hidden)),
        "rmse_mean": float(weighted_rmse(samples.mean(0), truth, weight, hidden)),
        "crps": float(crps_ensemble(samples, truth, weight, hidden)),
        "coverage_90": float(interval_coverage(lo, hi, truth, weight, hidden)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument(
        "--datasets", nargs="+", default=["era5-uk", "mesh-bunny", "era5-global", "wmap"]
    )
    parser.add_argument("--aps-steps", type=int, default=1000)
    parser.add_argument("--dps-steps", type=int, default=1000)
    parser.add_argument(
        "--batch-size", type=int, default=8, help="observations per APS training step"
    )
    parser.add_argument(
        "--dps-guidance", type=float, default=1.0, help="DPS step size zeta (default 1.0)"
    )
    parser.add_argument(
        "--dense-limit",
        type=int,
        default=1000,
        help="largest domain given the dense (Cholesky) anchor; above it the CG anchor "
        "(default 1000)",
    )
    parser.add_argument("--observations", type=int, default=4, help="held-out test observations")
    parser.add_argument(
        "--samples", type=int, default=4, help="samples per observation for both methods"
    )
    parser.add_argument(
        "--throughput", type=int, default=1000, help="APS samples drawn for the throughput figure"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        prior_ckpt = args.runs / name / "checkpoint.pt"
        if not prior_ckpt.exists():
            print(f"skip {name}: no prior in {prior_ckpt}")
            continue
        ds = build_prior_dataset(name)
        noise_std = 0.05 * float(ds.source.validation().std())
        run = args.runs / f"aps-{name}"
        cfg = TrainConfig(
            steps=args.aps_steps,
            batch_size=args.batch_size,
            lr=2e-3,
            warmup=50,
            ema_decay=0.0,
            checkpoint_every=100,
            validate_every=0,
            log_every=25,
        )
        t0 = time.perf_counter()
        train_engine(
            "aps",
            ds,
            prior_ckpt,
            run,
            cfg,
            settings=APSConfig(dense_limit=args.dense_limit),
            masks="random",
            noise_std=noise_std,
            resume=True,
            progress=False,
        )
        distill_s = time.perf_counter() - t0
        engine, ds, prior = load_engine(run / "checkpoint.pt", ds)
        batch = held_out_observations(ds, engine.noise, args.observations, seed=31337)
        op = batch.operator(ds.domain)
        w = ds.domain.mass
        g = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        aps = engine.sample(batch.y, op, args.samples, rng=g).double()
        aps_s = (time.perf_counter() - t0) / (args.samples * args.observations)
        t0 = time.perf_counter()
        dps = (
            DPS(prior, engine.noise, steps=args.dps_steps, guidance=args.dps_guidance)
            .sample(batch.y.float(), op, args.samples, rng=g)
            .double()
        )
        dps_s = (time.perf_counter() - t0) / (args.samples * args.observations)
        truth = batch.truth.double()
        # throughput: many samples of one observation, in chunks
        one = batch.slice(slice(0, 1))
        op1 = one.operator(ds.domain)
        t0 = time.perf_counter()
        drawn = 0
        while drawn < args.throughput:
            k = min(250, args.throughput - drawn)
            engine.sample(one.y, op1, k, rng=g)
            drawn += k
        rate = drawn / (time.perf_counter() - t0)
        for method, samples, sec in [("APS", aps, aps_s), ("DPS", dps, dps_s)]:
            row = {
                "dataset": name,
                "nodes": ds.domain.num_nodes,
                "method": method,
                "samples": args.samples,
                "noise_std": round(noise_std, 5),
                **{k: round(v, 5) for k, v in scores(samples, truth, batch.mask, w).items()},
                "seconds_per_sample": round(sec, 5),
                "speedup_vs_dps": round(dps_s / sec, 1),
                "aps_samples_per_second": round(rate, 1) if method == "APS" else "",
                "aps_distill_seconds_this_run": round(distill_s, 1) if method == "APS" else "",
                "dps_steps": args.dps_steps,
                "dps_guidance": args.dps_guidance,
            }
            print(row)
            rows.append(row)
        write_csv(args.out / "aps_vs_dps.csv", rows)


if __name__ == "__main__":
    main()
