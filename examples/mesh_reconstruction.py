"""Reconstruct signals on scanned 3-D meshes (Stanford bunny, Spot) from partial or blurred data.

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
interpolation (`manifold_aps.NearestNeighbour`, `HarmonicInterpolation`) for (a), the blurred
observation itself for (b). Writes one PNG per mesh and problem (truth / observation / posterior
mean / posterior std, rendered in 3-D) and `scores.json` to `--out`.

Run from the repository root (needs the shared data, `$MANIFOLD_APS_DATA`, default
`../shared/data`)::

    .venv/bin/python examples/mesh_reconstruction.py                       # both meshes, Gaussian engine
    .venv/bin/python examples/mesh_reconstruction.py --quick               # smoke run, see below
    .venv/bin/python examples/mesh_reconstruction.py --mesh bunny --engine runs/aps-bunny/checkpoint.pt
    .venv/bin/python examples/mesh_reconstruction.py --mesh bunny --engine dps --prior runs/bunny/checkpoint.pt

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
    ExactGaussianPosterior,
    GaussianNoise,
    GaussianPrior,
    HarmonicInterpolation,
    HeatBlur,
    Mask,
    NearestNeighbour,
    RandomMaskGenerator,
    TriangleMesh,
    crps_ensemble,
    fit_matern,
    interval_coverage,
    weighted_rmse,
)
from manifold_aps.datasets import PriorDataset, TensorSource, build_prior_dataset, data_dir
from manifold_aps.metrics import central_interval
from manifold_aps.plotting import plot_signals

MESH_DATASETS = {"bunny": "mesh-bunny", "spot": "mesh-spot"}
MESH_FILES = {"bunny": "bunny.off", "spot": "spot_triangulated.obj"}  # used by --quick only
VIEWS = {"bunny": (20, 30, 0, "y"), "spot": (15, 50, 0, "y")}  # matplotlib view_init: both meshes are y-up


def quick_dataset(mesh: str, seed: int) -> PriorDataset:
    """A small stand-in for `--quick`: the mesh decimated twice, signals from a known Matérn prior."""
    fine = TriangleMesh.from_file(data_dir() / "meshes" / MESH_FILES[mesh])
    domain = fine.coarsen().domain.coarsen().domain
    truth_prior = GaussianPrior(domain, variance=1.0, length_scale=0.25 * domain.total_area**0.5, smoothness=1.5)
    g = torch.Generator().manual_seed(seed)
    train, test = truth_prior.sample(64, rng=g).float(), truth_prior.sample(8, rng=g).float()
    return PriorDataset(f"{MESH_DATASETS[mesh]} (quick stand-in)", domain, TensorSource(train, train[:8]), test, "1",
                        "draws of a known Matérn prior on the mesh decimated twice")


def make_engine(args, ds: PriorDataset):
    """`(name, description, sampler, noise)`: the engine `--engine` asks for, for the dataset's domain."""
    if args.engine == "gaussian":
        g = torch.Generator().manual_seed(args.seed)
        train = ds.source.train
        fit_fields = train[torch.randperm(train.shape[0], generator=g)[: args.fit_fields]].double()
        prior = fit_matern(ds.domain, fit_fields, fit_nugget=True).prior
        label = (f"exact Gaussian posterior, Matérn prior fitted on {fit_fields.shape[0]} signals (std "
                 f"{prior.variance ** 0.5:.2f}, length scale {prior.length_scale:.3g}, smoothness "
                 f"{prior.smoothness:.2f}, nugget {prior.nugget:.2g})")
        noise = GaussianNoise(args.noise_std)
        return "exact Gaussian posterior", label, ExactGaussianPosterior(prior, noise), noise
    if args.engine == "dps":
        from manifold_aps.posterior import DPS
        from manifold_aps.priors.train import load_prior

        noise = GaussianNoise(args.noise_std)
        sampler = DPS(load_prior(args.prior, ds.domain), noise, steps=args.dps_steps, guidance=args.guidance)
        return "DPS", f"DPS ({args.dps_steps} steps, guidance {args.guidance:g}), score prior {args.prior}", sampler, noise
    from manifold_aps.posterior.engines import load_trained_engine

    name, engine, _, _ = load_trained_engine(args.engine, ds)
    return name, f"{name} engine {args.engine} (noise {engine.noise.sigma:g}, its training value)", engine, engine.noise


