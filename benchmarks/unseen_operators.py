"""Engines trained on random masks, tested on operators they never saw: caps, swaths, a heat blur.

For each problem (ERA5 t2m UK and Spot with the benchmark suite's trained score priors, trained
here for `--prior-steps` when missing; the bumpy mesh with a known Matérn prior)
every amortized engine (APS flow, implicit generator, amortized VI) is trained on observations
with *random* masks (50-95 % missing) only, then all engines sample posteriors for held-out test
signals observed through

* random masks (the training family), geodesic caps hidden, satellite swaths observed, and
* a heat blur of the whole field, `A = exp(-t L)` with `t = 1 / lambda_30` (no mask at all),

all with noise 0.1. Scores per engine and operator, over the hidden cells (every cell for the
blur), area-weighted: RMSE of the mean of S samples and of one sample, fair CRPS, coverage of
the samples' central 90 % interval, and seconds per sample measured in this run. DPS
(`--dps-steps`, 200 as in the suite) is the zero-shot baseline; its guidance step is chosen among
0.1, 0.3, 1 per operator, on two observations of validation signals through that operator
(never the test fields) at that step count. MGDM, the zero-shot sampler the amortized VI
accelerates, runs at the amortizer's own grid (``MGDM-8``: K = 8, one Adam step per iteration,
what an untrained amortizer samples) and at the yardstick's best setting (``MGDM-20``: K = 20,
10 Adam steps at lr 0.05; `amortized_vi_yardstick.py`). ``DAPS-20`` is decoupled annealing
(`manifold_aps.posterior.daps`) at K = 20 levels: 20 network passes, no backward pass, the exact
Gaussian inner step, nothing tuned; zero-shot, yet it keeps the amortized engine's contract
(explicit likelihood at test time, <= 20 network evaluations), so it is held to the same targets
(``DAPS-20-w0.5``, half the inner width, too; ``DAPS-50``, 50 levels, is not: over budget).
``DAPS-20-EOF`` and ``DAPS-20-LB`` amortize DAPS's inner step: its Gaussian takes the covariance
of the denoiser's errors (`fit_inner_covariance`), fitted once per prior on the training signals,
no operator, in 256 EOFs of them or the 400 lowest Laplace-Beltrami eigenvectors (its
`train_seconds_this_run`; `engine_steps` counts its 20 x 256 denoised draws).
Where the prior is Gaussian the exact posterior is scored too.

Writes results/unseen_operators.csv (`--merge` keeps an earlier file's rows that this run does not
redo, a row being a problem, operator, method and training length; the speed-ups use the DPS rows
of the file) and results/unseen_operators_targets.csv: every amortized-VI and DAPS row against
the issue's targets (`engine_targets`; `--targets-only` rechecks them on the file without
running), and
results/unseen_operators.md, the tables of CRPS and time per sample (`report`). Usage:
  python benchmarks/unseen_operators.py --runs /path/to/runs [--problems era5-uk gaussian-bumpy]
      [--methods AVI] [--avi-steps 2500] [--prior-steps 3000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import (
    FIRST_PRIOR_STEPS,
    keep_earlier,
    read_csv,
    train_amortized_engines,
    trained_steps,
    tune_dps,
    write_csv,
)
from suite import PRIOR_STEPS, prior_checkpoint
from suite import PROBLEMS as SUITE_PROBLEMS

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.metrics import (
    central_interval,
    crps_ensemble,
    interval_coverage,
    pit_coverage,
    rank_histogram,
    weighted_rmse,
)
from manifold_aps.operators import GaussianNoise, HeatBlur
from manifold_aps.posterior import DPS, ExactGaussianPosterior
from manifold_aps.posterior.daps import DAPS
from manifold_aps.posterior.distill import (
    held_out_observations,
    held_out_signals,
    resolve_prior,
)
from manifold_aps.posterior.inner_covariance import fit_inner_covariance
from manifold_aps.posterior.mgdm import MGDM
from manifold_aps.priors.gaussian import GaussianPrior

# score priors: the benchmark suite's, below --runs/suite (trained by the suite's recipe when
# missing); "exact": the dataset's known Gaussian prior
PRIORS = {"era5-uk": "suite", "gaussian-bumpy": "exact", "mesh-spot": "suite"}
OPERATORS = ("random", "caps", "swaths", "blur")
METHODS = (
    "APS",
    "implicit",
    "AVI",
    "DAPS-20",
    "DAPS-20-w0.5",
    "DAPS-50",
    "DAPS-20-EOF",
    "DAPS-20-LB",
    "MGDM-8",
    "MGDM-20",
    "DPS",
    "exact",
)
MGDM_SETTINGS = {  # zero-shot MGDM: (K, Adam steps M, lr)
    "MGDM-8": (8, 1, 0.01),  # the amortizer's grid and outer-window steps: AVI untrained
    "MGDM-20": (20, 10, 0.05),  # the best fixed-cost setting of amortized_vi_yardstick.py
}
DAPS_SETTINGS = {  # DAPS, exact inner step: (K levels, inner_scale, fitted covariance's basis, m)
    "DAPS-20": (20, 1.0, "", 0),  # the default: 20 network passes, white width r = sigma_t
    "DAPS-20-w0.5": (20, 0.5, "", 0),  # half the width (the better one on UK validation hours)
    "DAPS-50": (50, 1.0, "", 0),  # over the engines' budget of 20 passes: what more levels buy
    # the inner covariance fitted on the training signals, 256 draws per level, in the training
    # signals' 256 leading EOFs or the domain's 400 lowest Laplace-Beltrami eigenvectors
    "DAPS-20-EOF": (20, 1.0, "eof", 256),
    "DAPS-20-LB": (20, 1.0, "laplacian", 400),
}
INNER_COVARIANCE_DRAWS = 256
GRADIENT_METHODS = ("DPS", "AVI", *MGDM_SETTINGS)  # they differentiate the likelihood
# the engines held to the targets: fast, explicit likelihood, <= 20 network passes
CANDIDATES = ("AVI", "DAPS-20", "DAPS-20-w0.5", "DAPS-20-EOF", "DAPS-20-LB")


def observations(ds, noise, kind: str, n: int, seed: int, split: str = "test"):
    """Held-out observations of one operator kind: `(y, operator, truth, where)`.

    `split`: the test signals (the validation ones where a dataset has no test split), or the
    validation signals, which DPS's guidance is tuned on.
    """
    if kind != "blur":
        batch = held_out_observations(ds, noise, n, masks=kind, seed=seed, split=split)
        return batch.y, batch.operator(ds.domain), batch.truth, ~batch.mask.expand_as(batch.truth)
    lam, _ = ds.domain.eigenbasis(31)
    blur = HeatBlur(ds.domain, 1.0 / float(lam[30]))
    test = held_out_signals(ds, split)
    truth = test[
        torch.randperm(test.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    ].double()
    y = noise(blur(truth), None, rng=torch.Generator().manual_seed(seed + 1))
    return y, blur, truth, torch.ones_like(truth, dtype=torch.bool)


def scores(samples, truth, where, weight):
    """RMSE of the mean, of the first sample and its median over the samples, CRPS, coverage.

    Coverage two ways: `coverage_90`, the samples' own 5-95 % interval, and `coverage_90_pit`,
    from the rank histogram (`manifold_aps.pit_coverage`; the tables show the first).
    """
    lo, hi = central_interval(samples, 0.9)
    single = torch.stack([weighted_rmse(s, truth, weight, where) for s in samples])
    return {
        "rmse_mean": float(weighted_rmse(samples.mean(0), truth, weight, where)),
        "rmse_single": float(single[0]),
        "rmse_single_median": float(single.median()),
        "crps": float(crps_ensemble(samples, truth, weight, where)),
        "coverage_90": float(interval_coverage(lo, hi, truth, weight, where)),
        # the 90 % level off the rank histogram: 0.9 for a calibrated ensemble of any size, where
        # the S samples' own 5-95 % interval holds about 0.9 (S - 1) / (S + 1) (70 % at S = 8)
        "coverage_90_pit": float(pit_coverage(rank_histogram(samples, truth, weight, where))),
    }


def denoiser_passes(sampler) -> dict:
    """Forward and backward passes of the score network per sample, from the sampler's `cost()`.

    DPS, MGDM and the amortized VI have one; the flows and the exact posterior leave it blank.
    """
    forward, backward = sampler.cost() if hasattr(sampler, "cost") else ("", "")
    return {"denoiser_forward": forward, "denoiser_backward": backward}


def merge_rows(earlier: list[dict], rows: list[dict]) -> list[dict]:
    """The `earlier` rows that `rows` do not redo (same problem, operator, method, lengths).

    A row's lengths: its engine's and its score prior's training steps.

    Returns:
        Those earlier rows, then `rows`.
    """
    columns = ("problem", "operator", "method", "engine_steps", "prior_steps")
    return keep_earlier(earlier, rows, columns)


def write_results(out: Path, rows: list[dict]) -> None:
    """`rows` with their speed-ups over DPS into `out`: the CSV, the targets' CSV, the report.

    A speed-up is against DPS's time on the same problem, operator and prior (blank without it).
    """
    dps = {
        (r["problem"], r["operator"], str(r.get("prior_steps", ""))): float(r["seconds_per_sample"])
        for r in rows
        if r["method"] == "DPS"
    }
    for r in rows:
        key = (r["problem"], r["operator"], str(r.get("prior_steps", "")))
        r["speedup_vs_dps"] = (
            round(dps[key] / max(float(r["seconds_per_sample"]), 1e-9), 1) if key in dps else ""
        )
    write_csv(out / "unseen_operators.csv", rows)
    write_targets(out / "unseen_operators_targets.csv", rows, quiet=True)
    (out / "unseen_operators.md").write_text(report(rows))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=Path, help="folder of the trained priors and engines (e.g. runs)"
    )
    parser.add_argument(
        "--problems", nargs="+", default=["era5-uk", "gaussian-bumpy"], choices=list(PRIORS)
    )
    parser.add_argument(
        "--steps", type=int, default=400, help="training steps of each amortized engine"
    )
    parser.add_argument(
        "--avi-steps",
        type=int,
        default=None,
        help="training steps of the amortized VI (default: --steps; another count trains it "
        "into its own folder)",
    )
    parser.add_argument("--observations", type=int, default=4)
    parser.add_argument(
        "--samples", type=int, default=4, help="samples per observation, every engine"
    )
    parser.add_argument(
        "--dps-steps", type=int, default=200, help="DPS steps (guidance tuned at this count)"
    )
    parser.add_argument(
        "--prior-steps",
        type=int,
        default=PRIOR_STEPS,
        help="training steps of a score prior trained here (a longer trained one is used as is)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=list(METHODS),
        help="engines to run (default: all)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the rows of an earlier results file that this run does not redo",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument(
        "--targets-only",
        action="store_true",
        help="only check the issue's targets on the results file (runs nothing)",
    )
    args = parser.parse_args()
    if args.targets_only:
        rows = read_csv(args.out / "unseen_operators.csv")
        write_targets(args.out / "unseen_operators_targets.csv", rows)
        (args.out / "unseen_operators.md").write_text(report(rows))
        return
    if args.runs is None:
        parser.error("--runs is required (except with --targets-only)")
    torch.set_num_threads(1)
    # rows of an earlier run that this one keeps; the files are rewritten after every row
    earlier = read_csv(args.out / "unseen_operators.csv") if args.merge else []
    rows = []
    for name in args.problems:
        ds = build_prior_dataset(name)
        prior_arg = "exact"
        if PRIORS[name] == "suite":
            prior_arg, _ = prior_checkpoint(
                SUITE_PROBLEMS[name], ds, args.runs / "suite", args.prior_steps, quick=False
            )
        prior = resolve_prior(ds, prior_arg)
        noise = GaussianNoise(0.1)
        weight = ds.domain.mass
        avi_steps = args.avi_steps or args.steps
        # a score prior's training length names its rows and, off the first rows', its engines'
        prior_steps = "" if prior_arg == "exact" else trained_steps(prior_arg)
        run_dir = args.runs / "unseen" / name
        if prior_steps not in ("", FIRST_PRIOR_STEPS):
            run_dir = run_dir / f"prior-{prior_steps}-steps"
        methods = [m for m in args.methods if m != "AVI" or avi_steps == args.steps]
        engines, train_s = train_amortized_engines(ds, prior_arg, run_dir, 0.1, args.steps, methods)
        if "AVI" in args.methods and avi_steps != args.steps:
            more, more_s = train_amortized_engines(
                ds, prior_arg, run_dir / f"{avi_steps}-steps", 0.1, avi_steps, ["AVI"]
            )
            engines, train_s = {**engines, **more}, {**train_s, **more_s}
        engine_steps = {m: (avi_steps if m == "AVI" else args.steps) for m in engines}
        samplers = dict(engines)
        for method, (k, m, lr) in MGDM_SETTINGS.items():
            if method in args.methods:
                samplers[method] = MGDM(prior, noise, steps=k, inner_steps=m, lr=lr)
        for method, (k, width, basis, rank) in DAPS_SETTINGS.items():
            if method in args.methods:
                cov, t0 = None, time.perf_counter()
                if basis:  # fitted on the training signals: its cost counts as training
                    cov = fit_inner_covariance(
                        prior,
                        ds.training_signals(),
                        steps=k,
                        basis=basis,
                        rank=rank,
                        draws=INNER_COVARIANCE_DRAWS,
                        generator=torch.Generator().manual_seed(0),
                    )
                    train_s[method] = time.perf_counter() - t0
                    engine_steps[method] = INNER_COVARIANCE_DRAWS * k
                samplers[method] = DAPS(
                    prior, noise, steps=k, inner_scale=width, inner_covariance=cov
                )
        if isinstance(prior, GaussianPrior) and "exact" in args.methods:
            samplers["exact"] = ExactGaussianPosterior(prior, noise)
        for kind in OPERATORS:
            y, op, truth, where = observations(ds, noise, kind, args.observations, seed=4242)
            zeta = ""
            if "DPS" in args.methods:  # its guidance per operator, on validation signals
                print(f"[{name}] DPS guidance for {kind}", flush=True)
                validation = observations(ds, noise, kind, 2, seed=99, split="validation")
                zeta = tune_dps(prior, noise, weight, validation, steps=args.dps_steps)
                samplers["DPS"] = DPS(prior, noise, steps=args.dps_steps, guidance=zeta)
            for method, sampler in samplers.items():
                g = torch.Generator().manual_seed(11)
                t0 = time.perf_counter()
                yin = y.float() if method == "DPS" and not isinstance(prior, GaussianPrior) else y
                with torch.enable_grad() if method in GRADIENT_METHODS else torch.no_grad():
                    s = sampler.sample(yin, op, args.samples, rng=g).double()
                sec = (time.perf_counter() - t0) / (args.samples * args.observations)
                row = {
                    "problem": name,
                    "nodes": ds.domain.num_nodes,
                    "operator": kind,
                    "seen_in_training": kind == "random",
                    "method": method,
                    **{k: round(v, 5) for k, v in scores(s, truth.double(), where, weight).items()},
                    "seconds_per_sample": round(sec, 5),
                    "samples": args.samples,
                    "engine_steps": engine_steps.get(method, ""),
                    "prior_steps": prior_steps,
                    **denoiser_passes(sampler),
                    "train_seconds_this_run": round(train_s.get(method, 0.0), 1),
                    "dps_guidance": zeta if method == "DPS" else "",
                    # what the guidance was chosen on (earlier rows: random masks of test fields)
                    "dps_tuned_on": f"{kind}, validation signals" if method == "DPS" else "",
                }
                print(row, flush=True)
                rows.append(row)
                write_results(args.out, merge_rows(earlier, rows))
    write_targets(args.out / "unseen_operators_targets.csv", merge_rows(earlier, rows))


def report(rows: list[dict]) -> str:
    """Markdown: per problem and score prior, CRPS / seconds per sample by operator and method.

    Rows of one (problem, prior) group come from one run unless an AVI of another length was
    merged in (its column names its steps); the lowest CRPS of each operator is in bold.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["problem"], str(r.get("prior_steps", ""))), []).append(r)
    parts = []
    for (problem, prior_steps), group in groups.items():
        avi_lengths = sorted({int(r["engine_steps"]) for r in group if r["method"] == "AVI"})

        named = len(avi_lengths) > 1

        def column(r, named=named):
            if named and r["method"] == "AVI":
                return f"AVI ({r['engine_steps']} steps)"
            return r["method"]

        order = [m for m in METHODS if m != "AVI"]
        order[order.index("implicit") + 1 : order.index("implicit") + 1] = (
            [f"AVI ({n} steps)" for n in avi_lengths] if len(avi_lengths) > 1 else ["AVI"]
        )
        present = {column(r) for r in group}
        columns = [c for c in order if c in present]
        prior = f"score prior {prior_steps} steps" if prior_steps else "first rows' prior"
        lines = [
            f"**{problem}** ({prior}): CRPS / seconds per sample, {group[0]['samples']} samples",
            "",
            "| operator | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for operator in OPERATORS:
            cells = {column(r): r for r in group if r["operator"] == operator}
            if not cells:
                continue
            best = min(float(r["crps"]) for r in cells.values())
            row = []
            for c in columns:
                r = cells.get(c)
                if r is None:
                    row.append("")
                    continue
                crps = f"{float(r['crps']):.3g}"
                crps = f"**{crps}**" if float(r["crps"]) == best else crps
                row.append(f"{crps} / {float(r['seconds_per_sample']):.3g} s")
            lines.append(f"| {operator} | " + " | ".join(row) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_targets(path: Path, rows: list[dict], quiet: bool = False) -> None:
    """Write the targets of every AVI row of `rows` to `path` (CSV); print them unless `quiet`."""
    checked = engine_targets(rows)
    for t in [] if quiet else checked:
        steps = f" {t['engine_steps']} steps" if t["engine_steps"] else ""
        print(
            f"[{t['problem']}, prior {t['prior_steps'] or '-'}, {t['method']}{steps}] "
            f"{t['operator']}: " + ", ".join(f"{k} {t[k]}" for k in list(t)[6:]),
            flush=True,
        )
    write_csv(path, checked)


def engine_targets(rows: list[dict]) -> list[dict]:
    """The fast engines (`CANDIDATES`: the amortized VI, DAPS) against the issue's targets.

    One result per problem, prior, operator and row of a candidate engine.

    Unseen operators: CRPS at most 1.10x the best zero-shot sampler's (the lower CRPS of DPS and
    MGDM at its best setting, MGDM-20; not MGDM-8, the amortizer's own untrained grid at its own
    cost) at >= 20x less time per sample, and below APS's and the implicit generator's.
    The training family (random masks): RMSE of the mean at most 1.10x APS's. Every operator: the
    RMSE of the mean at most 1.2x the median single-sample RMSE (no run-away samples). Ratios are
    of rows measured in one run where the file's rows are; a missing method leaves its check
    empty, and `meets` is true only when every check applies and passes.
    """
    zero_shot = ("DPS", "MGDM-20")
    by = {}
    for r in rows:
        key = (r["problem"], str(r.get("prior_steps", "")), r["operator"])
        by.setdefault(key, []).append(r)
    out = []
    for (problem, prior_steps, operator), group in by.items():
        # the other engines of the AVI row's run: the same engine length where there is one
        def pick(method, steps, group=group):
            same = [r for r in group if r["method"] == method]
            equal = [r for r in same if str(r.get("engine_steps", "")) == steps]
            return (equal or same or [None])[0]

        for avi in (r for r in group if r["method"] in CANDIDATES):
            steps = str(avi.get("engine_steps", ""))
            crps, sec = float(avi["crps"]), float(avi["seconds_per_sample"])
            t = {
                "problem": problem,
                "prior_steps": prior_steps,
                "operator": operator,
                "method": avi["method"],
                "engine_steps": steps,
                "seen_in_training": operator == "random",
            }
            checks = []
            if operator == "random":
                aps = pick("APS", steps)
                if aps is not None:
                    ratio = float(avi["rmse_mean"]) / float(aps["rmse_mean"])
                    t["rmse_over_aps"] = round(ratio, 3)
                    checks.append(ratio <= 1.10)
            else:
                best = min(
                    (r for r in group if r["method"] in zero_shot),
                    key=lambda r: float(r["crps"]),
                    default=None,
                )
                if best is not None:
                    t["best_zero_shot"] = best["method"]
                    t["crps_over_best_zero_shot"] = round(crps / float(best["crps"]), 3)
                    t["time_saving_over_it"] = round(float(best["seconds_per_sample"]) / sec, 1)
                    checks += [
                        t["crps_over_best_zero_shot"] <= 1.10,
                        t["time_saving_over_it"] >= 20,
                    ]
                for method in ("APS", "implicit"):
                    other = pick(method, steps)
                    if other is not None:
                        t[f"crps_over_{method}"] = round(crps / float(other["crps"]), 3)
                        checks.append(crps < float(other["crps"]))
            single = avi.get("rmse_single_median", "")
            if single not in ("", None):
                t["mean_over_median_single_rmse"] = round(
                    float(avi["rmse_mean"]) / float(single), 3
                )
                checks.append(t["mean_over_median_single_rmse"] <= 1.2)
            t["meets"] = (
                bool(checks) and all(checks) and (operator == "random" or "best_zero_shot" in t)
            )
            out.append(t)
    return out


if __name__ == "__main__":
    main()
