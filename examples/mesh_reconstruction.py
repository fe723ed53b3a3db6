r"""Reconstruct signals on scanned 3-D meshes (Stanford bunny, Spot) from partial or blurred data.

For each mesh (datasets ``mesh-bunny``, 3485 vertices, and ``mesh-spot``, 2930 vertices, of
`manifold_aps.datasets`: an equal mixture of Matérn Gaussian draws and heat-diffused point
sources, unit variance) and a few held-out test signals, two inverse problems:

(a) **inpainting**: 10 % of the vertices observed at random, noise 0.1;
(b) **deblurring**: the whole signal seen through the heat blur `exp(-t L)`, `t = 1 / lambda_30`
    (about the scale of the 30th Laplace-Beltrami eigenfunction), noise 0.1.

Engines (`--engine`):

* ``gaussian`` (default): a Whittle-Matérn prior fitted by maximum likelihood (`fit_matern`, with
  a nugget) on 256 training signals, and its exact posterior (`ExactGaussianPosterior`). The
  signals are not Gaussian (half of them are heat-diffused point sources), so this is the best
  Gaussian answer, not the true posterior;
* ``PATH``: an amortized engine from ``manifold-aps distill --dataset mesh-bunny ...`` (APS flow,
  implicit generator or amortized VI; it brings its own noise level);
* ``dps --prior CKPT``: diffusion posterior sampling with a score prior from
  ``manifold-aps train-prior --dataset mesh-bunny ...`` (`--dps-steps`, `--guidance`).

Scores per problem, area-weighted over the hidden vertices (all vertices for the blur): RMSE of
the posterior mean, fair CRPS of the samples, coverage of their central 90 % interval, next to
point-estimate baselines: the zero signal (the prior mean), nearest observed vertex and harmonic
interpolation (`NearestNeighbour`, `HarmonicInterpolation`) for (a), the blurred observation
itself for (b) (`posterior_scores`, `weighted_rmse`). Writes one PNG per mesh and problem
(truth / observation / posterior mean / posterior std, rendered in 3-D) and `scores.json` to
`--out`.

Run from the repository root (needs the shared data, `$MANIFOLD_APS_DATA`, default
`../shared/data`)::

    .venv/bin/python examples/mesh_reconstruction.py           # both meshes, Gaussian engine
    .venv/bin/python examples/mesh_reconstruction.py --quick   # smoke run, see below
    .venv/bin/python examples/mesh_reconstruction.py --mesh bunny \
        --engine runs/aps-bunny/checkpoint.pt
    .venv/bin/python examples/mesh_reconstruction.py --mesh bunny \
        --engine dps --prior runs/bunny/checkpoint.pt

`--quick` does not build the datasets (drawing their 4096 training signals with heat-diffused
sources takes one to four minutes per mesh): it decimates each mesh twice (`TriangleMesh.coarsen`,
about 220 vertices) and draws training and test signals from a known Matérn prior on it, with 2
test signals and 8 samples; it checks the pipeline, its numbers are not the ones to quote.

Measured on the project's 2-core CPU with two trainings running beside it, one thread,
eigenbases in the disk cache: 16 min wall (10 min of CPU) in full, 12 s with `--quick`. Most of
the full run is building the two datasets (1-4 min each) and, for the exact posterior of the
blur, the dense matrix of `exp(-t L)`, which `operator_matrix` builds by 16 sparse solves per
vertex (8 min wall on the bunny, 3 min on Spot); the inpainting posteriors take 28 s per mesh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from manifold_aps import (
    DPS,
    ExactGaussianPosterior,
    GaussianNoise,
    GaussianPrior,
    HarmonicInterpolation,
    HeatBlur,
    Mask,
    NearestNeighbour,
    PriorDataset,
    RandomMaskGenerator,
    TensorSource,
    TriangleMesh,
    build_prior_dataset,
    data_dir,
    fit_matern,
    load_trained_engine,
    plot_signals,
    posterior_scores,
    weighted_rmse,
)

MESH_DATASETS = {"bunny": "mesh-bunny", "spot": "mesh-spot"}
MESH_FILES = {"bunny": "bunny.off", "spot": "spot_triangulated.obj"}  # used by --quick only
VIEWS = {"bunny": (20, 30, 0, "y"), "spot": (15, 50, 0, "y")}  # view_init: both meshes are y-up


def quick_dataset(mesh: str, seed: int) -> PriorDataset:
    """A small stand-in for `--quick`: the mesh decimated twice, signals of a known Matérn prior."""
    domain = TriangleMesh.from_file(data_dir() / "meshes" / MESH_FILES[mesh])
    domain = domain.coarsen().domain.coarsen().domain
    length_scale = 0.25 * domain.total_area**0.5
    truth_prior = GaussianPrior(domain, variance=1.0, length_scale=length_scale, smoothness=1.5)
    g = torch.Generator().manual_seed(seed)
    train, test = truth_prior.sample(64, rng=g).float(), truth_prior.sample(8, rng=g).float()
    what = "draws of a known Matérn prior on the mesh decimated twice"
    name = f"{MESH_DATASETS[mesh]} (quick stand-in)"
    return PriorDataset(name, domain, TensorSource(train, train[:8]), test, "1", what)


def make_engine(args, ds: PriorDataset):
    """`(name, description, engine, noise)`: the engine `--engine` asks for, on `ds.domain`."""
    noise = GaussianNoise(args.noise_std)
    if args.engine == "gaussian":
        g = torch.Generator().manual_seed(args.seed)
        train = ds.source.train
        fields = train[torch.randperm(len(train), generator=g)[: args.fit_fields]].double()
        prior = fit_matern(ds.domain, fields, fit_nugget=True).prior
        label = (
            f"exact Gaussian posterior, Matérn prior fitted on {len(fields)} signals (std "
            f"{prior.variance**0.5:.2f}, length scale {prior.length_scale:.3g}, smoothness "
            f"{prior.smoothness:.2f}, nugget {prior.nugget:.2g})"
        )
        return "exact Gaussian posterior", label, ExactGaussianPosterior(prior, noise), noise
    if args.engine == "dps":
        from manifold_aps import load_prior  # imports the score networks: only when asked for

        prior = load_prior(args.prior, ds.domain)
        engine = DPS(prior, noise, steps=args.dps_steps, guidance=args.guidance)
        label = (
            f"DPS ({args.dps_steps} steps, guidance {args.guidance:g}), score prior {args.prior}"
        )
        return "DPS", label, engine, noise
    name, engine, _, _ = load_trained_engine(args.engine, ds)
    label = f"{name} engine {args.engine} (noise {engine.noise.sigma:g}, its training value)"
    return name, label, engine, engine.noise


def problems(ds: PriorDataset, noise: GaussianNoise, n: int, missing: float, seed: int) -> dict:
    """The two problems for `n` test signals: name -> `(y, operator, truth, where)`."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(ds.test), generator=g)[:n]
    truth = ds.test[pick].double()  # a mix of both signal kinds
    observed = RandomMaskGenerator(ds.domain, missing=missing).step(n, seed=f"mesh-{seed}")["mask"]
    mask = Mask(ds.domain, observed)
    lam, _ = ds.domain.eigenbasis(31)
    blur = HeatBlur(ds.domain, 1.0 / float(lam[30]))
    everywhere = torch.ones_like(truth, dtype=torch.bool)
    return {
        "inpainting": (noise(mask(truth), mask.range_mask, rng=g), mask, truth, ~observed),
        "deblurring": (noise(blur(truth), None, rng=g), blur, truth, everywhere),
    }


