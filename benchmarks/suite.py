"""The benchmark suite: every method on every real problem, one table per problem in suite.md.

Problems (real data of `$MANIFOLD_APS_DATA`; see `manifold_aps.datasets`):

* ``era5-uk``      ERA5 t2m, UK 0.25° lat-lon grid (1617 cells), test hours 25-31 March 2019;
* ``era5-global``  ERA5 t2m, global 1° regridded to HEALPix nside 16 (3072 px), test steps 18-23;
* ``mesh-bunny``   Matérn draws and heat-diffused sources on the Stanford bunny (3485 vertices);
* ``mesh-spot``    the same on Spot (2930 vertices);
* ``wmap-masked``  WMAP W-band temperature, HEALPix nside 16, observed outside its real analysis
                   mask and scored on 6 caps of observed sky held out from the prior's training.

Each test field loses `--missing` (70 %) of its cells at random (WMAP: the analysis mask and the
caps) and the rest is observed with Gaussian noise. Methods: the exact Gaussian posterior of a
Matérn prior fitted by maximum likelihood to training fields ("kriging"), harmonic (Laplace)
interpolation, nearest neighbour, the three amortized engines distilled from the problem's trained
diffusion prior on random masks (APS flow, implicit generator, amortized VI) and DPS
(`--dps-steps`, guidance chosen among `DPS_GUIDANCE` on two separate validation observations at
the same step count). Scores over the hidden cells, area-weighted: RMSE of the ensemble mean,
fair CRPS (the absolute error for point estimates), spread/skill, 90 % interval coverage; and
training time, seconds per sample (the scoring call divided by the number of samples), samples
per second (one call drawing `--throughput` samples for one observation; DPS draws sequentially,
so its rate is the inverse of its time per sample; a point estimate counts as one sample), peak
memory growth while sampling (resident set size polled every 2 ms), and each method's speed-up
over DPS measured in the same run.

Layout: `--runs/<problem>/{prior,aps,implicit,avi}` (trained when missing, resumed when
interrupted); `results/suite-<problem>.csv` per problem; `results/suite.md` (every problem's table,
included by the docs' benchmarks page), rebuilt from all per-problem CSVs; with `--readme FILE`
also the section of FILE between the `benchmark-suite` markers.

Usage:
  python benchmarks/suite.py                              # all problems (hours on a laptop CPU)
  python benchmarks/suite.py --problems era5-uk mesh-spot # some; suite.md keeps the others
  python benchmarks/suite.py --problems mesh-spot --methods DPS   # one method; keeps the others
  python benchmarks/suite.py --report-only                # rebuild suite.md from the CSVs
  python benchmarks/suite.py --quick --runs /tmp/r --out /tmp/o --no-readme   # smoke test, ~1 min
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from common import (
    ENGINE_METHODS,
    PeakMemory,
    mask_validation,
    train_amortized_engines,
    trained_steps,
    training_seconds,
    tune_dps,
    write_csv,
)

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.metrics import (
    bootstrap_interval,
    central_interval,
    crps_ensemble,
    interval_coverage,
    pit_coverage,
    rank_histogram,
    spread_skill_ratio,
    weighted_rmse,
)
from manifold_aps.operators import GaussianNoise, Mask, RandomMaskGenerator
from manifold_aps.posterior import (
    DPS,
    ExactGaussianPosterior,
    HarmonicInterpolation,
    NearestNeighbour,
)
from manifold_aps.posterior.distill import held_out_signals
from manifold_aps.posterior.dps import GUIDANCE_CHOICES
from manifold_aps.priors import fit_matern
from manifold_aps.priors.train import train_prior
from manifold_aps.training import TrainConfig

HERE = Path(__file__).resolve().parent
README_START, README_END = "<!-- benchmark-suite:start -->", "<!-- benchmark-suite:end -->"
# the score prior's training steps (the first tables' 1000 left an under-trained prior, below)
PRIOR_STEPS = 3000
METHODS = ("kriging", "harmonic", "nearest", "APS", "APS-spectral", "implicit", "AVI", "DPS")
POINT_ESTIMATES = ("harmonic", "nearest")
# candidate step sizes, chosen per problem at the final step count: those of DPS's "auto"
DPS_GUIDANCE = GUIDANCE_CHOICES


@dataclass(frozen=True)
class Problem:
    """One row group of the table.

    Attributes:
        dataset: a name of `manifold_aps.datasets.dataset_names()`.
        label: how the table names it.
        noise_std: observation noise, in the dataset's units.
    """

    dataset: str
    label: str
    noise_std: float


PROBLEMS = {
    "era5-uk": Problem("era5-uk", "ERA5 t2m UK, 0.25° lat-lon (1617 cells) [K]", 0.1),
    "era5-global": Problem("era5-global", "ERA5 t2m global, HEALPix nside 16 (3072 px) [K]", 0.1),
    "mesh-bunny": Problem("mesh-bunny", "Stanford bunny (3485 vertices) [unit variance]", 0.1),
    "mesh-spot": Problem("mesh-spot", "Spot (2930 vertices) [unit variance]", 0.1),
    "wmap-masked": Problem(
        "wmap-masked",
        "WMAP W band, HEALPix nside 16 (3072 px): real analysis mask, scored on 6 held-out caps "
        "[mK]",
        0.005,
    ),
}


def test_observations(
    ds, noise: GaussianNoise, n: int, missing: float, seed: int, split: str = "test"
):
    """`(y, operator, truth, where)`: `n` test fields with `missing` of the cells hidden at random.

    A dataset with a real mask and held-out regions (`extra["visible"]`, `extra["holdout"]`: WMAP
    under its analysis mask) is observed where visible and scored on the held-out regions instead
    (one map; `n` copies with independent noise). `split="validation"` draws the fields from the
    validation split instead (not for such a dataset: its held-out regions are its only truth).
    """
    if split != "test" and "holdout" in ds.extra:
        raise SystemExit(
            f"--split {split}: this problem is scored on held-out regions of one map, "
            "it has no other split"
        )
    test = held_out_signals(ds, split)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(test.shape[0], generator=g)[:n]
    truth = test[idx].double()
    if truth.shape[0] < n:  # fewer test fields than asked: reuse them
        truth = truth[torch.arange(n) % truth.shape[0]]
    if "holdout" in ds.extra:
        mask = (
            torch.as_tensor(ds.extra["visible"], dtype=torch.bool)
            .reshape(1, -1, 1)
            .expand(n, -1, 1)
            .clone()
        )
        where = (
            torch.as_tensor(ds.extra["holdout"], dtype=torch.bool)
            .reshape(1, -1, 1)
            .expand(n, -1, 1)
        )
    else:
        mask = RandomMaskGenerator(ds.domain, missing=missing).step(n, seed=seed)["mask"]
        where = ~mask
    y = noise(truth, mask, rng=g)
    return y, Mask(ds.domain, mask), truth, where.expand_as(truth)


def scores(samples: torch.Tensor, truth, where, weight, point: bool) -> dict:
    """RMSE of the mean, one-sample RMSE, CRPS; spread/skill, coverage unless a point estimate.

    `coverage_90` is the share of hidden values inside the samples' own 5-95 % interval: of S
    exchangeable samples it covers about 0.9 (S - 1) / (S + 1) (79.4 % at S = 16, exactly so for
    uniform marginals, 80.7 % for Gaussian ones), so it reads low for a small ensemble;
    `coverage_90_pit` is the 90 % coverage read off the rank histogram (`pit_coverage`), exactly
    0.9 for a calibrated ensemble of any size. Each score of the ensemble also gets a 95 %
    percentile-bootstrap interval over the test fields (`<score>_lo`, `<score>_hi`; 1000
    resamples of the fields, with replacement), and a probabilistic method its rank histogram
    (`rank_histogram`, the `S + 1` frequencies joined by ";"). Samples `(S, B, N, C)`, truth
    and where `(B, N, C)`.
    """
    ensemble = samples[:1] if point else samples

    def rmse(s, t, w):
        return weighted_rmse(s.mean(0), t, weight, w)

    def coverage(s, t, w):
        return interval_coverage(*central_interval(s, 0.9), t, weight, w)

    def pit(s, t, w):  # the 90 % level read off the rank histogram: unbiased for any S
        return pit_coverage(rank_histogram(s, t, weight, w), 0.9)

    def spread_skill(s, t, w):
        return spread_skill_ratio(s, t, weight, w)

    def crps(s, t, w):
        return crps_ensemble(s, t, weight, w)

    metrics = {"rmse_mean": rmse, "crps": crps}
    if not point:
        metrics.update(spread_skill=spread_skill, coverage_90=coverage, coverage_90_pit=pit)
    out = {
        "rmse_single": float(weighted_rmse(samples[0], truth, weight, where)),
        "spread_skill": "",
        "coverage_90": "",
        "coverage_90_pit": "",
    }
    full = {}  # scores on all fields that are read off something computed once
    if not point:
        hist = rank_histogram(samples, truth, weight, where)
        full["coverage_90_pit"] = float(pit_coverage(hist, 0.9))
    for key, metric in metrics.items():
        out[key] = full[key] if key in full else float(metric(ensemble, truth, where))
        if truth.shape[0] >= 2:
            out[f"{key}_lo"], out[f"{key}_hi"] = bootstrap_interval(
                lambda i, metric=metric: metric(ensemble[:, i], truth[i], where[i]),
                truth.shape[0],
            )
    if not point:
        out["rank_histogram"] = ";".join(f"{v:.5f}" for v in hist.tolist())
    return out


def rank_frequencies(row: dict) -> torch.Tensor:
    """A row's stored rank histogram `(S + 1,)` float64 (`scores` joins it with ";")."""
    return torch.tensor([float(v) for v in row["rank_histogram"].split(";")], dtype=torch.float64)


