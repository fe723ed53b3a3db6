"""The implicit generator vs the exact Gaussian posterior: W2 of Gaussian fits, spread, coverage.

For each problem (a `gaussian-*` dataset: a known Matérn prior on HEALPix nside 8 or on the bumpy
mesh), train the implicit generator (integral KL, `manifold_aps.posterior.implicit`) with the
exact prior on simulated observations (random masks with 50-95 % missing, noise 0.1), and on
held-out observations drawn with another seed compare its samples with the exact posterior:
the Wasserstein-2 distance between the Gaussian fit of its samples and the exact posterior (per
dimension; the same estimator on as many exact samples gives the floor set by sampling error),
the ratio of its per-node spread to the exact one, and the coverage of held-out truths. The
generator has no density, so no KL. Rows are written for the fresh generator (its Gaussian
anchor) and after training.

Writes results/implicit_yardstick.csv. Usage:
  python benchmarks/implicit_yardstick.py --runs /path/to/runs [--steps 400] [--datasets ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.distill import mask_family
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.posterior.implicit import ImplicitConfig
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.posterior.yardstick import sample_yardstick
from manifold_aps.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["gaussian-healpix8", "gaussian-bumpy"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument(
        "--samples", type=int, default=2048, help="samples per held-out observation"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        ds = build_prior_dataset(name)
        noise = GaussianNoise(0.1)
        held_out = SimulatedObservations(ds.source, mask_family("random", ds.domain), noise).batch(
            torch.Generator().manual_seed(2024), args.held_out
        )
        run = args.runs / f"implicit-{name}"
        for steps in (0, args.steps):
            cfg = TrainConfig(
                steps=max(steps, 1),
                batch_size=args.batch_size,
                lr=1e-3,
                warmup=20,
                ema_decay=0.0,
                checkpoint_every=100,
                validate_every=0,
                log_every=20,
            )
            t0 = time.perf_counter()
            # the fresh generator: its Gaussian anchor (step 0 is in the auxiliary warm-up: only
            # the auxiliary score moves)
            if steps == 0:
                cfg = TrainConfig(
                    steps=1,
                    batch_size=1,
                    lr=1e-3,
                    warmup=0,
                    ema_decay=0.0,
                    checkpoint_every=1,
                    validate_every=0,
                    log_every=1,
                )
                train_engine(
                    "implicit",
                    ds,
                    "exact",
                    run / "init",
                    cfg,
                    settings=ImplicitConfig(),
                    progress=False,
                    dtype=torch.float64,
                )
                engine, _, prior = load_engine(run / "init" / "checkpoint.pt", ds)
            else:
                train_engine(
                    "implicit",
                    ds,
                    "exact",
                    run,
                    cfg,
                    settings=ImplicitConfig(),
                    resume=True,
                    progress=False,
                    dtype=torch.float64,
                )
                engine, _, prior = load_engine(run / "checkpoint.pt", ds)
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = sample_yardstick(
                engine,
                prior,
                noise,
                held_out,
                num_samples=args.samples,
                generator=torch.Generator().manual_seed(7),
            )
            eval_s = time.perf_counter() - t0
            y, op = held_out.y, held_out.operator(ds.domain)
            t0 = time.perf_counter()
            engine.sample(
                y[:1],
                op.__class__(ds.domain, held_out.mask[:1]),
                256,
                rng=torch.Generator().manual_seed(1),
            )
            per_sample = (time.perf_counter() - t0) / 256
            row = {
                "dataset": name,
                "nodes": ds.domain.num_nodes,
                "steps": steps,
                "train_seconds_this_run": round(train_s, 1),
                "w2_per_dim": round(float(res.w2_per_dim.mean()), 5),
                "exact_samples_w2_per_dim": round(float(res.exact_w2_per_dim.mean()), 5),
                "w2_excess_over_floor": round(
                    float((res.w2_per_dim / res.exact_w2_per_dim).mean() - 1), 4
                ),
                "std_ratio_mean": round(float(res.std_ratio.mean()), 4),
                "std_ratio_min": round(float(res.std_ratio.min()), 4),
                "coverage_90": round(res.coverage_90, 4),
                "exact_coverage_90": round(res.exact_coverage_90, 4),
                "mean_rmse_vs_exact": round(res.mean_rmse_vs_exact, 5),
                "seconds_per_sample": round(per_sample, 5),
                "eval_seconds": round(eval_s, 1),
            }
            print(row, flush=True)
            rows.append(row)
            write_csv(args.out / "implicit_yardstick.csv", rows)


if __name__ == "__main__":
    main()