def run_mesh(ds: PriorDataset, mesh: str, args) -> list[dict]:
    """Run both problems on one mesh; print and return one row per problem, save the PNGs."""
    weight = ds.domain.mass
    short, label, engine, noise = make_engine(args, ds)
    print(f"{ds.name}: {ds.domain}\n  engine: {label}", flush=True)
    rows = []
    cases = problems(ds, noise, args.test_signals, args.missing, args.seed)
    for name, (y, operator, truth, where) in cases.items():
        t0 = time.perf_counter()
        rng = torch.Generator().manual_seed(args.seed + 1)
        samples = engine.sample(y, operator, args.samples, rng=rng).detach().double()
        seconds = time.perf_counter() - t0
        baselines = {"zero": torch.zeros_like(truth)}
        if name == "inpainting":
            nearest = NearestNeighbour(ds.domain).estimate(y, operator)
            baselines["nearest_neighbour"] = nearest
            baselines["harmonic"] = HarmonicInterpolation(ds.domain).estimate(y, operator)
            title = f"{100 * (1 - args.missing):.0f} % observed (nearest-vertex fill)"
            shown = (title, nearest[0, :, 0])
        else:
            baselines["observation"] = y.double()
            shown = ("observation (blurred, noisy)", y[0, :, 0].double())
        row = {
            "mesh": mesh,
            "problem": name,
            "vertices": ds.domain.num_nodes,
            "test_signals": len(truth),
            "samples": args.samples,
            "engine": args.engine,
            **posterior_scores(samples, truth, weight, where),
            **{
                f"rmse_{k}": float(weighted_rmse(v, truth, weight, where))
                for k, v in baselines.items()
            },
            "seconds": round(seconds, 2),
        }
        against = ", ".join(f"{k} {row[f'rmse_{k}']:.3f}" for k in baselines)
        print(
            f"  {name:10s} RMSE of the mean {row['rmse_mean']:.3f} (baselines: {against}), CRPS "
            f"{row['crps']:.3f}, 90 % coverage {100 * row['coverage_90']:.1f} %, {seconds:.1f} s "
            f"for {args.samples} samples of {len(truth)} signals",
            flush=True,
        )
        mean, std = samples.mean(0)[0, :, 0], samples.std(0)[0, :, 0]
        row["png"] = str(
            plot_signals(
                ds.domain,
                [
                    ("truth", truth[0, :, 0]),
                    shown,
                    ("posterior mean", mean),
                    ("posterior std", std),
                ],
                Path(args.out) / f"{mesh}_{name}.png",
                shared_scale=[True, True, True, False],
                view=VIEWS[mesh],
                suptitle=f"{ds.name}, {name}: {short}",
            )
        )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--mesh",
        choices=["bunny", "spot", "both"],
        default="both",
        help="which mesh (default: both)",
    )
    p.add_argument(
        "--engine",
        default="gaussian",
        metavar="gaussian|dps|PATH",
        help="gaussian (fitted Matérn prior, exact posterior; default), dps (needs --prior) or "
        "the checkpoint of a trained engine (manifold-aps distill)",
    )
    p.add_argument(
        "--prior", help="score-prior checkpoint for --engine dps (manifold-aps train-prior)"
    )
    p.add_argument(
        "--dps-steps", type=int, default=1000, help="DPS reverse-diffusion steps (default: 1000)"
    )
    p.add_argument(
        "--guidance", type=float, default=0.3, help="DPS guidance step size (default: 0.3)"
    )
    p.add_argument(
        "--test-signals", type=int, default=8, help="test signals per problem (default: 8)"
    )
    p.add_argument(
        "--samples", type=int, default=32, help="posterior samples per signal (default: 32)"
    )
    p.add_argument(
        "--fit-fields",
        type=int,
        default=256,
        help="signals the Matérn prior is fitted on (default: 256)",
    )
    p.add_argument(
        "--missing", type=float, default=0.9, help="share of vertices hidden in (a) (default: 0.9)"
    )
    p.add_argument(
        "--noise-std",
        type=float,
        default=0.1,
        help="observation noise for gaussian and dps (default: 0.1; trained engines use their own)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run on meshes decimated twice with a known Matérn prior, 2 signals, 8 samples",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of signals, masks, noise, samples (default: 0)"
    )
    p.add_argument("--out", type=Path, default=Path("example_output/mesh"), help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    if args.engine == "dps" and not args.prior:
        p.error("--engine dps needs --prior CKPT (a manifold-aps train-prior checkpoint)")
    if args.engine != "gaussian" and args.mesh == "both":
        p.error("a checkpoint belongs to one mesh: give --mesh bunny or --mesh spot")
    if args.engine != "gaussian" and args.quick:
        p.error(
            "--quick replaces the datasets by small stand-ins, where checkpoints do not apply; "
            "use it with --engine gaussian"
        )
    if args.quick:
        args.test_signals, args.samples, args.fit_fields = 2, 8, 64
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for mesh in ["bunny", "spot"] if args.mesh == "both" else [args.mesh]:
        try:
            ds = (
                quick_dataset(mesh, args.seed)
                if args.quick
                else build_prior_dataset(MESH_DATASETS[mesh])
            )
        except FileNotFoundError as err:
            sys.exit(f"mesh_reconstruction needs the shared data ($MANIFOLD_APS_DATA): {err}")
        rows += run_mesh(ds, mesh, args)
    path = Path(args.out) / "scores.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"wrote {len(rows)} PNGs and {path} in {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