def save_rank_histograms(path: Path, label: str, rows: list[dict], per_row: int = 5) -> None:
    """One panel per probabilistic method (`per_row` a row): its rank histogram, flat = 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.get("rank_histogram")]
    if not shown:
        return
    rows_ = -(-len(shown) // per_row)  # as few rows as `per_row` allows, filled evenly
    cols = -(-len(shown) // rows_)
    fig, axes = plt.subplots(
        rows_, cols, figsize=(2.6 * cols, 0.4 + 2.3 * rows_), sharey=True, squeeze=False
    )
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    for ax, r in zip(axes.flat, shown, strict=False):
        freq = rank_frequencies(r).numpy()
        ax.bar(np.arange(freq.size), freq * freq.size, width=1.0, color="tab:blue")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(textwrap.fill(r["method"], 30), fontsize=8)
        ax.set_xlabel("rank of the truth", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("frequency × (S + 1)", fontsize=8)
    title = (
        f"{label}: rank histograms ({shown[0]['observations']} fields × "
        f"{shown[0]['samples']} samples; flat = calibrated, U = over-confident)"
    )
    fig.suptitle(textwrap.fill(title, 34 * cols), fontsize=9)  # ~34 characters a panel
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timed_sample(method: str, sampler, y, operator, n: int, seed: int):
    """Samples `(n, B, N, C)` in float64, wall seconds and peak memory growth [MB] of one call."""
    g = torch.Generator().manual_seed(seed)
    yin = y.float() if method in ("DPS", "APS", "implicit", "AVI") else y
    grad = method in ("DPS", "AVI")  # both differentiate the likelihood while sampling
    with PeakMemory() as mem, torch.set_grad_enabled(grad):
        t0 = time.perf_counter()
        s = sampler.sample(yin, operator, n, rng=g)
        sec = time.perf_counter() - t0
    return s.detach().double(), sec, mem.peak_mb


def prior_train_config(steps: int, quick: bool = False) -> TrainConfig:
    """The suite's score-prior training recipe for `steps` steps (`quick`: a tiny batch)."""
    return TrainConfig(
        steps=steps,
        batch_size=4 if quick else 32,
        lr=2e-3,
        warmup=min(100, steps // 4),
        ema_decay=0.999,
        checkpoint_every=250,
        validate_every=0 if quick else 250,
        log_every=25,
    )


def prior_checkpoint(
    problem: Problem, ds, runs: Path, steps: int, quick: bool
) -> tuple[Path, float]:
    """The problem's trained score prior (trained now when missing) and its training seconds."""
    run = runs / problem.dataset / "prior"
    if not (run / "train.json").exists() or trained_steps(run) < steps:
        print(
            f"[{problem.dataset}] training the score prior for {steps} steps into {run}", flush=True
        )
        train_prior(ds, run, prior_train_config(steps, quick), resume=True, progress=not quick)
    return run / "checkpoint.pt", training_seconds(run)


def run_problem(name: str, args, on_row=None) -> list[dict]:
    """Every method of `args.methods` on one problem; rows for the CSV.

    `on_row(rows)`, if given, is called with the rows so far after each method, so a long run
    killed part-way keeps the methods it finished.
    """
    from manifold_aps.priors.train import load_prior

    problem = PROBLEMS[name]
    ds = build_prior_dataset(problem.dataset)
    noise = GaussianNoise(problem.noise_std)
    weight = ds.domain.mass
    y, operator, truth, where = test_observations(
        ds, noise, args.observations, args.missing, seed=2024, split=args.split
    )
    samplers, train_s = {}, {}

    if "kriging" in args.methods:
        t0 = time.perf_counter()
        fields = ds.source.batch(torch.Generator().manual_seed(0), args.fit_fields).double()
        fit = fit_matern(ds.domain, fields, mean=fields.mean(0), fit_nugget=True)
        samplers["kriging"] = ExactGaussianPosterior(fit.prior, noise)
        train_s["kriging"] = time.perf_counter() - t0
        print(
            f"[{name}] Matérn fit on {args.fit_fields} fields: {fit.prior.extra_repr()}", flush=True
        )
    for method, cls in (("harmonic", HarmonicInterpolation), ("nearest", NearestNeighbour)):
        if method in args.methods:
            samplers[method], train_s[method] = cls(ds.domain), 0.0
    needs_prior = [m for m in args.methods if m in ENGINE_METHODS or m == "DPS"]
    prior_path, prior_s, prior_steps = (None, 0.0, "")
    if needs_prior:
        prior_path, prior_s = prior_checkpoint(problem, ds, args.runs, args.prior_steps, args.quick)
        prior_steps = trained_steps(prior_path)
        engines, seconds = train_amortized_engines(
            ds,
            prior_path,
            args.runs / problem.dataset,
            problem.noise_std,
            args.engine_steps,
            args.methods,
        )
        samplers.update(engines)
        train_s.update({m: prior_s + s for m, s in seconds.items()})
    guidance = ""
    if "DPS" in args.methods:
        prior = load_prior(prior_path, ds.domain)
        # at the step count used (tuned at 1/5 of it, 1.0 won everywhere and diverged at 1000
        # steps), on validation signals (the test fields' guidance choice until 2026-12-02)
        guidance = tune_dps(
            prior,
            noise,
            weight,
            mask_validation(ds, noise),
            choices=DPS_GUIDANCE,
            steps=args.dps_steps,
            samples=1,
        )
        samplers["DPS"], train_s["DPS"] = (
            DPS(prior, noise, steps=args.dps_steps, guidance=guidance),
            prior_s,
        )

    rows = []
    for method in [m for m in METHODS if m in samplers]:
        sampler = samplers[method]
        point = method in POINT_ESTIMATES
        s, sec, mem = timed_sample(
            method, sampler, y, operator, 1 if point else args.samples, seed=7
        )
        per_sample = sec / ((1 if point else args.samples) * args.observations)
        if method == "DPS" or point:  # DPS draws one by one; a point estimate is one "sample"
            rate = 1.0 / per_sample
        else:
            _, sec_many, _ = timed_sample(
                method, sampler, y[:1], Mask(ds.domain, operator.mask[:1]), args.throughput, seed=8
            )
            rate = args.throughput / sec_many
        row = {
            "problem": name,
            "nodes": ds.domain.num_nodes,
            "method": method,
            **{
                k: (round(v, 5) if isinstance(v, float) else v)
                for k, v in scores(s, truth, where, weight, point).items()
            },
            "train_seconds": round(train_s.get(method, 0.0), 1),
            "seconds_per_sample": round(per_sample, 6),
            "samples_per_second": round(rate, 2),
            "peak_memory_mb": round(mem, 1),
            "load_average": round(os.getloadavg()[0], 2),
            "machine": machine(),
            "observations": args.observations,
            "samples": args.samples,
            "missing": args.missing,
            "split": args.split,
            "noise_std": problem.noise_std,
            "dps_steps": args.dps_steps if method == "DPS" else "",
            "dps_guidance": guidance if method == "DPS" else "",
            "engine_steps": args.engine_steps if method in ENGINE_METHODS else "",
            "prior_steps": prior_steps if method in ENGINE_METHODS + ("DPS",) else "",
        }
        print(row, flush=True)
        rows.append(row)
        if on_row is not None:
            on_row(rows)
    return rows


def merged_rows(path: Path, new: list[dict]) -> list[dict]:
    """`new` with the rows of `path` (the problem's CSV) of other methods, in `METHODS` order.

    So `--methods DPS` reruns one method and keeps the rest; the speed-ups against DPS are
    recomputed over the merged rows. Every method's `observations` and `samples` must agree.
    """
    kept = []
    if path.exists():
        with open(path, newline="") as fh:
            done = {r["method"] for r in new}
            kept = [r for r in csv.DictReader(fh) if r["method"] not in done]
    for r in kept:
        for key in ("observations", "samples", "missing"):
            if float(r[key]) != float(new[0][key]):
                raise SystemExit(
                    f"{path}: its {r['method']} row has {key}={r[key]}, this run "
                    f"{new[0][key]}: rerun every method (or remove the file)"
                )
    rows = sorted(kept + new, key=lambda r: METHODS.index(r["method"]))
    dps = next((r for r in rows if r["method"] == "DPS"), None)
    for r in rows:
        r["speedup_vs_dps"] = (
            round(float(dps["seconds_per_sample"]) / max(float(r["seconds_per_sample"]), 1e-9), 1)
            if dps
            else ""
        )
    return rows


def machine() -> str:
    """One line on the machine the numbers were measured on."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(
                line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__} on 1 thread, no GPU"


def _fmt(v, digits=3) -> str:
    if v in ("", None):
        return "–"
    v = float(v)
    return f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"


def _seconds(v) -> str:
    v = float(v)
    return "–" if v == 0 else (f"{v:.0f} s" if v < 120 else f"{v / 60:.0f} min")


def report(out: Path, rows: list[dict], machine_line: str) -> str:
    """Markdown tables (one per problem, in `PROBLEMS` order) of the suite's rows."""
    lines = [
        "Each problem: held-out test fields (how many, the machine and its load after its name; "
        f"{machine_line} where a row does not say), {float(rows[0]['missing']):.0%} of cells "
        "hidden at random (WMAP: its analysis mask and held-out caps; its fields are one map with "
        "independent noise); scores over the hidden cells, area-weighted (best RMSE and CRPS "
        "in bold); in brackets, 95 % bootstrap intervals over the test fields. *90 % "
        "coverage* is the share of hidden values inside the samples' own 5–95 % interval, which "
        "a calibrated ensemble of S samples fills only to about 0.9 (S − 1)/(S + 1) (79–81 % at "
        "S = 16); *PIT 90 %* reads the same level off the rank histogram, exactly 90 % for a "
        "calibrated ensemble of any size. Training time "
        "includes the diffusion prior's for the engines distilled from it. "
        "`results/suite-*.csv` has every number.",
        "",
    ]
    for name, problem in PROBLEMS.items():
        prows = [r for r in rows if r["problem"] == name]
        if not prows:
            continue
        best = {k: min(float(r[k]) for r in prows) for k in ("rmse_mean", "crps")}
        loads = [float(r["load_average"]) for r in prows if r.get("load_average") not in ("", None)]
        priors = sorted({r["prior_steps"] for r in prows if r.get("prior_steps")}, key=int)
        split = prows[0].get("split") or "test"
        setting = (
            f"{prows[0]['observations']} {split} fields × {prows[0]['samples']} samples"
            + (f"; score prior {' / '.join(priors)} steps" if priors else "")
            + (f"; {prows[0]['machine']}" if prows[0].get("machine") else "")
            + (f", load average {min(loads):.1f}–{max(loads):.1f}" if loads else "")
        )
        figure = out / f"rank-{name}.png"
        lines += [
            f"**{problem.label}** ({setting})",
            "",
            *([f"Rank histograms: `results/{figure.name}`.", ""] if figure.exists() else []),
            "| method | RMSE of mean | CRPS | spread/skill | 90 % coverage | PIT 90 % | training "
            "| s per sample | samples/s | peak memory | speed-up vs DPS |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in prows:
            rmse = _fmt(r["rmse_mean"])
            crps = _fmt(r["crps"])
            rmse = f"**{rmse}**" if float(r["rmse_mean"]) == best["rmse_mean"] else rmse
            crps = f"**{crps}**" if float(r["crps"]) == best["crps"] else crps
            cov = "–" if r["coverage_90"] in ("", None) else f"{float(r['coverage_90']):.0%}"
            spread = _fmt(r["spread_skill"], 2)
            if r.get("coverage_90_lo") not in ("", None):  # a 95 % bootstrap interval
                cov += f" [{float(r['coverage_90_lo']):.0%}–{float(r['coverage_90_hi']):.0%}]"
                spread += f" [{_fmt(r['spread_skill_lo'], 2)}–{_fmt(r['spread_skill_hi'], 2)}]"
            pit = _pit_coverage(r)
            pit = "–" if pit is None else f"{pit:.0%}"
            if r.get("coverage_90_pit_lo") not in ("", None):
                pit += (
                    f" [{float(r['coverage_90_pit_lo']):.0%}–{float(r['coverage_90_pit_hi']):.0%}]"
                )
            extra = (
                f" ({r['dps_steps']} steps, guidance {r['dps_guidance']})"
                if r["method"] == "DPS"
                else ""
            )
            speedup = "–" if r["speedup_vs_dps"] in ("", None) else f"{_fmt(r['speedup_vs_dps'])}×"
            lines.append(
                f"| {r['method']}{extra} | {rmse} | {crps} | {spread} | "
                f"{cov} | {pit} | {_seconds(r['train_seconds'])} | "
                f"{_fmt(r['seconds_per_sample'])} | "
                f"{_fmt(r['samples_per_second'])} | "
                f"{_fmt(r['peak_memory_mb'])} MB | {speedup} |"
            )
        lines.append("")
    text = "\n".join(lines)
    (out / "suite.md").write_text(text + "\n")
    return text


def _pit_coverage(row: dict) -> float | None:
    """A row's PIT 90 % coverage: its `coverage_90_pit`, else read off its stored rank histogram.

    (Rows written before the column existed carry the histogram, which determines it.)
    """
    if row.get("coverage_90_pit") not in ("", None):
        return float(row["coverage_90_pit"])
    if row.get("rank_histogram") in ("", None):
        return None
    return float(pit_coverage(rank_frequencies(row), 0.9))


def insert_into_readme(readme: Path, table: str) -> None:
    """Replace the text between the `benchmark-suite` markers of the README with `table`."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(
            f"{readme} has no {README_START} ... {README_END} markers; add them where the table "
            "goes"
        )
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{table}\n{README_END}{tail}")


def load_rows(out: Path) -> list[dict]:
    rows = []
    for name in PROBLEMS:
        path = out / f"suite-{name}.csv"
        if path.exists():
            with open(path, newline="") as fh:
                rows += list(csv.DictReader(fh))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--runs",
        type=Path,
        default=HERE.parent / "runs" / "suite",
        help="folder of the trained priors and engines (default: runs/suite)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder of the CSV and Markdown files (default: results, or results/validation "
        "with --split validation)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "validation"],
        help="the held-out fields scored (default test; validation: the dataset's validation "
        "fields, e.g. to tell an engine's own miscalibration from a shift between the training "
        "and the test period; DPS's guidance is then tuned on the same fields, other masks)",
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also write the tables between the benchmark-suite markers of this Markdown file "
        "(default: none; the docs include results/suite.md)",
    )
    parser.add_argument("--no-readme", action="store_true", help="do not touch the README")
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild suite.md (and --readme's table)"
    )
    parser.add_argument(
        "--prior-steps",
        type=int,
        default=PRIOR_STEPS,
        help="score-prior training steps (default 3000: on Spot the 1000 of the first tables left "
        "3-10x the data's power at small scales, 3000 removed it; a prior trained longer is used "
        "as it is, and each row records its steps)",
    )
    parser.add_argument(
        "--engine-steps", type=int, default=300, help="training steps of each amortized engine"
    )
    parser.add_argument(
        "--dps-steps",
        type=int,
        default=200,
        help="DPS's reverse-diffusion steps (default 200: with the clamped Tweedie estimate, "
        "16 x 16 samples in ~10 min a problem; the first tables' 1000 took ~1 h)",
    )
    parser.add_argument(
        "--observations", type=int, default=16, help="test fields per problem (default 16)"
    )
    parser.add_argument(
        "--samples", type=int, default=16, help="samples per test field, every method (default 16)"
    )
    parser.add_argument(
        "--throughput", type=int, default=256, help="samples drawn in one call to measure samples/s"
    )
    parser.add_argument("--missing", type=float, default=0.7, help="fraction of cells hidden")
    parser.add_argument(
        "--fit-fields", type=int, default=256, help="training fields for the Matérn fit"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings for a smoke test (numbers meaningless)"
    )
    args = parser.parse_args()
    if args.quick:
        args.prior_steps, args.engine_steps, args.dps_steps = 4, 2, 4
        args.observations, args.samples, args.throughput, args.fit_fields = 2, 2, 4, 16
    torch.set_num_threads(1)
    if args.out is None:
        args.out = HERE / "results" / ("validation" if args.split == "validation" else "")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name in args.problems:
            path = args.out / f"suite-{name}.csv"
            scored = {r.get("split") or "test" for r in load_rows(args.out) if r["problem"] == name}
            if scored - {args.split}:  # checked before hours of work, not when merging
                raise SystemExit(
                    f"{path} is scored on the {scored.pop()} split, this run on {args.split}: "
                    "give another --out"
                )

            def save(rows, path=path):
                write_csv(path, merged_rows(path, rows))

            rows = merged_rows(path, run_problem(name, args, on_row=save))
            write_csv(path, rows)
            save_rank_histograms(args.out / f"rank-{name}.png", PROBLEMS[name].label, rows)
    rows = load_rows(args.out)
    if not rows:
        raise SystemExit(f"no results in {args.out}; run the suite first")
    table = report(args.out, rows, machine())
    print(table)
    if args.readme is not None and not args.no_readme:
        insert_into_readme(args.readme, table)


if __name__ == "__main__":
    main()
