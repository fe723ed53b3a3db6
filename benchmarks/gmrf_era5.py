"""Real data, native resolution: the sparse GMRF imputer on global 1° ERA5 t2m.

It is compared against thin-plate RBF and a GP.

Issue 15, must-show 3. The file `era5/era5_global_1deg_2026-03-25_to_31_24steps.nc` of
`$MANIFOLD_APS_DATA` holds 24 roughly 7-hourly steps of 2 m temperature on the 181 x 360 grid
(65,160 cells). The test fields are 4 later steps (default indices 20-23, 2026-03-31); on each,
70 % of the cells are hidden, either independently at random (`climate.random_mask`) or outside 3
satellite swaths of 1500 km (`climate.swath_mask`, which hides about 70 %), one mask per step.
The observed cells are given exactly; every method is scored on the same hidden cells.

Methods:
* ``GMRF (fit on train)``: `climate.GaussianImputer.fit` on the first 18 complete steps
  (indices 0-17: per-cell diurnal harmonic and std, then range, std and nugget of a Matérn GMRF of
  the standardised anomalies by maximum likelihood), then `climate.impute`.
  Each field's variance scale is re-estimated from its observed values (the default
  `variance_scale="observed"` of `GaussianImputer`); ``GMRF (fit on train, training scale)`` is
  the same model with the training fields' variance (`variance_scale="fitted"`);
  ``GMRF (fit on train, refit per field)`` keeps its climatology and smoothness but re-fits range,
  std and nugget to each test field's observed values (`variance_scale="refit"`; `params` of the
  step rows: each field's refit).
* ``GMRF (fit to obs of K st)``: `GaussianImputer.fit_to_observations` on the observed values of
  the first K test steps themselves (`--observed-fit-steps`, default 1: one fit per mask kind;
  no complete field used; its global mean/std standardisation and GMRF then impute every test
  step). Each step in the fit costs one sparse factorisation per likelihood evaluation, about
  3 minutes per step here, hence the default.
* ``RBF thin-plate``: `scipy.interpolate.RBFInterpolator(kernel="thin_plate_spline",
  neighbors=64)` on the 3-D unit-sphere coordinates of the observed cells (chordal distance;
  the 360 cells of each pole row are one point, merged); a point estimate: RMSE only.
* ``GP (sklearn)``: `GaussianProcessRegressor` with `C * Matern(nu=1.5) + WhiteKernel` on 3-D
  coordinates, hyper-parameters by maximum likelihood on a random subsample of the observed cells
  (`--gp-points`, default 2000; exact GP regression on all ~19,500 would need a 19,500^2 matrix
  per likelihood evaluation), per test step; its mean and std at the hidden cells.

Scores, area-weighted over the hidden cells (the conventions of `climate.imputation_scores` /
`manifold_aps.metrics`): RMSE of the mean, and for the probabilistic methods the CRPS, 90 %
coverage and spread/skill of the Gaussian N(mean, std^2) (closed form: the GMRF posterior is
exactly Gaussian); the GMRF rows also carry `climate.imputation_scores`' sample-based CRPS and
coverage (`--samples` samples); `mean_z2` is the mean squared standardised error
((truth - mean) / std)^2 (1 when calibrated). One CSV row per method x mask x test step, plus one
row pooling the test steps; `rmse_vs_rbf` is the RMSE over the RBF's on the same cells. Targets:
RMSE <= 0.8 x the RBF's, 90 % coverage in [0.88, 0.92].

Run time: about 13 minutes (748 s measured; the refit rows ~2.3 min per mask) on a shared 2-core
machine (the fit on the training steps ~2.5 min, the fit to observed values ~3 min per mask kind,
16 imputations ~4 min, the GP ~3 min); `--observed-fit-steps 4` (the observed values of all 4 test
steps) adds ~18 minutes.

    OMP_NUM_THREADS=1 python benchmarks/gmrf_era5.py
    # baselines only, ~1 min
    python benchmarks/gmrf_era5.py --test-steps 22 --methods rbf harmonic gp
"""

from __future__ import annotations

import os

for _var in (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
):  # before numpy loads BLAS
    os.environ.setdefault(_var, "1")

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from common import table_cell, target_verdict, write_csv
from scipy.interpolate import RBFInterpolator
from scipy.special import ndtr