def problems(ds: PriorDataset, noise: GaussianNoise, n: int, missing: float, seed: int) -> dict:
    """The two problems for `n` test signals: name -> `(y, operator, truth, where)`."""
    g = torch.Generator().manual_seed(seed)
    truth = ds.test[torch.randperm(ds.test.shape[0], generator=g)[:n]].double()  # a mix of both signal kinds
    observed = RandomMaskGenerator(ds.domain, missing=missing).step(n, seed=f"mesh-{seed}")["mask"]
    mask = Mask(ds.domain, observed)
    lam, _ = ds.domain.eigenbasis(31)
    blur = HeatBlur(ds.domain, 1.0 / float(lam[30]))
    return {
        "inpainting": (noise(mask(truth), mask.range_mask, rng=g), mask, truth, ~observed),
        "deblurring": (noise(blur(truth), None, rng=g), blur, truth, torch.ones_like(truth, dtype=torch.bool)),
    }


def posterior_samples(sampler, y, operator, n: int, seed: int) -> torch.Tensor:
    """`n` samples `(n, B, N, C)` in float64, each engine fed as it expects."""
    params = list(sampler.parameters()) if isinstance(sampler, torch.nn.Module) else []
    prior_params = list(sampler.prior.parameters()) if isinstance(getattr(sampler, "prior", None), torch.nn.Module) else []
    dtype = (params or prior_params or [y])[0].dtype  # networks run in their own precision
    # DPS guidance and amortized VI's inner fits take gradients; the closed form needs none
    with torch.no_grad() if isinstance(sampler, ExactGaussianPosterior) else torch.enable_grad():
        return sampler.sample(y.to(dtype), operator, n, rng=torch.Generator().manual_seed(seed)).detach().double()


