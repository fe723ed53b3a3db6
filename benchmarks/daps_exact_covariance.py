"""Where DAPS's error comes from: its inner Gaussian's covariance, not its number of levels.

DAPS (`manifold_aps.posterior.daps`) draws x0 at each level from a Gaussian surrogate of
p(x0 | z_t) times the likelihood. With the exact conditional every level maps the posterior's
marginal at t to the posterior's marginal at the next level, so the sampler is exact at any number
of levels K. For a Gaussian prior p(x0 | z_t) is known (`exact_inner_covariance`):
N(D(z_t), Cov) with Cov = U diag(c s^2 / (a^2 c + s^2)) U^T (C = U diag(c) U^T, a = alpha_t,
s = sigma_t). This script runs DAPS on the HEALPix-8 yardstick (the "gaussian-healpix8" dataset,
16 held-out random-mask observations, noise 0.1, `--samples` draws each, as
`amortized_vi_yardstick.py` scores them) with the white width r_t^2 I (the default), with that
exact covariance, and with the covariance `fit_inner_covariance` estimates from 512 training
draws (in 64 or 256 EOFs of them, or the 400 lowest Laplace-Beltrami modes; 256 denoised draws
per level: what a learned prior gets), and exact posterior samples for the floor.

Writes results/daps_exact_covariance.csv. About 3 minutes on two CPU threads. Usage:
  python benchmarks/daps_exact_covariance.py [--samples 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from amortized_vi_yardstick import scores
from common import write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.daps import DAPS
from manifold_aps.posterior.distill import held_out_observations
from manifold_aps.posterior.gaussian import ExactGaussianPosterior
from manifold_aps.posterior.inner_covariance import exact_inner_covariance, fit_inner_covariance

HERE = Path(__file__).resolve().parent
BASIS_NAMES = {"eof": "EOFs", "laplacian": "Laplace-Beltrami modes"}
SHOWN = ("w2_per_dim", "mean_rmse_vs_exact", "std_ratio", "coverage_90")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=64, help="samples per observation")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ds = build_prior_dataset("gaussian-healpix8")
    noise = GaussianNoise(0.1)
    held = held_out_observations(ds, noise, 16, masks="random", seed=2024)
    op, prior = held.operator(ds.domain), ds.reference
    exact = ExactGaussianPosterior(prior, noise).condition(held.y.double(), op)
    rows = []
    runs = [("white width (the default)", None, 20)]
    runs += [("exact Cov[x0 | z_t]", exact_inner_covariance(prior, steps=k), k) for k in (5, 20)]
    for basis, rank in (("eof", 64), ("eof", 256), ("laplacian", 400)):
        fitted = fit_inner_covariance(
            prior,
            ds.training_signals(),
            steps=20,
            basis=basis,
            rank=rank,
            draws=256,
            generator=torch.Generator().manual_seed(3),
        )
        runs.append((f"fitted, {rank} {BASIS_NAMES[basis]}", fitted, 20))
    for inner, cov, k in runs:
        t0 = time.perf_counter()
        sampler = DAPS(prior, noise, steps=k, max_batch=10**6, inner_covariance=cov)
        out = sampler.run(
            held.y.double(), op, args.samples, generator=torch.Generator().manual_seed(1)
        )
        seconds = time.perf_counter() - t0
        sc = scores(out.sample, exact, held.truth, ds.domain.mass)
        rows.append(
            {"sampler": "DAPS", "inner_gaussian": inner, "levels": k}
            | {key: round(sc[key], 4) for key in SHOWN}
            | {"seconds": round(seconds, 1), "samples": args.samples}
        )
        print(rows[-1], flush=True)
    floor = scores(
        exact.sample(args.samples, rng=torch.Generator().manual_seed(7)),
        exact,
        held.truth,
        ds.domain.mass,
    )
    rows.append(
        {"sampler": "exact posterior", "inner_gaussian": "", "levels": ""}
        | {key: round(floor[key], 4) for key in SHOWN}
        | {"seconds": "", "samples": args.samples}
    )
    print(rows[-1], flush=True)
    write_csv(args.out / "daps_exact_covariance.csv", rows)


if __name__ == "__main__":
    main()