import climate
from climate.masks import EARTH_RADIUS_KM
from climate.schema import LATITUDE, LONGITUDE, TIME
from manifold_aps.datasets import data_dir
from manifold_aps.metrics import cell_area_weights, xr_coverage, xr_rmse
from manifold_aps.operators import Mask
from manifold_aps.posterior import HarmonicInterpolation

RESULTS = Path(__file__).resolve().parent / "results"
FILE = Path("era5") / "era5_global_1deg_2026-03-25_to_31_24steps.nc"
VARIABLE = "t2m"
Z90 = (
    1.6448536269514722  # the 95 % standard normal quantile: N(m, s^2)'s central 90 % is m +- Z90 s
)
RMSE_TARGET, COVERAGE_TARGET = 0.8, (0.88, 0.92)
METHODS = ("train", "train-fitted-scale", "train-refit", "observed", "rbf", "harmonic", "gp")


def unit_vectors(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """3-D unit vectors `(nlat * nlon, 3)` of the cell centres.

    Node `i * nlon + j` is cell `(i, j)`, as in `SphereGrid`.
    """
    phi, lam = np.deg2rad(lat_deg)[:, None], np.deg2rad(lon_deg)[None, :]
    xyz = np.stack(
        np.broadcast_arrays(np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)), -1
    )
    return xyz.reshape(-1, 3)


# ------------------------------------------------------------------------------------------ scores


def weighted_mean(values: xr.DataArray, weights: xr.DataArray, where: xr.DataArray, dims) -> float:
    """Area-weighted mean over `dims` of the entries `where` selects.

    This is the convention of `manifold_aps.metrics`.
    """
    w = (weights * where).broadcast_like(values)
    return float((values * w).sum(dims) / w.sum(dims))


def gaussian_crps(mean, std, truth):
    r"""CRPS of :math:`N(m, s^2)` at `truth`.

    It is :math:`s\,[z(2\Phi(z) - 1) + 2\varphi(z) - 1/\sqrt\pi]`, `z = (y - m)/s`.
    """
    z = (truth - mean) / std
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    return std * (z * (2 * xr.apply_ufunc(ndtr, z) - 1) + 2 * pdf - 1 / math.sqrt(math.pi))


def scores(
    mean: xr.DataArray, std: xr.DataArray | None, truth: xr.DataArray, where: xr.DataArray
) -> dict:
    """RMSE and, given a std, Gaussian CRPS, 90 % coverage and spread/skill.

    All are pooled over every dim.
    """
    weights = cell_area_weights(truth[LATITUDE])
    dims = tuple(truth.dims)
    rmse = float(xr_rmse(mean, truth, weights=weights, where=where, dims=dims))
    out = {
        "rmse": rmse,
        "crps": float("nan"),
        "coverage_90": float("nan"),
        "spread_skill": float("nan"),
        "mean_z2": float("nan"),
    }
    if std is not None:
        out["crps"] = weighted_mean(gaussian_crps(mean, std, truth), weights, where, dims)
        out["coverage_90"] = float(
            xr_coverage(
                mean - Z90 * std, mean + Z90 * std, truth, weights=weights, where=where, dims=dims
            )
        )
        out["spread_skill"] = math.sqrt(weighted_mean(std**2, weights, where, dims)) / rmse
        out["mean_z2"] = weighted_mean(((truth - mean) / std) ** 2, weights, where, dims)
    return out


# ------------------------------------------------------------------------------------------ methods


def gmrf(model, test: xr.DataArray, mask: xr.DataArray, samples: int, seed: int) -> xr.Dataset:
    """`climate.impute` with `model` (mean, std and samples of every test step)."""
    return climate.impute(test, mask, model, n_samples=samples, seed=seed, progress=False)


