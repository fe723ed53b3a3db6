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
from prior_calibration import BANDS, MODES
from suite import prior_train_config

from climate.datasets import era5_uk_days
from manifold_aps.metrics import central_interval, interval_coverage
from manifold_aps.priors.checks import band_power
from manifold_aps.priors.sampling import reverse_sde_sample
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
    with torch.no_grad():
        z = reverse_sde_sample(
            prior,
            (args.samples, ds.domain.num_nodes, prior.channels),
            steps=200,
            generator=torch.Generator().manual_seed(0),
            progress="prior samples, 200 steps",
        ).sample
    samples = prior.denormalize(z).double()
    interval = central_interval(samples, 0.9)
    _, power_prior = band_power(ds.domain, samples, MODES, BANDS)
    rows = []
    for split, fields in (("train", ds.source.train), ("held-out days", ds.test)):
        fields = fields.double()
        _, power_data = band_power(ds.domain, fields, MODES, BANDS)
        rows.append(
            {
                "split": split,
                "hours": fields.shape[0],
                "prior_steps": args.steps,
                "train_seconds": round(training_seconds(run), 1),
                "samples": args.samples,
                "coverage": round(float(interval_coverage(*interval, fields, ds.domain.mass)), 4),
                "calibrated": round(0.9 * (args.samples - 1) / (args.samples + 1), 4),
                **{
                    f"band_ratio_{i + 1}": round(float(p / d), 3)
                    for i, (p, d) in enumerate(zip(power_prior, power_data, strict=True))
                },
            }
        )
        print(rows[-1], flush=True)
    write_csv(args.out / "uk_interleaved_days.csv", rows)
    print(f"wrote {args.out / 'uk_interleaved_days.csv'}")


if __name__ == "__main__":
    main()
