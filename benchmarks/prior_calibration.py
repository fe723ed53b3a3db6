"""Is the learned diffusion prior itself calibrated? Its samples against held-out fields.

Every learned engine targets the posterior of the trained score prior, so a prior that is too
rough, too smooth or too wide shows in every engine. This script draws unconditional samples of a
problem's suite prior (`--runs/<problem>/prior`, reverse SDE) and compares them with the
problem's held-out test fields (the suite's, never seen in training):

* **marginal 90 % coverage**: the share of the test values (area-weighted, every node of every
  field) inside each node's central 90 % interval of the prior samples; 0.9 for a calibrated prior
  (a sampling error of about 1/S on the interval's ends);
* **variance per Laplace-Beltrami band**: the mean squared coefficient, in the prior's standardised
  units, of the samples and of the test fields on modes 1-8, 9-32, 33-128 and 129-256 (mode 0 the
  mean), and their ratio (1 for a prior with the data's spectrum).

Writes `results/prior_calibration-<problem>.csv`. Usage:
  python benchmarks/prior_calibration.py --problem mesh-spot [--samples 128 --steps 200]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_csv
from suite import PROBLEMS

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.priors.sampling import reverse_sde_sample
from manifold_aps.priors.train import load_prior

HERE = Path(__file__).resolve().parent
BANDS = ((1, 8), (9, 32), (33, 128), (129, 256))


def marginal_coverage(samples: torch.Tensor, fields: torch.Tensor, mass: torch.Tensor) -> float:
    """Area-weighted share of `fields` `(M, N, C)` in the samples' `(S, N, C)` central 90 %."""
    lo, hi = torch.quantile(samples, torch.tensor([0.05, 0.95], dtype=samples.dtype), dim=0)
    inside = ((fields >= lo) & (fields <= hi)).double()  # (M, N, C)
    weight = mass.reshape(1, -1, 1).double().expand_as(inside)
    return float((inside * weight).sum() / weight.sum())


def band_variances(z: torch.Tensor, phi: torch.Tensor, mass: torch.Tensor) -> torch.Tensor:
    """Mean squared coefficient `(K,)` of standardised fields `(M, N, C)` on the modes `phi`."""
    coef = torch.einsum("nk,n,mnc->mkc", phi, mass, z.double())
    return coef.pow(2).mean((0, 2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problem", default="mesh-spot", choices=list(PROBLEMS))
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "suite")
    parser.add_argument("--samples", type=int, default=128, help="prior samples (default 128)")
    parser.add_argument("--steps", type=int, default=200, help="reverse-SDE steps (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = PROBLEMS[args.problem]
    ckpt = args.runs / problem.dataset / "prior" / "checkpoint.pt"
    if not ckpt.is_file():
        raise SystemExit(f"no trained prior at {ckpt}: run benchmarks/suite.py first")
    ds = build_prior_dataset(problem.dataset)
    prior = load_prior(ckpt, ds.domain)
    test = (ds.test if ds.test.numel() else ds.source.validation()).double()
    mass = ds.domain.mass
    t0 = time.perf_counter()
    with torch.no_grad():
        z = reverse_sde_sample(
            prior,
            (args.samples, ds.domain.num_nodes, prior.channels),
            steps=args.steps,
            generator=torch.Generator().manual_seed(args.seed),
            progress="prior samples",
        ).sample
    seconds = time.perf_counter() - t0
    samples = prior.denormalize(z).double()
    coverage = marginal_coverage(samples, test, mass)
    lam, phi = ds.domain.eigenbasis(BANDS[-1][1] + 1)
    var_prior = band_variances(z, phi, mass)
    var_data = band_variances(prior.normalize(test.float()), phi, mass)
    rows = [
        {
            "problem": args.problem,
            "quantity": "marginal 90 % coverage of the test values",
            "modes": "",
            "prior": round(coverage, 4),
            "data": 0.9,
            "ratio": round(coverage / 0.9, 3),
            "samples": args.samples,
            "test_fields": test.shape[0],
            "sample_seconds": round(seconds, 1),
        }
    ]
    for lo, hi in BANDS:
        vp, vd = float(var_prior[lo : hi + 1].mean()), float(var_data[lo : hi + 1].mean())
        rows.append(
            {
                "problem": args.problem,
                "quantity": "mean squared coefficient (standardised)",
                "modes": f"{lo}-{hi}",
                "prior": round(vp, 6),
                "data": round(vd, 6),
                "ratio": round(vp / vd, 3),
                "samples": args.samples,
                "test_fields": test.shape[0],
                "sample_seconds": round(seconds, 1),
            }
        )
    for row in rows:
        print(row, flush=True)
    write_csv(args.out / f"prior_calibration-{args.problem}.csv", rows)


if __name__ == "__main__":
    main()