def rbf(
    values: np.ndarray, observed: np.ndarray, xyz: np.ndarray, neighbors: int
) -> tuple[np.ndarray, int]:
    """Thin-plate RBF interpolation `(N,)` of one field from its observed cells.

    The observed cells are given exactly.

    Cells at the same point (a pole row) are merged into one centre with their mean value: the
    thin-plate system is singular for repeated centres. Near the poles the `neighbors` nearest
    centres of a hidden cell can all lie on one latitude row, a circle, hence in one plane, where
    the degree-1 polynomial part is singular; such cells (found by bisection) take twice as many
    neighbours, then four times, ... Returns the field and the number of such cells.
    """
    centres, inverse = np.unique(np.round(xyz[observed], 12), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    centre_values = np.bincount(inverse, weights=values[observed]) / np.bincount(inverse)
    out = values.astype(np.float64).copy()
    hidden = np.flatnonzero(~observed)
    interps: dict[int, RBFInterpolator] = {}

    def interp(k: int) -> RBFInterpolator:
        if k not in interps:
            interps[k] = RBFInterpolator(
                centres, centre_values, kernel="thin_plate_spline", neighbors=k
            )
        return interps[k]

    widened = 0

    def fill(idx: np.ndarray, k: int) -> None:
        nonlocal widened
        try:
            out[idx] = interp(k)(xyz[idx])
        except np.linalg.LinAlgError:
            if idx.size > 1:
                fill(idx[: idx.size // 2], k)
                fill(idx[idx.size // 2 :], k)
            else:
                widened += k == neighbors
                fill(idx, 2 * k)

    for lo in range(0, hidden.size, 4096):
        fill(hidden[lo : lo + 4096], neighbors)
    return out, widened


def gp(
    values: np.ndarray,
    observed: np.ndarray,
    xyz: np.ndarray,
    points: int,
    rng: np.random.Generator,
    chunk: int = 4000,
) -> tuple[np.ndarray, np.ndarray, str, float, float]:
    """scikit-learn GP fitted on `points` random observed cells.

    Returns the mean and std `(N,)`, the kernel, the fit seconds and the predict seconds.
    """
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    obs_idx = np.flatnonzero(observed)
    train = rng.choice(obs_idx, size=min(points, obs_idx.size), replace=False)
    kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
        length_scale=0.2, length_scale_bounds=(1e-3, 10.0), nu=1.5
    ) + WhiteKernel(1e-2, (1e-8, 1.0))
    model = GaussianProcessRegressor(kernel, normalize_y=True, random_state=0)
    start = time.perf_counter()
    model.fit(xyz[train], values[train])
    fit_s = time.perf_counter() - start
    mean, std = values.astype(np.float64).copy(), np.zeros(values.shape)
    hidden = np.flatnonzero(~observed)
    start = time.perf_counter()
    for lo in range(0, hidden.size, chunk):
        idx = hidden[lo : lo + chunk]
        mean[idx], std[idx] = model.predict(xyz[idx], return_std=True)
    return mean, std, str(model.kernel_), fit_s, time.perf_counter() - start


# ------------------------------------------------------------------------------------------ driver


def field_like(values: np.ndarray, like: xr.DataArray) -> xr.DataArray:
    """`values` `(T, N)` as a DataArray on `like`'s `(time, latitude, longitude)` coordinates."""
    return xr.DataArray(values.reshape(like.shape), dims=like.dims, coords=like.coords)


def rows_for(
    method: str, mask_name: str, mean, std, truth, where, extra: dict, per_step_extra=None
) -> list[dict]:
    """One row per test step and one pooling them (`step` = "all")."""
    rows = []
    times = [str(t)[:16] for t in truth[TIME].values]
    steps = [(slice(None), "all", None)] + [
        (slice(k, k + 1), times[k], k) for k in range(len(times))
    ]
    for i, label, k in steps:
        s = scores(
            mean.isel({TIME: i}),
            None if std is None else std.isel({TIME: i}),
            truth.isel({TIME: i}),
            where.isel({TIME: i}),
        )
        row = {
            "method": method,
            "mask": mask_name,
            "step": label,
            "hidden_fraction": round(float(where.isel({TIME: i}).mean()), 4),
            **s,
        }
        row.update(extra if k is None or per_step_extra is None else per_step_extra(k))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--file", type=Path, default=None, help=f"ERA5 file (default $MANIFOLD_APS_DATA/{FILE})"
    )
    parser.add_argument(
        "--train-steps", type=int, default=18, help="complete training steps 0..K-1 (default 18)"
    )
    parser.add_argument(
        "--test-steps", type=int, nargs="+", default=[20, 21, 22, 23], help="test step indices"
    )
    parser.add_argument(
        "--missing",
        type=float,
        default=0.7,
        help="fraction hidden by the random mask (default 0.7)",
    )
    parser.add_argument("--swaths", type=int, default=3, help="swaths per mask (default 3)")
    parser.add_argument(
        "--swath-width-km", type=float, default=1500.0, help="full swath width (default 1500 km)"
    )
    parser.add_argument(
        "--noise-std", type=float, default=0.1, help="observation error the GMRF assumes [K] (0.1)"
    )
    parser.add_argument(
        "--alpha", default="2", help="GMRF smoothness 1, 2, 3 or auto (3 fits; default 2)"
    )
    parser.add_argument(
        "--observed-fit-steps",
        type=int,
        default=1,
        help="fit to the observed values of the first K test steps (default 1; each costs ~3 min)",
    )
    parser.add_argument(
        "--samples", type=int, default=32, help="GMRF posterior samples per field (default 32)"
    )
    parser.add_argument("--rbf-neighbors", type=int, default=64)
    parser.add_argument(
        "--gp-points", type=int, default=2000, help="observed cells the GP is fitted on (2000)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        choices=METHODS,
        help="which methods to run (default all)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "gmrf_era5.csv")
    args = parser.parse_args()
    torch.set_num_threads(1)
    alpha = args.alpha if args.alpha == "auto" else int(args.alpha)
    start_all = time.perf_counter()

    path = args.file or data_dir() / FILE
    da = climate.open_era5(path)[VARIABLE].load()
    if max(args.test_steps) >= da.sizes[TIME] or min(args.test_steps) < args.train_steps:
        parser.error(
            f"test steps must lie in {args.train_steps}..{da.sizes[TIME] - 1} "
            "(after the training steps)"
        )
    if not 1 <= args.observed_fit_steps <= len(args.test_steps):
        parser.error(f"--observed-fit-steps must lie in 1..{len(args.test_steps)} (the test steps)")
    train = da.isel({TIME: slice(0, args.train_steps)})
    test = da.isel({TIME: list(args.test_steps)})
    print(
        f"{VARIABLE} {da.sizes[LATITUDE]} x {da.sizes[LONGITUDE]}; "
        f"train: steps 0-{args.train_steps - 1} "
        f"({str(train[TIME].values[0])[:16]} .. {str(train[TIME].values[-1])[:16]}); "
        f"test: steps {args.test_steps}",
        flush=True,
    )
    masks = {
        "random 70 %": climate.random_mask(test, args.missing, seed=args.seed, per_time=True),
        f"{args.swaths} swaths {args.swath_width_km:g} km": climate.swath_mask(
            test,
            num_swaths=args.swaths,
            width_km=args.swath_width_km,
            seed=args.seed,
            per_time=True,
        ),
    }
    xyz = unit_vectors(test[LATITUDE].values, test[LONGITUDE].values)
    domain = climate.grid_domain(test)
    truth_flat = test.values.reshape(test.sizes[TIME], -1).astype(np.float64)
    rows: list[dict] = []

    def record(new_rows):
        rows.extend(new_rows)
        write_csv(args.out, rows)

    train_model, train_fit_s = None, 0.0
    if {"train", "train-fitted-scale", "train-refit"} & set(args.methods):
        t0 = time.perf_counter()
        train_model = climate.GaussianImputer.fit(train, noise_std=args.noise_std, alpha=alpha)
        train_fit_s = time.perf_counter() - t0
        print(
            f"GMRF fitted to {train_model.fitted_to} in {train_fit_s:.0f} s: "
            f"{train_model.hyper_parameters()}",
            flush=True,
        )

    for mask_name, mask in masks.items():
        observed = mask.values.reshape(test.sizes[TIME], -1)
        where = ~mask  # hidden cells (every t2m value is finite)
        print(
            f"\nmask {mask_name}: hidden {100 * (1 - observed.mean()):.1f} % "
            f"({', '.join(f'{100 * (1 - o.mean()):.1f}' for o in observed)} % per step)",
            flush=True,
        )
        for kind in ("train", "train-fitted-scale", "train-refit", "observed"):
            if kind not in args.methods:
                continue
            t0 = time.perf_counter()
            if kind.startswith("train"):
                model, fit_s = train_model, train_fit_s
                model.variance_scale = {
                    "train": "observed",
                    "train-fitted-scale": "fitted",
                    "train-refit": "refit",
                }[kind]
            else:
                fit_steps = {TIME: slice(0, args.observed_fit_steps)}
                model = climate.GaussianImputer.fit_to_observations(
                    test.isel(fit_steps),
                    mask.isel(fit_steps),
                    noise_std=args.noise_std,
                    alpha=alpha,
                )
                fit_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            result = gmrf(model, test, mask, args.samples, args.seed)
            impute_s = time.perf_counter() - t1
            method = {
                "train": "GMRF (fit on train)",
                "train-fitted-scale": "GMRF (fit on train, training scale)",
                "train-refit": "GMRF (fit on train, refit per field)",
            }.get(kind, f"GMRF (fit to obs of {args.observed_fit_steps} st)")
            refits = list(getattr(model, "last_fits", [])) if kind == "train-refit" else []
            mean, std = (
                result[f"{VARIABLE}_mean"].astype(np.float64),
                result[f"{VARIABLE}_std"].astype(np.float64),
            )

            def sample_scores(i, result=result):
                sel = {TIME: i}
                s = climate.imputation_scores(result.isel(sel), test.isel(sel), VARIABLE)
                return {"crps_samples": s["crps"], "coverage_90_samples": s["coverage_90"]}

            extra = {
                "fit_s": round(fit_s, 1),
                "predict_s": round(impute_s, 1),
                "params": model.hyper_parameters(),
                **sample_scores(slice(None)),
            }

            def step_params(k, refits=refits):
                fit = refits[k] if k < len(refits) else None
                if fit is None:
                    return ""
                return (
                    f"refit: range {fit.prior.range * EARTH_RADIUS_KM:.0f} km, "
                    f"std {fit.prior.std:.3g}, "
                    f"nugget {fit.nugget:.3g}"
                )

            new = rows_for(
                method,
                mask_name,
                mean,
                std,
                test,
                where,
                extra,
                lambda k: {
                    "fit_s": "",
                    "predict_s": "",
                    "params": step_params(k),
                    **sample_scores(slice(k, k + 1)),
                },
            )
            record(new)
            print(
                f"  {method}: fit {fit_s:.0f} s, impute {impute_s:.0f} s "
                f"({model.hyper_parameters()}); "
                f"RMSE {new[0]['rmse']:.3f} K, coverage {new[0]['coverage_90']:.3f}",
                flush=True,
            )
        if "rbf" in args.methods:
            t0 = time.perf_counter()
            outs = [
                rbf(truth_flat[b], observed[b], xyz, args.rbf_neighbors)
                for b in range(len(observed))
            ]
            rbf_s = time.perf_counter() - t0
            widened = [o[1] for o in outs]
            params = (
                f"neighbors {args.rbf_neighbors}; "
                f"cells widened (coplanar neighbours): {sum(widened)}"
            )
            new = rows_for(
                f"RBF thin-plate ({args.rbf_neighbors} nb)",
                mask_name,
                field_like(np.stack([o[0] for o in outs]), test),
                None,
                test,
                where,
                {"fit_s": "", "predict_s": round(rbf_s, 1), "params": params},
                lambda k, widened=widened: {
                    "fit_s": "",
                    "predict_s": "",
                    "params": f"cells widened: {widened[k]}",
                },
            )
            record(new)
            print(f"  RBF: {rbf_s:.0f} s; RMSE {new[0]['rmse']:.3f} K ({params})", flush=True)
        if "harmonic" in args.methods:
            t0 = time.perf_counter()
            y = torch.from_numpy(np.where(observed, truth_flat, 0.0))[..., None]
            mask_op = Mask(domain, torch.from_numpy(observed)[..., None])
            filled = HarmonicInterpolation(domain).estimate(y, mask_op)[..., 0].numpy()
            harm_s = time.perf_counter() - t0
            new = rows_for(
                "harmonic (Laplace)",
                mask_name,
                field_like(filled, test),
                None,
                test,
                where,
                {"fit_s": "", "predict_s": round(harm_s, 1), "params": "SphereGrid stiffness"},
                lambda k: {"fit_s": "", "predict_s": "", "params": ""},
            )
            record(new)
            print(f"  harmonic: {harm_s:.0f} s; RMSE {new[0]['rmse']:.3f} K", flush=True)
        if "gp" in args.methods:
            rng = np.random.default_rng(args.seed)
            outs = [
                gp(truth_flat[b], observed[b], xyz, args.gp_points, rng)
                for b in range(len(observed))
            ]
            mean = field_like(np.stack([o[0] for o in outs]), test)
            std = field_like(np.stack([o[1] for o in outs]), test)
            fit_s, pred_s = sum(o[3] for o in outs), sum(o[4] for o in outs)
            new = rows_for(
                f"GP sklearn ({args.gp_points} pts)",
                mask_name,
                mean,
                std,
                test,
                where,
                {"fit_s": round(fit_s, 1), "predict_s": round(pred_s, 1), "params": outs[0][2]},
                lambda k, outs=outs: {
                    "fit_s": round(outs[k][3], 1),
                    "predict_s": round(outs[k][4], 1),
                    "params": outs[k][2],
                },
            )
            record(new)
            print(
                f"  GP: fit {fit_s:.0f} s, predict {pred_s:.0f} s ({outs[0][2]}); "
                f"RMSE {new[0]['rmse']:.3f} K, "
                f"coverage {new[0]['coverage_90']:.3f}",
                flush=True,
            )

    # RMSE relative to the RBF on the same mask and step
    rbf_rmse = {(r["mask"], r["step"]): r["rmse"] for r in rows if r["method"].startswith("RBF")}
    for r in rows:
        ref = rbf_rmse.get((r["mask"], r["step"]))
        r["rmse_vs_rbf"] = round(r["rmse"] / ref, 4) if ref else ""
        for key in (
            "rmse",
            "crps",
            "coverage_90",
            "spread_skill",
            "mean_z2",
            "crps_samples",
            "coverage_90_samples",
        ):
            if isinstance(r.get(key), float):
                r[key] = round(r[key], 4)
    order = [
        "method",
        "mask",
        "step",
        "hidden_fraction",
        "rmse",
        "rmse_vs_rbf",
        "crps",
        "coverage_90",
        "spread_skill",
        "mean_z2",
        "crps_samples",
        "coverage_90_samples",
        "fit_s",
        "predict_s",
        "params",
    ]
    rows = [{k: r.get(k, "") for k in order} for r in rows]
    write_csv(args.out, rows)

    print(
        f"\nPooled over the {len(args.test_steps)} test steps "
        "(K; area-weighted over the hidden cells):"
    )
    head = (
        f"{'method':<27} {'mask':<17} {'hidden':>6} {'RMSE':>6} {'/RBF':>6} {'CRPS':>6} "
        f"{'cov90':>6} {'spr/sk':>6} "
        f"{'E z^2':>6} {'cov90s':>6} {'fit s':>6} {'pred s':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["step"] != "all":
            continue
        fmt = lambda v, w=6: table_cell(v, w)  # noqa: E731
        print(
            f"{r['method']:<27} {r['mask']:<17} {fmt(r['hidden_fraction'])} {fmt(r['rmse'])} "
            f"{fmt(r['rmse_vs_rbf'] or float('nan'))} {fmt(r['crps'])} {fmt(r['coverage_90'])} "
            f"{fmt(r['spread_skill'])} {fmt(r['mean_z2'])} "
            f"{fmt(r.get('coverage_90_samples') or float('nan'))} "
            f"{r['fit_s']!s:>6} {r['predict_s']!s:>6}"
        )
    print("\nTargets (RMSE <= 0.8 x RBF; 90 % coverage 0.88-0.92):")
    for r in rows:
        if r["step"] == "all" and r["method"].startswith("GMRF") and r["rmse_vs_rbf"] != "":
            print(
                target_verdict(
                    f"{r['method']}, {r['mask']}",
                    r["rmse_vs_rbf"],
                    RMSE_TARGET,
                    r["coverage_90"],
                    COVERAGE_TARGET,
                )
            )
    print(f"\nwrote {args.out}; total {time.perf_counter() - start_all:.0f} s")


if __name__ == "__main__":
    main()
