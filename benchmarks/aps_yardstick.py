"""APS against the exact Gaussian posterior: KL per dimension and 90 % coverage on held-out data.

For each problem (a `gaussian-*` dataset: a known Matérn prior on HEALPix nside 8 or on the bumpy
mesh), distil an APS engine with the exact prior on simulated observations (random masks with
50-95 % missing, noise 0.1) and evaluate it on held-out observations drawn with another seed:
Monte Carlo KL(q || exact posterior) per dimension (256 flow samples each) and the area-weighted
fraction of held-out truths inside the flow's central 90 % interval (empirical quantiles).

Writes results/aps_yardstick.csv. Usage:
  python benchmarks/aps_yardstick.py --runs /path/to/runs [--steps 2000] [--datasets ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.flows import FlowConfig
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.aps import APSConfig
from manifold_aps.posterior.distill import mask_family
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.posterior.yardstick import gaussian_yardstick
from manifold_aps.training import TrainConfig, load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=["gaussian-healpix8", "gaussian-bumpy"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--couplings", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.datasets:
        run = args.runs / f"aps-{name}"
        ds = build_prior_dataset(name)
        if not (run / "checkpoint.pt").exists() or args.steps > 0:
            cfg = TrainConfig(
                steps=args.steps,
                batch_size=args.batch_size,
                lr=2e-3,
                warmup=50,
                ema_decay=0.0,
                checkpoint_every=250,
                validate_every=0,
                log_every=50,
            )
            aps = APSConfig(flow=FlowConfig(couplings=args.couplings), warmup_fraction=0.0)
            t0 = time.perf_counter()
            train_engine(
                "aps",
                ds,
                "exact",
                run,
                cfg,
                settings=aps,
                masks="random",
                noise_std=0.1,
                resume=True,
                progress=False,
            )
            train_s = time.perf_counter() - t0
        else:
            train_s = float("nan")
        engine, ds, prior = load_engine(run / "checkpoint.pt", ds)
        noise = GaussianNoise(0.1)
        held_out = SimulatedObservations(ds.source, mask_family("random", ds.domain), noise).batch(
            torch.Generator().manual_seed(2024), args.held_out
        )
        g = torch.Generator().manual_seed(7)
        t0 = time.perf_counter()
        res = gaussian_yardstick(engine, prior, noise, held_out, num_samples=256, generator=g)
        eval_s = time.perf_counter() - t0
        row = {
            "dataset": name,
            "domain": repr(ds.domain),
            "nodes": ds.domain.num_nodes,
            "steps": load_checkpoint(run / "checkpoint.pt")["step"],
            "batch_size": load_checkpoint(run / "checkpoint.pt")["train_config"]["batch_size"],
            "train_seconds_this_run": round(train_s, 1),
            "kl_per_dim_mean": round(float(res.kl_per_dim.mean()), 5),
            "kl_per_dim_max": round(float(res.kl_per_dim.max()), 5),
            "kl_per_dim_se": round(float(res.kl_se.pow(2).mean().sqrt() / args.held_out**0.5), 5),
            "coverage_90": round(res.coverage_90, 4),
            "exact_coverage_90": round(res.exact_coverage_90, 4),
            "mean_rmse_vs_exact": round(res.mean_rmse_vs_exact, 5),
            "eval_seconds": round(eval_s, 1),
        }
        print(row)
        rows.append(row)
    write_csv(args.out / "aps_yardstick.csv", rows)


if __name__ == "__main__":
    main()
