"""Cost of the sparse GMRF engine against the number of nodes.

Domains: global lat-lon grids and an icosphere mesh.

For each domain: draw fields from a known Matérn GMRF (alpha 2, range 1000 km, std 1, nugget
0.01), fit (range, std, nugget) by maximum likelihood from complete fields, then for one field
with 70 % of nodes hidden at random: the posterior mean, the marginal std (exact selected
inversion where affordable, else the RBMC estimator with its error) and 16 samples. Writes
`results/gmrf_scaling.csv` and a log-log plot `results/gmrf_scaling.png`, and prints the fitted
exponent of each cost against N.

    # 2.5, 1, 0.5, 0.25 degree and bumpy.off subdivided 4x
    python benchmarks/gmrf_scaling.py
    python benchmarks/gmrf_scaling.py --grids 2.5 1 --mesh none   # a subset

The mesh row: a real mesh of `$MANIFOLD_APS_DATA/meshes` refined by Loop subdivision
(`--subdivide 4`: bumpy.off, 1,250 -> 319,490 vertices), the range a fifth of the square root
of its area.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PeakMemory, write_csv

from manifold_aps import pardiso
from manifold_aps.datasets import data_dir
from manifold_aps.geometry import IcosphereMesh, SphereGrid, TriangleMesh
from manifold_aps.posterior.gmrf import GMRFObservation
from manifold_aps.posterior.gmrf_fit import fit_gmrf
from manifold_aps.priors.gmrf import MaternGMRF
from manifold_aps.sparse_cholesky import SparseCholesky

RESULTS = Path(__file__).resolve().parent / "results"
EARTH_KM = 6371.0


def global_grid(step_deg: float) -> SphereGrid:
    """ERA5-style global grid: latitudes 90..-90 including the poles, longitudes 0..360-step."""
    nlat = int(round(180 / step_deg)) + 1
    lat = np.linspace(90, -90, nlat)
    lon = np.arange(0, 360, step_deg)
    return SphereGrid(lat, lon)


def subdivided_mesh(name: str, times: int) -> TriangleMesh:
    """A mesh of the data directory refined by `times` Loop subdivisions.

    Each subdivision multiplies the vertices by about 4.
    """
    import trimesh

    path = data_dir() / "meshes" / name
    if not path.exists():
        raise SystemExit(f"{path} not found (set MANIFOLD_APS_DATA to the shared data directory)")
    base = TriangleMesh.from_file(path)
    vertices, faces = trimesh.remesh.subdivide_loop(base.vertices, base.faces, iterations=times)
    return TriangleMesh(vertices, faces, name=f"{path.stem} x{times}")


def timed(fn):
    start = time.perf_counter()
    with PeakMemory() as mem:
        out = fn()
    return out, time.perf_counter() - start, mem.peak_mb


def run_domain(
    name: str, domain, *, fit_fields: int, seed: int, full_fit_max_nodes: int, range_: float
) -> dict:
    rng = np.random.default_rng(seed)
    n = domain.num_nodes
    truth = MaternGMRF.from_range(domain, range_=range_, std=1.0, alpha=2)
    nugget = 0.01
    fields = truth.sample(fit_fields + 1, rng=rng) + rng.standard_normal(
        (fit_fields + 1, n)
    ) * math.sqrt(nugget)
    print(f"{name}: N={n}", flush=True)
    full = (
        n <= full_fit_max_nodes
    )  # above: the noise-free profile fit only (range search, tau in closed form)
    fit, t_fit, m_fit = timed(lambda: fit_gmrf(domain, fields[:fit_fields], fit_nugget=full))
    fit_nugget = (
        fit.nugget if full else nugget
    )  # the profile fit has none: use the known one downstream
    print(f"  fit {t_fit:.1f} s ({fit.evaluations} evaluations): {fit.describe()}", flush=True)
    test = fields[-1]
    observed = np.sort(rng.choice(n, int(round(0.3 * n)), replace=False))
    obs, t_factor, m_factor = timed(lambda: GMRFObservation(fit.prior, observed, 1e-4, fit_nugget))
    mean, t_mean, _ = timed(lambda: obs.mean(test[observed]))
    work = obs.takahashi_work()
    std, t_std, m_std = timed(lambda: np.sqrt(obs.variance("auto")))
    method = "rbmc" if obs.variance_error is not None else "exact"
    samples, t_samples, m_samples = timed(lambda: obs.sample(test[observed], 16, rng=rng))
    hidden = np.setdiff1d(np.arange(n), observed)
    rmse = float(np.sqrt(np.mean((mean[hidden] - test[hidden]) ** 2)))
    z = np.abs(mean[hidden] - test[hidden]) / std[hidden]
    row = {
        "domain": name,
        "nodes": n,
        "fit_s": round(t_fit, 2),
        "fit_kind": "range, std, nugget (ML)" if full else "range, std (profile, no nugget)",
        "fit_evaluations": fit.evaluations,
        "true_range": round(range_, 5),
        "fit_range": round(fit.params["range"], 5),
        "fit_std": round(fit.params["std"], 4),
        "fit_nugget": round(fit.nugget, 5),
        "factor_s": round(t_factor, 2),
        "factor_nnz": obs.factor.nnz,
        "solver": obs.factor.backend,
        "mean_s": round(t_mean, 3),
        "std_s": round(t_std, 2),
        "std_method": method,
        "takahashi_work": f"{work:.3g}" if work is not None else "",  # PARDISO: L not exposed
        "samples16_s": round(t_samples, 2),
        "total_s": round(t_fit + t_factor + t_mean + t_std + t_samples, 1),
        "peak_mb": round(max(m_fit, m_factor, m_std, m_samples), 0),
        "rmse_hidden": round(rmse, 4),
        "coverage90": round(float(np.mean(z < 1.6449)), 4),
    }
    row["rbmc_rel_error_median"] = (
        round(float(np.median(obs.variance_error / obs.latent_variance("auto"))), 4)
        if method == "rbmc"
        else ""
    )
    print("  " + ", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return row


def solver_comparison(domain, name: str, *, others: bool = True) -> list[dict]:
    """Time the factorisation of one posterior precision with every solver installed here.

    `others=False`: only this package's two back ends (SuperLU with METIS, PARDISO); the full
    comparison had not finished after 15 minutes on the 320k-vertex mesh.
    """
    prior = MaternGMRF.from_range(domain, range_=1000 / EARTH_KM, std=1.0, alpha=2)
    import scipy.sparse as sp

    q = (prior.precision() + sp.diags(np.full(domain.num_nodes, 100.0))).tocsc()
    rows = []
    backends = [("superlu", "scipy SuperLU (LDL^T, METIS nested dissection)")]
    if pardiso.available():
        backends.append(("pardiso", "MKL PARDISO (LL^T, its METIS; 2 threads)"))
    for backend, label in backends:
        _, t, m = timed(lambda backend=backend: SparseCholesky(q, backend=backend))
        rows.append(
            {
                "domain": name,
                "nodes": domain.num_nodes,
                "solver": label,
                "factor_s": round(t, 2),
                "peak_mb": round(m),
            }
        )
    if not others:
        for r in rows:
            print("  solver: " + ", ".join(f"{k}={v}" for k, v in r.items()), flush=True)
        return rows
    import scipy.sparse.linalg as spla

    _, t, m = timed(
        lambda: spla.splu(
            q, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
        )
    )
    rows.append(
        {
            "domain": name,
            "nodes": domain.num_nodes,
            "solver": "scipy SuperLU (LDL^T, its MMD on A^T+A)",
            "factor_s": round(t, 2),
            "peak_mb": round(m),
        }
    )
    try:
        import sksparse_minimal

        _, t, m = timed(
            lambda: sksparse_minimal.SparseCholesky(q).solve_A(np.ones(domain.num_nodes))
        )
        rows.append(
            {
                "domain": name,
                "nodes": domain.num_nodes,
                "solver": "CHOLMOD (sksparse-minimal)",
                "factor_s": round(t, 2),
                "peak_mb": round(m),
            }
        )
    except ImportError:
        pass
    try:
        import qdldl

        _, t, m = timed(lambda: qdldl.Solver(q))
        rows.append(
            {
                "domain": name,
                "nodes": domain.num_nodes,
                "solver": "qdldl (AMD)",
                "factor_s": round(t, 2),
                "peak_mb": round(m),
            }
        )
    except ImportError:
        pass
    for r in rows:
        print("  solver: " + ", ".join(f"{k}={v}" for k, v in r.items()), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["nodes"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for key, label in [
        ("fit_s", "fit (ML, complete fields)"),
        ("factor_s", "factorisation"),
        ("std_s", "marginal std"),
        ("samples16_s", "16 samples"),
        ("total_s", "total"),
    ]:
        ax.loglog(n, [r[key] for r in rows], "o-", label=label)
    ref = n / n[0]
    ax.loglog(n, rows[0]["total_s"] * ref**1.5, "k:", label="N^1.5")
    ax.set_xlabel("nodes N")
    ax.set_ylabel("seconds on 2 cores")
    ax.set_title(
        "Sparse Matérn GMRF engine: cost against size\n(SuperLU below 100k nodes, PARDISO above)"
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--grids",
        type=float,
        nargs="*",
        default=[2.5, 1.0, 0.5, 0.25],
        help="lat-lon steps in degrees",
    )
    parser.add_argument(
        "--icosphere", type=int, default=0, help="icosphere level (8: 655,362 vertices; 0 skips)"
    )
    parser.add_argument(
        "--mesh", default="bumpy.off", help="a mesh of $MANIFOLD_APS_DATA/meshes, or 'none'"
    )
    parser.add_argument("--subdivide", type=int, default=4, help="Loop subdivisions of --mesh")
    parser.add_argument(
        "--fit-fields", type=int, default=4, help="complete fields for the fit (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--full-fit-max-nodes",
        type=int,
        default=10**9,
        help=(
            "above: a noise-free fit without the nugget (misfits data with a nugget: at 0.25 deg "
            "the range collapsed to 2 km)"
        ),
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "gmrf_scaling.csv")
    args = parser.parse_args()
    rows, solvers = [], []
    sphere_range = 1000 / EARTH_KM  # 1000 km on the unit sphere
    domains = [(f"lat-lon {g:g} deg", lambda g=g: global_grid(g), sphere_range) for g in args.grids]
    if args.icosphere:
        domains.append(
            (
                f"icosphere level {args.icosphere}",
                lambda: IcosphereMesh(args.icosphere),
                sphere_range,
            )
        )
    if args.mesh != "none":
        domains.append(
            (
                f"mesh {args.mesh} x{args.subdivide}",
                lambda: subdivided_mesh(args.mesh, args.subdivide),
                None,
            )
        )
    for name, build, range_ in domains:
        dom = build()
        rows.append(
            run_domain(
                name,
                dom,
                fit_fields=args.fit_fields,
                seed=args.seed,
                full_fit_max_nodes=args.full_fit_max_nodes,
                range_=range_ if range_ is not None else 0.2 * math.sqrt(dom.total_area),
            )
        )
        solvers += solver_comparison(dom, name, others=name.startswith("lat-lon"))
        write_csv(args.out, rows)
        write_csv(args.out.with_name(args.out.stem + "_solvers.csv"), solvers)
    grid_rows = [r for r in rows if r["domain"].startswith("lat-lon")]
    if len(grid_rows) >= 2:
        n = np.log([r["nodes"] for r in grid_rows])
        for key in ("fit_s", "factor_s", "std_s", "samples16_s", "total_s"):
            slope = np.polyfit(n, np.log([max(r[key], 1e-3) for r in grid_rows]), 1)[0]
            print(f"exponent of {key} against N (lat-lon grids): {slope:.2f}")
        plot(grid_rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
