"""Is the learned diffusion prior itself calibrated? Its samples against held-out fields.

Every learned engine targets the posterior of the trained score prior, so a prior that is too
rough, too smooth or too wide shows in every engine. This script draws unconditional samples of a
problem's suite prior (`--runs/<problem>/prior`, reverse SDE) and compares them with the
problem's held-out test fields (the suite's, never seen in training; `--split validation` takes
the validation fields instead, `--split train` the (unaugmented) training fields, to tell a prior
that misses its data from a shift between the training and the test period):

* **marginal coverage**: the share of the test values (area-weighted, every node of every field)
  inside each node's interval between the 5 % and 95 % quantiles of the S prior samples; a
  calibrated prior covers 0.9 (S - 1) / (S + 1) of them (the `data` column);
* **power per Laplace-Beltrami band** (`manifold_aps.priors.checks.band_power`, as
  `prior_checks.py` computes it on modes 1-64): of the samples and of the test fields on modes
  1-256 in four bands of 64, and their ratio (1 for a prior with the data's spectrum).

Writes `results/prior_calibration-<problem>.csv`, keeping its rows of other priors (another
training length, or another `--prior-run` note) and of the other split, and replacing those of
this one. Usage:
  python benchmarks/prior_calibration.py --problem mesh-spot [--samples 64 --steps 200 1000]
  python benchmarks/prior_calibration.py --problem era5-uk --split validation --steps 200
  [--out DIR]   (the CSV's name carries the problem; give another --out to keep a second run)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import keep_earlier, read_csv, trained_steps, write_csv
from suite import PROBLEMS

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.metrics import central_interval, interval_coverage
from manifold_aps.posterior.distill import held_out_signals
from manifold_aps.priors.checks import band_power
from manifold_aps.priors.sampling import reverse_sde_sample
from manifold_aps.priors.train import load_prior

HERE = Path(__file__).resolve().parent
MODES, BANDS = 257, 4  # modes 0..256; band_power skips the mean (mode 0)


def prior_samples(prior, domain, n: int, steps: int, seed: int) -> torch.Tensor:
    """`n` unconditional reverse-SDE samples of `prior` at `steps` steps, `(n, N, C)` float64."""
    with torch.no_grad():
        z = reverse_sde_sample(
            prior,
            (n, domain.num_nodes, prior.channels),
            steps=steps,
            generator=torch.Generator().manual_seed(seed),
            progress=f"prior samples, {steps} steps",
        ).sample
    return prior.denormalize(z).double()


def prior_against(domain, samples: torch.Tensor, *fields: torch.Tensor) -> list[dict]:
    """The prior's `samples` `(S, N, C)` against each set of `fields` `(F, N, C)`.

    One dict per set: `coverage` (area-weighted share of the field values inside each node's
    5-95 % sample interval), `calibrated` (what a calibrated prior covers, 0.9 (S - 1) / (S + 1)),
    and per band of `MODES` modes in `BANDS` bands: `eigenvalues` (mean), `power_prior`,
    `power_data` (`band_power`; the samples' computed once).
    """
    s = samples.shape[0]
    lam, power_prior = band_power(domain, samples, MODES, BANDS)
    interval = central_interval(samples, 0.9)
    return [
        {
            "coverage": float(interval_coverage(*interval, f, domain.mass)),
            "calibrated": 0.9 * (s - 1) / (s + 1),
            "eigenvalues": lam,
            "power_prior": power_prior,
            "power_data": band_power(domain, f, MODES, BANDS)[1],
        }
        for f in fields
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problem", default="mesh-spot", choices=list(PROBLEMS))
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "suite")
    parser.add_argument(
        "--samples", type=int, default=64, help="prior samples per step count (default 64)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        nargs="+",
        default=[200, 1000],
        help="reverse-SDE step counts, one set of samples each (default 200 1000: the sampler's "
        "own discretisation error shows as the difference)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "validation", "train"],
        help="the fields to compare with (default test, the suite's; train: the training fields, "
        "not held out, as an in-sample check)",
    )
    parser.add_argument(
        "--prior-run",
        default="",
        help="a note on the prior's training run, in the rows' prior_run column (rows of another "
        "prior length or note are kept in the CSV beside this run's)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = PROBLEMS[args.problem]
    ckpt = args.runs / problem.dataset / "prior" / "checkpoint.pt"
    if not ckpt.is_file():
        raise SystemExit(f"no trained prior at {ckpt}: run benchmarks/suite.py first")
    ds = build_prior_dataset(problem.dataset)
    prior = load_prior(ckpt, ds.domain)
    prior_steps = trained_steps(ckpt)
    if args.split == "train":
        if not hasattr(ds.source, "train"):
            raise SystemExit(f"{args.problem}'s prior trains on fresh draws: no training fields")
        test = ds.source.train.double()
    else:
        test = held_out_signals(ds, args.split).double()
    rows = []
    for steps in args.steps:
        t0 = time.perf_counter()
        samples = prior_samples(prior, ds.domain, args.samples, steps, args.seed)
        common = {
            "problem": args.problem,
            "sde_steps": steps,
            "samples": args.samples,
            "split": args.split,
            "test_fields": test.shape[0],
            "sample_seconds": round(time.perf_counter() - t0, 1),
            "prior_steps": prior_steps,
            "prior_run": args.prior_run,
        }
        (check,) = prior_against(ds.domain, samples, test)
        rows.append(
            {
                **common,
                "quantity": "marginal coverage of the samples' 5-95 % interval",
                "modes": "",
                "mean_eigenvalue": "",
                "prior": round(check["coverage"], 4),
                "data": round(check["calibrated"], 4),
                "ratio": round(check["coverage"] / check["calibrated"], 3),
            }
        )
        width = (MODES - 1) // BANDS
        bands = zip(check["eigenvalues"], check["power_prior"], check["power_data"], strict=True)
        for i, (eigenvalue, pp, pd) in enumerate(bands):
            rows.append(
                {
                    **common,
                    "quantity": "band power (mean squared Laplace-Beltrami coefficient)",
                    "modes": f"{1 + i * width}-{(i + 1) * width}",
                    "mean_eigenvalue": round(float(eigenvalue), 3),
                    "prior": float(pp),
                    "data": float(pd),
                    "ratio": round(float(pp / pd), 3),
                }
            )
    for row in rows:
        print(row, flush=True)
    path = args.out / f"prior_calibration-{args.problem}.csv"
    # rows written before the split was a setting are of the test split
    earlier = [{**r, "split": r.get("split") or "test"} for r in read_csv(path)]
    write_csv(path, keep_earlier(earlier, rows, ("sde_steps", "prior_steps", "prior_run", "split")))


if __name__ == "__main__":
    main()