def reconstruct(ds: PriorDataset, mesh: str, args) -> list[dict]:
    """Run both problems on one mesh; print and return one row per problem, save the PNGs."""
    weight = ds.domain.mass
    short, label, sampler, noise = make_engine(args, ds)
    print(f"{ds.name}: {ds.domain}\n  engine: {label}", flush=True)
    rows = []
    for name, (y, operator, truth, where) in problems(ds, noise, args.test_signals, args.missing, args.seed).items():
        t0 = time.perf_counter()
        samples = posterior_samples(sampler, y, operator, args.samples, args.seed + 1)
        seconds = time.perf_counter() - t0
        mean, std = samples.mean(0), samples.std(0)
        lo, hi = central_interval(samples, 0.9)
        row = {"mesh": mesh, "problem": name, "vertices": ds.domain.num_nodes, "test_signals": truth.shape[0],
               "samples": args.samples, "engine": args.engine,
               "rmse_mean": float(weighted_rmse(mean, truth, weight, where)),
               "crps": float(crps_ensemble(samples, truth, weight, where)),
               "coverage_90": float(interval_coverage(lo, hi, truth, weight, where)),
               "rmse_zero": float(weighted_rmse(torch.zeros_like(truth), truth, weight, where)),
               "seconds": round(seconds, 2)}
        if name == "inpainting":
            nearest = NearestNeighbour(ds.domain).estimate(y, operator)
            row["rmse_nearest_neighbour"] = float(weighted_rmse(nearest, truth, weight, where))
            row["rmse_harmonic"] = float(weighted_rmse(HarmonicInterpolation(ds.domain).estimate(y, operator), truth, weight, where))
            shown = (f"{100 * (1 - args.missing):.0f} % observed (nearest-vertex fill)", nearest[0, :, 0])
        else:
            row["rmse_observation"] = float(weighted_rmse(y.double(), truth, weight, where))
            shown = ("observation (blurred, noisy)", y[0, :, 0].double())
        baselines = ", ".join(f"{k[5:]} {v:.3f}" for k, v in row.items() if k.startswith("rmse_") and k != "rmse_mean")
        print(f"  {name:10s} RMSE of the mean {row['rmse_mean']:.3f} (baselines: {baselines}), CRPS {row['crps']:.3f}, "
              f"90 % coverage {100 * row['coverage_90']:.1f} %, {seconds:.1f} s for {args.samples} samples of "
              f"{truth.shape[0]} signals", flush=True)
        png = plot_signals(
            ds.domain,
            [("truth", truth[0, :, 0]), shown, ("posterior mean", mean[0, :, 0]), ("posterior std", std[0, :, 0])],
            Path(args.out) / f"{mesh}_{name}.png",
            shared_scale=[True, True, True, False],
            view=VIEWS[mesh],
            suptitle=f"{ds.name}, {name}: {short}",
        )
        row["png"] = str(png)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mesh", choices=["bunny", "spot", "both"], default="both", help="which mesh (default: both)")
    parser.add_argument("--engine", default="gaussian", metavar="gaussian|dps|PATH",
                        help="gaussian (fitted Matérn prior, exact posterior; default), dps (needs --prior) or "
                             "the checkpoint of a trained engine (manifold-aps distill)")
    parser.add_argument("--prior", help="score-prior checkpoint for --engine dps (manifold-aps train-prior)")
    parser.add_argument("--dps-steps", type=int, default=1000, help="DPS reverse-diffusion steps (default: 1000)")
    parser.add_argument("--guidance", type=float, default=0.3, help="DPS guidance step size (default: 0.3)")
    parser.add_argument("--test-signals", type=int, default=8, help="held-out test signals per problem (default: 8)")
    parser.add_argument("--samples", type=int, default=32, help="posterior samples per signal (default: 32)")
    parser.add_argument("--fit-fields", type=int, default=256,
                        help="training signals the Matérn prior is fitted on (default: 256)")
    parser.add_argument("--missing", type=float, default=0.9, help="fraction of vertices hidden in (a) (default: 0.9)")
    parser.add_argument("--noise-std", type=float, default=0.1,
                        help="observation noise for gaussian and dps (default: 0.1; trained engines use their own)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run on meshes decimated twice with a known Matérn prior, 2 signals, 8 samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of test signals, masks, noise, samples (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("example_output/mesh"),
                        help="output folder for the PNGs and scores.json (default: example_output/mesh)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args(argv)
    if args.engine == "dps" and not args.prior:
        parser.error("--engine dps needs --prior CKPT (a manifold-aps train-prior checkpoint)")
    if args.engine != "gaussian" and args.mesh == "both":
        parser.error("a checkpoint belongs to one mesh: give --mesh bunny or --mesh spot")
    if args.engine != "gaussian" and args.quick:
        parser.error("--quick replaces the datasets by small stand-ins, where checkpoints do not apply; "
                     "use it with --engine gaussian")
    if args.quick:
        args.test_signals, args.samples, args.fit_fields = 2, 8, 64
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = []
    for mesh in (["bunny", "spot"] if args.mesh == "both" else [args.mesh]):
        try:
            ds = quick_dataset(mesh, args.seed) if args.quick else build_prior_dataset(MESH_DATASETS[mesh])
        except FileNotFoundError as err:
            sys.exit(f"mesh_reconstruction needs the shared data ($MANIFOLD_APS_DATA, default ../shared/data): {err}")
        rows += reconstruct(ds, mesh, args)
    path = Path(args.out) / "scores.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"wrote {len(rows)} PNGs and {path} in {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
