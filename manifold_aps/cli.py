"""The `manifold-aps` command line."""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]

DEMO_HELP = """\
Impute hidden cells of a real ERA5 field with the exact Gaussian (Matérn) posterior.

By default it reads the ERA5 2 m temperature sample shipped in the package (UK and Ireland,
0.25 deg, hourly, March 2019), fits the prior on the first 75 % of the hours, hides 70 % of the
cells of 8 held-out hours (seeded), and writes to --output-dir:
  imputed.nc   truth, observed cells, posterior mean / std / samples (CF attributes)
  map.png      truth, observed, posterior mean and std of the first test hour
  scores.json  area-weighted RMSE, CRPS, 90 % coverage over the hidden cells

example:
  manifold-aps demo --mask stations --missing 0.9 --samples 32 --output-dir out/
"""


def _demo(args: argparse.Namespace) -> int:
    import torch

    from climate.demo import run_demo

    torch.set_num_threads(max(1, args.threads))
    s = run_demo(
        input_path=args.input,
        variable=args.var,
        mask_kind=args.mask,
        missing=args.missing,
        num_test=args.times,
        num_samples=args.samples,
        noise_std=args.noise_std,
        train_fraction=args.train_fraction,
        seed=args.seed,
        output_dir=args.output_dir,
        plot=not args.no_plot,
    )
    print(
        f"\nscores over the hidden cells ({100 * s.missing_fraction:.0f} % of {s.num_test_fields} test fields), "
        "area-weighted:\n"
        f"  RMSE posterior mean     {s.rmse_posterior_mean:.3f}\n"
        f"  RMSE nearest neighbour  {s.rmse_nearest_neighbour:.3f}\n"
        f"  RMSE climatology        {s.rmse_climatology:.3f}\n"
        f"  CRPS ({args.samples} samples)     {s.crps_posterior:.3f}\n"
        f"  90 % interval coverage  {100 * s.coverage_90_analytic:.1f} %\n"
        f"  spread / skill          {s.spread_skill:.2f}\n"
        f"wrote {args.output_dir}/imputed.nc, map.png, scores.json in {s.seconds:.1f} s"
    )
    return 0


TRAIN_PRIOR_HELP = """\
Train a diffusion prior (score network + VP-SDE) on a named dataset, with checkpoints.

datasets (real data from $MANIFOLD_APS_DATA, default ../shared/data; era5-uk is shipped):
  era5-uk            ERA5 t2m, UK 0.25 deg, train 1-18 Mar 2019 (1617 cells)
  era5-global        ERA5 t2m, global 1 deg -> HEALPix nside 16, longitude rotations
  wmap               WMAP W-band temperature, HEALPix nside 16, random SO(3) rotations
  mesh-bunny         Matern draws + heat-diffused sources on the Stanford bunny
  mesh-spot          the same on Keenan Crane's Spot
  gaussian-healpix8  draws of a known Matern prior (closed-form checks)
  gaussian-bumpy     the same on the bumpy mesh

Writes OUT/checkpoint.pt (atomic; weights, EMA, optimizer, domain fingerprint), OUT/log.csv and
OUT/train.json. --resume continues an interrupted run exactly where it stopped; Ctrl-C saves a
checkpoint first. Several processes: torchrun --nproc_per_node 2 -m manifold_aps.cli train-prior ...

example:
  manifold-aps train-prior --dataset era5-uk --steps 2000 --out runs/era5-uk
"""


def _train_prior(args: argparse.Namespace) -> int:
    import torch

    from manifold_aps.nn import ScoreNetConfig
    from manifold_aps.priors.train import train_prior
    from manifold_aps.training import TrainConfig

    torch.set_num_threads(max(1, args.threads))
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=min(args.warmup, args.steps),
        ema_decay=args.ema,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        validate_every=args.validate_every,
        log_every=args.log_every,
        device=args.device,
    )
    net = ScoreNetConfig(channels=tuple(args.channels), num_modes=args.modes)
    _, result = train_prior(args.dataset, args.out, config, net=net, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(
        f"step {result.step}: training loss {result.loss:.4f}, validation loss {result.val_loss:.4f}, "
        f"{result.seconds:.0f} s; checkpoint {result.checkpoint}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `manifold-aps` (one sub-command per task)."""
    parser = argparse.ArgumentParser(
        prog="manifold-aps",
        description="Posterior sampling for inverse problems on spheres, meshes and climate grids.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="impute a real ERA5 field with the exact Gaussian posterior",
        description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--input", help="ERA5 netCDF/GRIB/zarr file (default: the shipped UK t2m sample)")
    demo.add_argument("--var", default="t2m", help="variable to impute (default: t2m)")
    demo.add_argument("--mask", default="random", choices=["random", "stations", "swath", "box"],
                      help="how cells are hidden (default: random)")
    demo.add_argument("--missing", type=float, default=0.7,
                      help="fraction of cells hidden for --mask random/stations (default: 0.7)")
    demo.add_argument("--times", type=int, default=8, help="number of held-out test hours (default: 8)")
    demo.add_argument("--samples", type=int, default=16, help="posterior samples per field (default: 16)")
    demo.add_argument("--noise-std", type=float, default=0.1,
                      help="observation error std assumed by the likelihood, variable units (default: 0.1)")
    demo.add_argument("--train-fraction", type=float, default=0.75,
                      help="leading fraction of time steps used to fit the prior (default: 0.75)")
    demo.add_argument("--seed", type=int, default=0, help="seed of masks and samples (default: 0)")
    demo.add_argument("--output-dir", default="demo_output", help="output folder (default: demo_output)")
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG map")
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    demo.set_defaults(func=_demo)

    tp = sub.add_parser(
        "train-prior", help="train a diffusion prior on a dataset",
        description=TRAIN_PRIOR_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tp.add_argument("--dataset", required=True, help="dataset name (see above)")
    tp.add_argument("--out", required=True, help="output folder (checkpoint.pt, log.csv, train.json)")
    tp.add_argument("--steps", type=int, default=2000, help="optimisation steps in total (default: 2000)")
    tp.add_argument("--batch-size", type=int, default=32, help="global batch size (default: 32)")
    tp.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (default: 2e-3)")
    tp.add_argument("--warmup", type=int, default=100, help="learning-rate warm-up steps (default: 100)")
    tp.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights, 0 for none (default: 0.999)")
    tp.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches (default: 0)")
    tp.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64],
                    help="feature channels per U-Net level, finest first (default: 16 32 64)")
    tp.add_argument("--modes", type=int, default=64, help="Laplace-Beltrami modes of the spectral filters (default: 64)")
    tp.add_argument("--checkpoint-every", type=int, default=250, help="steps between checkpoints (default: 250)")
    tp.add_argument("--validate-every", type=int, default=250, help="steps between validation losses (default: 250)")
    tp.add_argument("--log-every", type=int, default=25, help="steps between log rows (default: 25)")
    tp.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    tp.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default: 1)")
    tp.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    tp.add_argument("--quiet", action="store_true", help="no progress bar")
    tp.set_defaults(func=_train_prior)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `manifold-aps` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        print(f"manifold-aps {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
