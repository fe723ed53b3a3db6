"""Meshes: reconstruction from 10 % of the vertices, GMRF hyper-parameters fitted to those only.

Issue 15, must-show 4. On each mesh of `$MANIFOLD_APS_DATA/meshes` (the Stanford bunny, Spot and
the decimated knight, loaded as written by `TriangleMesh.from_file`, as `manifold_aps.datasets`
does) a known truth: a Whittle-Matérn GMRF `u` (alpha 2, practical range 0.2 x sqrt(mesh area),
std 1) plus a white nugget (variance 0.01). `--fields` fields are drawn; each is observed at its
own random 10 % of the vertices with Gaussian noise (std 0.05). Per field:

* ``GMRF fitted (per field)``: (range, std, nugget) by `fit_gmrf` on that field's observed values
  alone (the geostatistician's case: one gappy field, no complete training data), the noise std
  known; then the exact posterior mean and marginal std (`GMRFObservation`).
* ``GMRF fitted (joint)``: the same with one fit to the observed values of all fields together.
* ``GMRF true prior``: the exact posterior under the true prior, nugget and noise (the reference).
* ``harmonic``: `manifold_aps.HarmonicInterpolation` (a point estimate: RMSE only).

Scores over the hidden vertices, mass-weighted (`manifold_aps.metrics.weighted_rmse`), pooled over
the fields: RMSE, its ratio to the true-prior posterior's, Gaussian CRPS, the coverage of the
central 90 % intervals mean +- 1.645 std (with its standard error across fields) and spread/skill
(the root mean posterior variance over the RMSE). Targets: RMSE of the fitted posterior within
5 % of the true prior's, 90 % coverage in [0.88, 0.92]. Writes `results/gmrf_meshes.csv`.

Run time: about 3 minutes on one thread of a shared 2-core machine (20 fields per mesh).

    python benchmarks/gmrf_meshes.py
    python benchmarks/gmrf_meshes.py --meshes decimated-knight.off --fields 8   # seconds
"""

from __future__ import annotations

import os

# before numpy loads BLAS
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import table_cell, target_verdict, write_csv
from scipy.special import ndtr

from manifold_aps import HarmonicInterpolation, TriangleMesh
from manifold_aps.datasets import data_dir
from manifold_aps.metrics import interval_coverage, weighted_mean, weighted_rmse
from manifold_aps.operators import Mask
from manifold_aps.posterior.gmrf import GMRFObservation
from manifold_aps.posterior.gmrf_fit import fit_gmrf
from manifold_aps.priors.gmrf import MaternGMRF

RESULTS = Path(__file__).resolve().parent / "results"
MESHES = ("bunny.off", "spot_triangulated.obj", "decimated-knight.off")
Z90 = 1.6448536269514722  # N(m, s^2)'s central 90 % interval is m +- Z90 s
RMSE_TARGET, COVERAGE_TARGET = 1.05, (0.88, 0.92)


