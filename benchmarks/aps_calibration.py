"""What moves the APS flow's calibration: the forward-KL term, its signals, the distillation length.

The suite's APS flow is over-confident on every real problem (90 % intervals cover 31-47 %). This
script distils APS variants from one problem's trained diffusion prior (the suite's, in
`--runs/<problem>/prior`; trained there when missing) and scores each on the suite's held-out
test fields (`suite.test_observations`, `suite.scores`: RMSE of the mean, CRPS, spread/skill and
90 % coverage with 95 % bootstrap intervals over the fields, the rank histogram):

* ``reverse``        the reverse KL alone (APS as published; the suite's settings);
* ``fkl-prior``      plus `--weight` times the forward KL on draws of the prior itself
                     (`APSConfig(forward_kl_signals="prior")`: 256 reverse-SDE draws made once;
                     no data enters);
* ``fkl-data``       plus the forward KL on the training signals the observations are simulated
                     from (neural posterior estimation on them; never a test field);
* ``reverse-long``   the reverse KL for `--long-steps` steps (10x), scored at `--snapshots`;
* ``reverse-spread`` ``reverse``'s engine with a post-hoc spread factor
                     (`manifold_aps.posterior.calibration`) fitted on observations simulated
                     from the dataset's *validation* signals (never the test fields);
* ``implicit-spread`` the suite's implicit generator (`--runs/<problem>/implicit`, as trained
                     there; not retrained) with the same post-hoc factor (it is too wide);
* ``aps-spread``, ``aps-spectral-spread``  the suite's APS and APS-spectral engines
                     (`--runs/<problem>/aps`, `.../aps-spectral`), as trained there, with it.

A prior trained to another step count than the first rows' 1000 (`--prior-steps`, or a run trained
longer) names its rows and runs (`, prior 3000 steps`); `--prior-run` notes which training run of
it the rows used.

Variants run one after another; each is resumable (`--runs/aps-calibration/<problem>/<variant>`).
Results: `results/aps_calibration-<problem>.csv` (one row per variant and step count, written
as each is scored) and
`results/aps-calibration-<problem>.png` (rank histograms).

Usage:
  python benchmarks/aps_calibration.py                        # mesh-spot, every variant
  python benchmarks/aps_calibration.py --variants reverse fkl-prior --steps 300
  python benchmarks/aps_calibration.py --variants reverse --elbo-times 4   # a less noisy ELBO
  python benchmarks/aps_calibration.py --quick --runs /tmp/r --out /tmp/o   # smoke test
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import (
    FIRST_PRIOR_STEPS,
    engine_train_config,
    keep_earlier,
    read_csv,
    trained_steps,
    training_seconds,
    write_csv,
)
from suite import (
    PRIOR_STEPS,
    PROBLEMS,
    prior_checkpoint,
    save_rank_histograms,
    scores,
    test_observations,
)

from manifold_aps.datasets import TensorSource, build_prior_dataset
from manifold_aps.operators import GaussianNoise, RandomMaskGenerator
from manifold_aps.posterior.aps import APSConfig
from manifold_aps.posterior.calibration import SpreadCalibrated, fit_spread_factor
from manifold_aps.posterior.distill import resolve_prior
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.posterior.observations import SimulatedObservations

HERE = Path(__file__).resolve().parent
VARIANTS = (
    "reverse",
    "fkl-prior",
    "fkl-data",
    "reverse-long",
    "reverse-spread",
    "implicit-spread",
    "aps-spread",
    "aps-spectral-spread",
)
# the variants that score one of the suite's trained engines (`--runs/<problem>/<engine>`) as it
# is, with the post-hoc spread factor, instead of distilling one here
SUITE_ENGINES = {
    "implicit-spread": "implicit",
    "aps-spread": "APS",
    "aps-spectral-spread": "APS-spectral",
}


def settings(variant: str, weight: float, bank: int, elbo_times: int = 1) -> APSConfig:
    """The APS settings of a variant (the suite's, `dense_limit=1000`, plus the forward term).

    `elbo_times`: the (t, eps) pairs of the prior's ELBO per flow sample (the suite's: 1).
    """
    base = APSConfig(dense_limit=1000, elbo_times=elbo_times)
    if variant.startswith("fkl-"):
        return replace(
            base,
            forward_kl_weight=weight,
            forward_kl_signals=variant.removeprefix("fkl-"),
            prior_bank=bank,
        )
    return base


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problem", default="mesh-spot", choices=list(PROBLEMS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "suite")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--steps", type=int, default=300, help="distillation steps (default 300)")
    parser.add_argument("--long-steps", type=int, default=3000, help="reverse-long's steps")
    parser.add_argument(
        "--snapshots", type=int, nargs="+", default=[1000], help="reverse-long's scored steps"
    )
    parser.add_argument("--weight", type=float, default=1.0, help="forward-KL weight lambda")
    parser.add_argument("--bank", type=int, default=256, help="prior draws of fkl-prior")
    parser.add_argument(
        "--prior-steps", type=int, default=PRIOR_STEPS, help="the suite prior's (default 3000)"
    )
    parser.add_argument("--observations", type=int, default=16)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--missing", type=float, default=0.7)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed of the distilled variants (default 0; another one trains its own run, "
        "named with the seed, to see how much one run differs from the next)",
    )
    parser.add_argument(
        "--elbo-times",
        type=int,
        default=1,
        help="(t, eps) pairs of the prior's ELBO per flow sample in the reverse KL (default 1, "
        "the suite's; another count trains its own run, named with it)",
    )
    parser.add_argument(
        "--prior-run",
        default="",
        help="a note on the prior's training run written into the rows' prior_run column "
        "(e.g. 'retrained 2026-12-03'; default: none)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings (numbers meaningless)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.long_steps, args.snapshots, args.prior_steps = 3, 6, [3], 4
        args.observations, args.samples, args.bank = 2, 3, 4
    torch.set_num_threads(1)
    problem = PROBLEMS[args.problem]
    ds = build_prior_dataset(problem.dataset)
    noise = GaussianNoise(problem.noise_std)
    weight = ds.domain.mass
    y, operator, truth, where = test_observations(
        ds, noise, args.observations, args.missing, seed=2024
    )
    prior_path, _ = prior_checkpoint(problem, ds, args.runs, args.prior_steps, args.quick)
    prior = resolve_prior(ds, prior_path)
    # the step the prior reached (a run trained longer than --prior-steps is used as it is)
    prior_steps = trained_steps(prior_path)
    path = args.out / f"aps_calibration-{args.problem}.csv"
    earlier = read_csv(path)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants:
        weighted = variant.startswith("fkl-") and args.weight != 1.0
        label = f"{variant}, lambda {args.weight:g}" if weighted else variant
        folder = "reverse" if variant == "reverse-spread" else variant  # the same training
        folder = f"{variant}-w{args.weight:g}" if weighted else folder
        trained = variant not in SUITE_ENGINES  # distilled here, else the suite's engine as it is
        suffix = ""  # what names the run beyond the variant, kept through the spread's relabel
        if args.elbo_times != 1 and trained:
            suffix = f"{suffix}, {args.elbo_times} ELBO times"
            folder = f"{folder}-t{args.elbo_times}"
        if prior_steps != FIRST_PRIOR_STEPS:  # the first rows name no prior
            suffix, folder = f"{suffix}, prior {prior_steps} steps", f"{folder}-p{prior_steps}"
        if args.seed and trained:
            suffix, folder = f"{suffix}, seed {args.seed}", f"{folder}-s{args.seed}"
        run = args.runs / "aps-calibration" / args.problem / folder
        total = args.long_steps if variant == "reverse-long" else args.steps
        stops = sorted({s for s in args.snapshots if s < total} | {total})
        stops = stops if variant == "reverse-long" else [total]
        if not trained:
            run = args.runs / args.problem / SUITE_ENGINES[variant].lower()
            stops = [trained_steps(run)]
        for stop in stops:
            reached = stop  # a suite engine: the step it was trained to
            if trained:
                print(f"[{args.problem}] {variant}: distilling to step {stop} of {total}")
                _, result = train_engine(
                    "aps",
                    ds,
                    prior_path,
                    run,
                    replace(engine_train_config(total), seed=args.seed),
                    settings=settings(variant, args.weight, args.bank, args.elbo_times),
                    masks="random",
                    noise_std=problem.noise_std,
                    resume=True,
                    stop_after=stop,
                )
                reached = result.step
            engine = load_engine(run / "checkpoint.pt", ds, prior=prior)[0]
            factor = ""
            if variant.endswith("-spread"):
                val = ds.source.validation()
                stream = SimulatedObservations(
                    TensorSource(val, val), RandomMaskGenerator(ds.domain, args.missing), noise
                )
                batch = stream.batch(torch.Generator().manual_seed(11), args.observations)
                factor = fit_spread_factor(engine, batch, ds.domain, samples=args.samples)
                engine = SpreadCalibrated(engine, factor)
                what = SUITE_ENGINES.get(variant, "reverse")
                label = f"{what} + spread x {factor:.2f} (fitted on validation)"
            label_run = f"{label}{suffix}"
            t0 = time.perf_counter()
            with torch.no_grad():
                s = engine.sample(
                    y.float(), operator, args.samples, rng=torch.Generator().manual_seed(7)
                )
            row = {
                "problem": args.problem,
                # the step reached, not the one asked for: an interrupted run (Ctrl-C, SIGTERM)
                # stops early, checkpoints and is scored where it stopped
                "method": f"{label_run} ({reached} steps)",
                "variant": variant,
                "steps": reached,
                "schedule_steps": total,
                "forward_kl_weight": args.weight if variant.startswith("fkl-") else 0.0,
                "spread_factor": factor,
                "elbo_times": args.elbo_times if trained else "",
                "prior_steps": prior_steps,
                "prior_run": args.prior_run,
                **scores(s.double(), truth, where, weight, point=False),
                "train_seconds": round(training_seconds(run), 1),
                "sample_seconds": round(time.perf_counter() - t0, 3),
                "observations": args.observations,
                "samples": args.samples,
            }
            print({k: v for k, v in row.items() if k != "rank_histogram"}, flush=True)
            rows.append(row)
            # written after every row (a stopped run keeps what it measured), beside the rows
            # of other variants and weights from earlier runs
            # (a row of the same label from another prior run, `--prior-run`, is kept)
            merged = keep_earlier(earlier, rows, ("method", "prior_run"))
            write_csv(path, merged)
            save_rank_histograms(
                args.out / f"aps-calibration-{args.problem}.png", problem.label, merged
            )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
