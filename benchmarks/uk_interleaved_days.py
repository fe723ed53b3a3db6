"""Is the UK prior's miscalibration its chronological split? A prior trained on interleaved days.

The suite's UK prior learns 1-18 March 2019 and is tested on 25-31 March; its samples cover its
own training hours at 78 % and the test hours at 65 % (87 % is calibrated at 64 samples;
`prior_calibration.py --split train|test`). This script trains the same prior recipe (the
suite's, 3000 steps) on the UK sample with the held-out days interleaved instead: days 4, 10,
16, 22 and 28 held out (120 hours), their neighbouring days left out (hourly fields a day apart
are not independent), days 1 and 31 for validation, the other 14 days (336 hours) for training;
then 64 reverse-SDE samples (200 steps) against the training and the held-out hours: pointwise
coverage of the samples' 5-95 % interval and the band-power ratios of `prior_calibration.py`.
Writes `results/uk_interleaved_days.csv`. About 20 minutes on one CPU thread. Usage:
  python benchmarks/uk_interleaved_days.py [--runs runs/uk-interleaved] [--steps 3000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import training_seconds, write_csv
from prior_calibration import prior_against, prior_samples
from suite import prior_train_config

from climate.datasets import era5_uk_days
from manifold_aps.priors.train import load_prior, train_prior

HERE = Path(__file__).resolve().parent
HELD_OUT_DAYS = (4, 10, 16, 22, 28)
VALIDATION_DAYS = (1, 31)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "uk-interleaved")
    parser.add_argument("--steps", type=int, default=3000, help="prior training steps")
    parser.add_argument("--samples", type=int, default=64, help="prior samples (default 64)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = era5_uk_days(HELD_OUT_DAYS, VALIDATION_DAYS)
    run = args.runs / "prior"
    train_prior(ds, run, prior_train_config(args.steps), resume=True, progress=True)
    prior = load_prior(run / "checkpoint.pt", ds.domain)
    samples = prior_samples(prior, ds.domain, args.samples, 200, seed=0)
    splits = {"train": ds.source.train.double(), "held-out days": ds.test.double()}
    rows = []
    for (split, fields), check in zip(
        splits.items(), prior_against(ds.domain, samples, *splits.values()), strict=True
    ):
        ratios = zip(check["power_prior"], check["power_data"], strict=True)
        rows.append(
            {
                "split": split,
                "hours": fields.shape[0],
                "prior_steps": args.steps,
                "train_seconds": round(training_seconds(run), 1),
                "samples": args.samples,
                "coverage": round(check["coverage"], 4),
                "calibrated": round(check["calibrated"], 4),
                **{
                    f"band_ratio_{i + 1}": round(float(p / d), 3) for i, (p, d) in enumerate(ratios)
                },
            }
        )
        print(rows[-1], flush=True)
    write_csv(args.out / "uk_interleaved_days.csv", rows)
    print(f"wrote {args.out / 'uk_interleaved_days.csv'}")


if __name__ == "__main__":
    main()