def gaussian_crps(mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> np.ndarray:
    r"""CRPS of :math:`N(m, s^2)` at `truth`, elementwise.

    :math:`s\,[z(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt\pi]` with :math:`z = (\text{truth} - m)/s`.
    """
    z = (truth - mean) / std
    return std * (
        z * (2 * ndtr(z) - 1)
        + 2 * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        - 1 / math.sqrt(math.pi)
    )


def scores(
    mean: np.ndarray,
    std: np.ndarray | None,
    truth: np.ndarray,
    hidden: np.ndarray,
    mass: torch.Tensor,
) -> dict:
    """Mass-weighted scores over the hidden vertices of fields `(F, N)`, pooled, and per field."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[..., None]

    where = torch.from_numpy(hidden)[..., None]
    rmse = float(weighted_rmse(t(mean), t(truth), mass, where))
    per_field = [
        float(weighted_rmse(t(mean[f]), t(truth[f]), mass, where[f])) for f in range(len(mean))
    ]
    out = {
        "rmse": rmse,
        "rmse_fields": per_field,
        "crps": float("nan"),
        "coverage_90": float("nan"),
        "coverage_90_se": float("nan"),
        "spread_skill": float("nan"),
    }
    if std is not None:
        out["crps"] = float(weighted_mean(t(gaussian_crps(mean, std, truth)), mass, where))
        lo, hi = t(mean - Z90 * std), t(mean + Z90 * std)
        out["coverage_90"] = float(interval_coverage(lo, hi, t(truth), mass, where))
        cov = [
            float(interval_coverage(lo[f], hi[f], t(truth[f]), mass, where[f]))
            for f in range(len(mean))
        ]
        out["coverage_90_se"] = (
            float(np.std(cov, ddof=1) / math.sqrt(len(cov))) if len(cov) > 1 else float("nan")
        )
        out["spread_skill"] = math.sqrt(float(weighted_mean(t(std**2), mass, where))) / rmse
    return out


def posterior(
    prior: MaternGMRF, observed: np.ndarray, values: np.ndarray, noise_var: float, nugget: float
):
    """Exact posterior mean and std `(N,)` of the truth `u + e` given `values` on `observed`."""
    obs = GMRFObservation(prior, observed, noise_var, nugget)
    return obs.mean(values), np.sqrt(obs.variance("exact"))


def run_mesh(path: Path, args, rng: np.random.Generator) -> list[dict]:
    mesh = TriangleMesh.from_file(path)
    n, size = mesh.num_nodes, math.sqrt(mesh.total_area)
    true_range = args.range_factor * size
    truth_prior = MaternGMRF.from_range(mesh, range_=true_range, std=1.0, alpha=2)
    noise_var = args.noise_std**2
    fields = truth_prior.sample(args.fields, rng=rng) + math.sqrt(
        args.nugget
    ) * rng.standard_normal((args.fields, n))
    k = max(1, round(args.observed * n))
    observed = np.zeros((args.fields, n), dtype=bool)
    for row in observed:
        row[rng.choice(n, k, replace=False)] = True
    noisy = fields + args.noise_std * rng.standard_normal(fields.shape)
    hidden = ~observed
    mass = mesh.mass.double()
    print(
        f"{path.name}: N={n}, area {mesh.total_area:.4g}, true range {true_range:.4g} "
        "(0.2 sqrt(area)), "
        f"{k} observed vertices per field, {args.fields} fields",
        flush=True,
    )

    preds: dict[str, tuple] = {}
    t0 = time.perf_counter()
    out = [
        posterior(
            truth_prior, np.flatnonzero(observed[f]), noisy[f, observed[f]], noise_var, args.nugget
        )
        for f in range(args.fields)
    ]
    preds["GMRF true prior"] = (
        np.stack([o[0] for o in out]),
        np.stack([o[1] for o in out]),
        time.perf_counter() - t0,
        {},
        "",
    )

    t0 = time.perf_counter()
    fits, out = [], []
    for f in range(args.fields):
        fit = fit_gmrf(mesh, noisy[f], observed[f], alpha=2, noise_std=args.noise_std)
        fits.append(fit)
        out.append(
            posterior(
                fit.prior, np.flatnonzero(observed[f]), noisy[f, observed[f]], noise_var, fit.nugget
            )
        )
    ranges = np.array([ft.params["range"] for ft in fits]) / true_range
    stds = np.array([ft.params["std"] for ft in fits])
    nuggets = np.array([ft.nugget for ft in fits])
    params = {"range_over_true": ranges, "std_fit": stds, "nugget_fit": nuggets}
    describe = (
        f"range/true median {np.median(ranges):.3g} [{ranges.min():.3g}, {ranges.max():.3g}], "
        f"std median {np.median(stds):.3g} [{stds.min():.3g}, {stds.max():.3g}], "
        f"nugget median {np.median(nuggets):.3g} [{nuggets.min():.3g}, {nuggets.max():.3g}], "
        f"{np.mean([ft.evaluations for ft in fits]):.0f} evaluations"
    )
    preds["GMRF fitted (per field)"] = (
        np.stack([o[0] for o in out]),
        np.stack([o[1] for o in out]),
        time.perf_counter() - t0,
        params,
        describe,
    )

    t0 = time.perf_counter()
    joint = fit_gmrf(mesh, noisy, observed, alpha=2, noise_std=args.noise_std)
    out = [
        posterior(
            joint.prior, np.flatnonzero(observed[f]), noisy[f, observed[f]], noise_var, joint.nugget
        )
        for f in range(args.fields)
    ]
    jp = {
        "range_over_true": np.array([joint.params["range"] / true_range]),
        "std_fit": np.array([joint.params["std"]]),
        "nugget_fit": np.array([joint.nugget]),
    }
    preds["GMRF fitted (joint)"] = (
        np.stack([o[0] for o in out]),
        np.stack([o[1] for o in out]),
        time.perf_counter() - t0,
        jp,
        (
            f"range/true {joint.params['range'] / true_range:.3g}, std {joint.params['std']:.3g}, "
            f"nugget {joint.nugget:.3g}, {joint.evaluations} evaluations"
        ),
    )

    t0 = time.perf_counter()
    y = torch.from_numpy(np.where(observed, noisy, 0.0))[..., None]
    harmonic = (
        HarmonicInterpolation(mesh)
        .estimate(y, Mask(mesh, torch.from_numpy(observed)[..., None]))[..., 0]
        .numpy()
    )
    preds["harmonic"] = (harmonic, None, time.perf_counter() - t0, {}, "")

    ref = scores(preds["GMRF true prior"][0], preds["GMRF true prior"][1], fields, hidden, mass)
    rows = []
    for method, (mean, std, seconds, prm, text) in preds.items():
        s = scores(mean, std, fields, hidden, mass)
        ratios = np.array(s["rmse_fields"]) / np.array(ref["rmse_fields"])
        row = {
            "mesh": path.name,
            "vertices": n,
            "fields": args.fields,
            "observed_per_field": k,
            "method": method,
            "rmse": round(s["rmse"], 4),
            "rmse_vs_true": round(s["rmse"] / ref["rmse"], 4),
            "rmse_vs_true_field_max": round(float(ratios.max()), 4),
            "crps": round(s["crps"], 4),
            "coverage_90": round(s["coverage_90"], 4),
            "coverage_90_se": round(s["coverage_90_se"], 4),
            "spread_skill": round(s["spread_skill"], 4),
            "range_over_true_median": round(float(np.median(prm["range_over_true"])), 4)
            if prm
            else "",
            "std_fit_median": round(float(np.median(prm["std_fit"])), 4) if prm else "",
            "nugget_fit_median": round(float(np.median(prm["nugget_fit"])), 5) if prm else "",
            "seconds": round(seconds, 2),
            "notes": text,
        }
        rows.append(row)
        print(
            f"  {method}: RMSE {row['rmse']:.4f} ({row['rmse_vs_true']:.3f} x true), coverage "
            f"{row['coverage_90']:.3f} +- {row['coverage_90_se']:.3f}, "
            f"spread/skill {row['spread_skill']:.3f}, "
            f"{seconds:.1f} s" + (f"; {text}" if text else ""),
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--meshes", nargs="+", default=list(MESHES), help="files in $MANIFOLD_APS_DATA/meshes"
    )
    parser.add_argument("--fields", type=int, default=20, help="test fields per mesh (default 20)")
    parser.add_argument(
        "--observed", type=float, default=0.1, help="fraction of vertices observed (default 0.1)"
    )
    parser.add_argument(
        "--range-factor", type=float, default=0.2, help="true range / sqrt(mesh area) (default 0.2)"
    )
    parser.add_argument(
        "--nugget", type=float, default=0.01, help="true nugget variance (default 0.01)"
    )
    parser.add_argument(
        "--noise-std", type=float, default=0.05, help="observation noise std (default 0.05)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "gmrf_meshes.csv")
    args = parser.parse_args()
    if args.fields < 2:
        parser.error("--fields must be >= 2 (the coverage's standard error needs two)")
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows: list[dict] = []
    for i, name in enumerate(args.meshes):
        rows += run_mesh(data_dir() / "meshes" / name, args, np.random.default_rng([args.seed, i]))
        write_csv(args.out, rows)

    print(
        "\nMass-weighted over the hidden vertices, pooled over the fields "
        f"({args.observed:.0%} observed, noise {args.noise_std:g}):"
    )
    head = (
        f"{'mesh':<22} {'method':<24} {'RMSE':>7} {'/true':>6} {'max/true':>8} {'CRPS':>7} "
        f"{'cov90':>6} {'+-se':>6} {'spr/sk':>6} {'range/true':>10} {'std':>6} {'nugget':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        num = table_cell
        print(
            f"{r['mesh']:<22} {r['method']:<24} {num(r['rmse'], 7, 4)} {num(r['rmse_vs_true'], 6)} "
            f"{num(r['rmse_vs_true_field_max'], 8)} {num(r['crps'], 7, 4)} "
            f"{num(r['coverage_90'], 6)} {num(r['coverage_90_se'], 6)} "
            f"{num(r['spread_skill'], 6)} {num(r['range_over_true_median'], 10)} "
            f"{num(r['std_fit_median'], 6)} {num(r['nugget_fit_median'], 8, 4)}"
        )
    print(
        f"\nTargets (fitted RMSE <= {RMSE_TARGET} x true prior's; "
        f"90 % coverage {COVERAGE_TARGET[0]}-{COVERAGE_TARGET[1]}):"
    )
    for r in rows:
        if r["method"].startswith("GMRF fitted"):
            print(
                target_verdict(
                    f"{r['mesh']}, {r['method']}",
                    r["rmse_vs_true"],
                    RMSE_TARGET,
                    r["coverage_90"],
                    COVERAGE_TARGET,
                )
            )
    print(f"\nwrote {args.out}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
