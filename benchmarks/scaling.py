"""Per-sample time and memory of every method as the domain grows: HEALPix nside 8-64 and meshes.

Domains: HEALPix nside 8, 16, 32, 64 (768 to 49,152 pixels) and the Stanford bunny loop-subdivided
0, 1 and 2 times (3485, 13,934 and 55,730 vertices). On each: one observation of a random field
with 70 % of the nodes hidden, noise 0.1, and for each method the time and the peak growth of the
resident memory of one call drawing `--samples` samples (seconds per sample = call / samples):

* APS flow, implicit generator: freshly built engines (the cost of a pass does not depend on the
  weights, so no training is needed to time them) on a freshly initialised score prior;
* DPS: `--dps-steps` reverse steps timed for one sample and scaled to 1000 steps (each step costs
  the same: one network pass and one backward pass), marked `extrapolated`;
* exact Gaussian posterior (Matérn prior): dense, only up to 6000 nodes; its per-sample time
  includes the conditioning (a Cholesky factorisation per observation) shared by the samples;
* harmonic interpolation and nearest neighbour: one point estimate per call.

Set-up time (eigenbasis, hierarchy, factorisations done when the engine is built) is reported
apart. Writes results/scaling.csv and results/scaling.png (log-log). The networks are untrained,
so only the timings and memory mean anything here.

Usage:
  python benchmarks/scaling.py [--nsides 8 16 32 64] [--subdivisions 0 1 2] [--samples 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import PeakMemory, write_csv

from manifold_aps.datasets import data_dir
from manifold_aps.geometry import HealpixSphere, TriangleMesh
from manifold_aps.operators import GaussianNoise, Mask, RandomMaskGenerator
from manifold_aps.posterior import (
    DPS,
    ExactGaussianPosterior,
    HarmonicInterpolation,
    NearestNeighbour,
)
from manifold_aps.posterior.aps import AmortizedFlowPosterior, APSConfig
from manifold_aps.posterior.implicit import ImplicitConfig, ImplicitGenerator
from manifold_aps.priors import GaussianPrior
from manifold_aps.priors.gaussian import DENSE_MAX_NODES
from manifold_aps.priors.score import ScorePrior

HERE = Path(__file__).resolve().parent


def domains(nsides, subdivisions):
    """`(family, label, domain)` for every size."""
    for nside in nsides:
        yield "HEALPix", f"nside {nside}", HealpixSphere(nside)
    if subdivisions:
        import trimesh

        base = trimesh.load(data_dir() / "meshes" / "bunny.off", process=True)
        for k in subdivisions:
            mesh = base
            for _ in range(k):
                mesh = mesh.subdivide_loop(iterations=1)
            yield (
                "bunny",
                f"bunny x{4**k}",
                TriangleMesh(
                    np.asarray(mesh.vertices), np.asarray(mesh.faces), name=f"bunny-sub{k}"
                ),
            )


def builders(domain, noise, dps_steps: int):
    """`{method: () -> sampler}` of the methods that fit this domain."""
    prior = ScorePrior(domain, 1)
    out = {
        "APS": lambda: AmortizedFlowPosterior(
            domain, 1, prior, noise, APSConfig(dense_limit=1000)
        ).eval(),
        "implicit": lambda: ImplicitGenerator(
            domain, 1, prior, noise, ImplicitConfig(dense_limit=1000)
        ).eval(),
        "DPS": lambda: DPS(prior.eval(), noise, steps=dps_steps, guidance=0.3),
        "harmonic": lambda: HarmonicInterpolation(domain),
        "nearest": lambda: NearestNeighbour(domain),
    }
    if domain.num_nodes <= DENSE_MAX_NODES:
        scale = float(np.sqrt(domain.total_area)) * 0.1
        out["exact Gaussian"] = lambda: ExactGaussianPosterior(
            GaussianPrior(domain, length_scale=scale), noise
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nsides", type=int, nargs="*", default=[8, 16, 32, 64])
    parser.add_argument("--subdivisions", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=64, help="samples per call")
    parser.add_argument(
        "--dps-steps", type=int, default=10, help="DPS steps actually timed (scaled to 1000)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    noise = GaussianNoise(0.1)
    rows = []
    for family, label, domain in domains(args.nsides, args.subdivisions):
        g = torch.Generator().manual_seed(0)
        mask = RandomMaskGenerator(domain, missing=0.7).step(1, seed=0)["mask"]
        op = Mask(domain, mask)
        y = noise(torch.randn(1, domain.num_nodes, 1, generator=g), mask, rng=g)
        for method, build in builders(domain, noise, args.dps_steps).items():
            t0 = time.perf_counter()
            sampler = build()
            setup = time.perf_counter() - t0
            # a point estimate is one "sample"
            n = 1 if method in ("DPS", "harmonic", "nearest") else args.samples
            with PeakMemory() as mem, torch.set_grad_enabled(method == "DPS"):
                t0 = time.perf_counter()
                sampler.sample(y if method != "exact Gaussian" else y.double(), op, n, rng=g)
                sec = (time.perf_counter() - t0) / n
            if method == "DPS":
                sec *= 1000 / args.dps_steps
            row = {
                "family": family,
                "domain": label,
                "nodes": domain.num_nodes,
                "method": method,
                "setup_seconds": round(setup, 3),
                "seconds_per_sample": round(sec, 6),
                "samples_per_second": round(1 / sec, 2),
                "peak_memory_mb": round(mem.peak_mb, 1),
                "samples_per_call": n,
                "note": f"extrapolated from {args.dps_steps} of 1000 steps"
                if method == "DPS"
                else "",
            }
            print(row, flush=True)
            rows.append(row)
            del sampler
        # after every domain: an interrupted run keeps what it measured
        write_csv(args.out / "scaling.csv", rows)
    plot(rows, args.out / "scaling.png")


def plot(rows, path: Path) -> None:
    """Log-log per-sample time and memory against nodes, one line per method and family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    # the colour cycle is longer than the list of methods: zip stops at the last method
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for family, style in (("HEALPix", "-o"), ("bunny", "--s")):
        for method in methods:
            sel = [r for r in rows if r["family"] == family and r["method"] == method]
            if not sel:
                continue
            x = [r["nodes"] for r in sel]
            axes[0].loglog(
                x,
                [r["seconds_per_sample"] for r in sel],
                style,
                color=colors[method],
                label=f"{method} ({family})",
            )
            axes[1].loglog(
                x, [max(r["peak_memory_mb"], 0.1) for r in sel], style, color=colors[method]
            )
    axes[0].set(
        xlabel="nodes",
        ylabel="seconds per sample (DPS: 1000 steps)",
        title="time per posterior sample, 1 CPU thread",
    )
    axes[1].set(
        xlabel="nodes", ylabel="peak resident memory growth [MB]", title="memory while sampling"
    )
    axes[0].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
