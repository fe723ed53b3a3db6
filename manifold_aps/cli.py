"""The `manifold-aps` command line."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line (exit code 2), like every other error here."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    """Argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _ensemble_size(text: str) -> int:
    """Argparse type: an integer >= 2 (a sample std needs two samples)."""
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f"must be at least 2 (the std is that of the samples), got {text!r}"
        )
    return value


def _positive_float(text: str) -> float:
    """Argparse type: a finite number > 0 (as given, before any scaling)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _guidance(text: str) -> float | str:
    """Argparse type of `--guidance`: "auto" or a finite number >= 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text!r}")
    return value


def _daps_steps(text: str) -> int:
    """Argparse type of `--daps-steps`: an integer >= 3 (DAPS's annealing levels)."""
    value = _positive_int(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"must be at least 3 (annealing levels), got {text!r}")
    return value


DAPS_STEPS_HELP = (
    "DAPS annealing levels = network passes per sample (default: 20; more are more accurate on "
    "scattered gaps: 50 halves the gap to DPS on ERA5 UK random masks)"
)
DAPS_COVARIANCE_HELP = (
    "DAPS's inner Gaussian: white (default: r_t^2 I), or its covariance fitted on the prior's "
    "training signals, read again from the files or dataset its checkpoint names (seconds; "
    "never cached): laplacian (400 lowest Laplace-Beltrami modes: the most accurate on the "
    "unseen-operator benchmark) or eof (256 EOFs of the signals)"
)
GUIDANCE_HELP = (
    "DPS guidance step size, or 'auto' (default): tuned once on the first fields, by hiding 10 %% "
    "of their observed cells and keeping the candidate of 0.01, 0.03, 0.1, 0.3, 1 whose sample "
    "predicts them best (costs as much as 5 samples; the log says which was kept)"
)


DEMO_HELP = """\
Impute hidden cells of a real ERA5 field with the exact Gaussian (Matérn GMRF) posterior and,
beside it on the same hidden cells, the APS flow shipped in the package.

By default it reads the ERA5 2 m temperature sample shipped in the package (UK and Ireland,
0.25 deg, hourly, March 2019), fits the prior on the first 75 % of the hours, hides 70 % of the
cells of 8 held-out hours (seeded), and writes to --output-dir:
  imputed.nc      truth, observed cells, posterior mean / std / samples (CF attributes)
  map.png         truth, observed, posterior mean and std of the first test hour
  imputed_aps.nc  the same from the shipped APS flow, and map_aps.png
  scores.json     area-weighted RMSE, CRPS, 90 % coverage over the hidden cells, per engine

The shipped flow (a small diffusion prior, 2000 steps, and the APS flow distilled from it, 600
steps, trained on the sample's first 558 hours; `make demo-models` reproduces it) is scored only
on hours it never saw; --learned-checkpoint scores another distill checkpoint of the same grid,
--no-learned skips it.

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
        learned=not args.no_learned,
        learned_checkpoint=args.learned_checkpoint,
    )
    rows = [
        (
            "exact Gaussian",
            s.rmse_posterior_mean,
            s.crps_posterior,
            s.coverage_90_analytic,
            s.spread_skill,
        ),
    ]
    if s.learned is not None:
        e = s.learned
        rows.append(
            (
                e.engine,
                e.rmse_posterior_mean,
                e.crps_posterior,
                e.coverage_90_analytic,
                e.spread_skill,
            )
        )
    lines = [f"  {'':16}{'RMSE':>8}{'CRPS':>8}{'90 % cov.':>11}{'spread/skill':>14}"]
    for name, rmse, crps, cov, ss in rows:
        lines.append(f"  {name:16}{rmse:8.3f}{crps:8.3f}{100 * cov:9.1f} %{ss:14.2f}")
    lines.append(f"  {'nearest cell':16}{s.rmse_nearest_neighbour:8.3f}")
    lines.append(f"  {'climatology':16}{s.rmse_climatology:8.3f}")
    table = "\n".join(lines)
    written = "imputed.nc, map.png" + (
        f", imputed_{s.learned.engine}.nc, map_{s.learned.engine}.png" if s.learned else ""
    )
    if args.no_plot:
        written = ", ".join(w for w in written.split(", ") if not w.endswith(".png"))
    print(
        f"\nscores over the hidden cells ({100 * s.missing_fraction:.0f} % of "
        f"{s.num_test_fields} test fields, {args.samples} samples), area-weighted, "
        f"{s.units or 'units of the variable'}:\n{table}\n"
        f"wrote {args.output_dir}/{written}, scores.json in {s.seconds:.1f} s"
    )
    return 0


EXPORT_HELP = """\
Write an inference copy of a prior or engine checkpoint: the weights it samples with (the EMA
weights where the run kept them), its self-description (domain, variable, units, the embedded
prior of an engine) and nothing else: no optimizer or EMA state, about a quarter of the size.

The copy loads wherever the checkpoint does (`impute --checkpoint`, `reconstruct --checkpoint`,
`distill --prior`) and samples the same numbers; it cannot resume training. An existing OUT is
refused unless --overwrite (the file is written atomically).

example:
  manifold-aps export runs/aps/checkpoint.pt --out models/aps-t2m.pt
"""


def _export(args: argparse.Namespace) -> int:
    import torch

    from manifold_aps.checkpoint import atomic_path
    from manifold_aps.training import inference_copy, load_checkpoint

    source, out = Path(args.checkpoint), Path(args.out)
    if not source.is_file():
        raise FileNotFoundError(2, "no such checkpoint", str(source))
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the checkpoint itself; write the copy elsewhere")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; give --overwrite to replace it")
    ckpt = load_checkpoint(source)
    with atomic_path(out) as tmp:
        torch.save(inference_copy(ckpt), tmp)
    before, after = source.stat().st_size, out.stat().st_size
    print(
        f"wrote {out}: {ckpt['kind']} on {ckpt['domain']}, step {ckpt['step']}, "
        f"{after / 1e6:.2f} MB (the checkpoint: {before / 1e6:.2f} MB)"
    )
    return 0


IMPUTE_HELP = """\
Impute the hidden cells of a gridded field (ERA5 netCDF, GRIB or zarr) and write the posterior
mean, standard deviation and samples to a CF netCDF file, with an optional map.

Cells are hidden where the input is NaN and wherever a --mask says so (several --mask options
combine: a cell is observed only where all of them observe it):
  nan                     only the NaN cells of the input (the default)
  random:0.7              70 % of the cells hidden at random, a new draw per time step (--seed)
  stations:FILE.csv       only the cells nearest to the stations (CSV columns lat, lon) observed
  swath:2:1000            2 satellite swaths, 1000 km wide, observed, per time step (--seed)
  box:S:N:W:E             a latitude/longitude box hidden, e.g. box:51:55:-6:-1
  land / sea              only land (sea) cells observed (Natural Earth; set CARTOPY_DATA_DIR)

Engines:
  gaussian  exact posterior of a sparse Matern GMRF (SPDE, no grid-size limit) of standardised
            anomalies (hour-of-day climatology and per-cell std), fitted by maximum likelihood on
            the complete fields of --fit-period (default: the complete time steps outside
            --period; if there are none, the observed values of the imputed fields themselves),
            or loaded from --checkpoint (saved with --save-model)
  dps       diffusion posterior sampling with a prior from `manifold-aps train-prior` (--checkpoint)
  daps      decoupled annealing with the same prior: --daps-steps network passes a sample (20),
            no gradients, no guidance to tune
  aps       a flow distilled with `manifold-aps distill` (--checkpoint); one pass per sample
  implicit  a generator from `manifold-aps distill --engine implicit` (--checkpoint); one pass
  avi       a few-step guided sampler from `manifold-aps distill --engine avi` (--checkpoint)

--period and --fit-period take one time range or several, comma-separated: a stamp is what
START:END of itself selects (2019-03-01: that day, 2019-03-01T12: that hour), a range includes
both ends (either may be empty), e.g. 2002-07-01,2002-07-11,2002-07-21 or A:B,C:D; the union is
taken in time order, and an item that selects nothing or overlaps another is refused. Time steps
with nothing hidden are passed through (samples = the values, std 0), by every engine.

--coarsen K averages the observed cells of each KxK block (a block is missing only where all of
its cells are); --output-grid native brings the result back to the input grid: each block's
mean, std and samples repeated over its cells (piecewise constant: the nearest coarse cell is
the block a cell belongs to), every cell observed in the input kept bit for bit with std 0; a
hidden cell of a block with observed cells takes their average, with std 0 (the coarse grid
resolves nothing finer). Default: coarse, the result on the --coarsen grid.

When the hidden cells have values in the input (an artificial mask), the scores of the
imputation against them are printed: area-weighted RMSE, CRPS, 90 % coverage, spread/skill.
--truth FILE scores an imputation of real gaps the same way against another file (the same
variable, on the same grid after --select/--region/--coarsen, with every imputed time step):
over the cells hidden in the input that have a value in FILE.

Several variables (--var t2m msl, and --channels-from level=500,850 for levels) are imputed
jointly by a dps/aps/implicit/avi --checkpoint trained on them (train-prior --var t2m msl): give
them in the checkpoint's order. Each variable's NaN cells are its own; a --mask hides the same
cells in every variable. The output has each variable's <var>_mean, <var>_std, <var>_samples (with
the --channels-from dimension) and its own <var>_observed flag; the scores are printed per
channel. The gaussian engine imputes one variable.

examples:
  manifold-aps impute --input era5.nc --var t2m --mask random:0.7 \\
      --fit-period 2019-03-01:2019-03-24 --period 2019-03-25:2019-03-31 \\
      --output out.nc --plot out.png
  manifold-aps impute --input era5.grib --var t2m --mask stations:stations.csv --engine dps \\
      --checkpoint runs/era5-uk/checkpoint.pt --samples 8 --output out.nc
  manifold-aps impute --input gappy.nc --var sst --coarsen 10 --output-grid native \\
      --period 2002-07-01,2002-07-11,2002-07-21 --truth complete.nc --output out.nc
  manifold-aps impute --input era5.nc --var t2m msl --mask random:0.7 --engine aps \\
      --checkpoint runs/aps-t2m-msl/checkpoint.pt --output out.nc
"""


def _impute(args: argparse.Namespace) -> int:
    import torch

    from climate.workflow import ImputeRequest, run_impute

    torch.set_num_threads(max(1, args.threads))
    request = ImputeRequest(
        input=args.input,
        variable=args.var[0] if len(args.var) == 1 else tuple(args.var),
        channels_from=args.channels_from,
        masks=tuple(args.mask or ("nan",)),
        engine=args.engine,
        checkpoint=args.checkpoint,
        fit_period=args.fit_period,
        period=args.period,
        select=tuple(args.select or ()),
        region=args.region,
        coarsen=args.coarsen,
        output_grid=args.output_grid,
        grid=args.grid,
        truth=args.truth,
        save_model=args.save_model,
        samples=args.samples,
        quantiles=tuple(args.quantiles or ()),
        seed=args.seed,
        noise_std=args.noise_std,
        variance_scale=args.variance_scale,
        chunk_size=args.chunk_size,
        dps_steps=args.dps_steps,
        guidance=args.guidance,
        daps_steps=args.daps_steps,
        daps_covariance=args.daps_covariance,
        output=args.output,
        plot=args.plot,
        plot_time=args.plot_time,
        attribution=args.attribution,
        progress=not args.quiet,
        skip_corrupt_grib=args.skip_corrupt_grib,
        scheduler=args.scheduler,
    )
    run_impute(request, log=print)
    return 0


TRAIN_PRIOR_HELP = """\
Train a diffusion prior (score network + VP-SDE) on a named dataset or on your own data, with
checkpoints. Exactly one of:
  --dataset NAME                    a named dataset (below)
  --input FILE --var VAR [VAR ...]  a gridded field (netCDF, GRIB, zarr) on its own lat-lon grid:
                                    [--select DIM=VALUE ...] [--fit-period RANGES] [--coarsen K]
                                    [--grid healpix:NSIDE] (a global field's cells averaged into
                                    HEALPix pixels, trained with SO(3) rotations; impute then
                                    takes the same --grid); steps with missing cells are left out;
                                    the last --val-fraction of the steps validate; --augment auto
                                    rotates global evenly spaced grids about the polar axis, leaves
                                    regional ones as is
  --mesh M.obj --signals S.npz      signals (S, V) on your mesh (OFF/OBJ/PLY/STL, vertex order as
                                    written); optional `positions` (V, 3) in the npz match rows to
                                    vertices, optional `units`; no augmentation
  --healpix MAP.fits [MORE.fits ...]
                                    HEALPix maps: every column of every file is a map, all of one
                                    nside; each file's RING/NESTED ordering is read from its header
                                    (the checkpoint's is the first file's, the others are
                                    reordered); maps with UNSEEN/NaN pixels are left out (named)

Channels (--input): several --var on one grid are the channels of one prior, in the order given;
--channels-from DIM=V1,V2,... makes each listed value of DIM a channel of each variable (DIM
alone: all its values), variable by variable: --var t u --channels-from level=500,850 gives t500,
t850, u500, u850. --select DIM=VALUE still fixes the other dimensions. Each channel is standardised
by its own mean and std; the checkpoint lists each channel's variable, units and DIM value, and
`impute` needs the same --var (and --channels-from) in the same order.

Augmentation (--augment), chosen from the domain when auto: a global, evenly spaced lat-lon grid is
rotated about the polar axis (longitude: a random whole number of cells per batch); full-sky HEALPix
maps (--healpix, or a HEALPix-gridded GRIB --input) by random rotations in SO(3) (so3: exact on
their harmonics up to lmax = 3 nside - 1, which keeps the angular power spectrum); regional grids
and meshes are not augmented (none). Give longitude, so3 or none to override where it applies.

The checkpoint describes itself: its domain (grid coordinates, mesh vertices and faces), the
variable, units and where the data came from (the file as given and its SHA-256), so `distill
--prior OUT/checkpoint.pt` needs no --dataset and `impute --engine dps --checkpoint` runs it on
a field of the same grid.

datasets (real data from $MANIFOLD_APS_DATA, default ../shared/data; era5-uk is shipped):
  era5-uk            ERA5 t2m, UK 0.25 deg, train 1-18 Mar 2019 (1617 cells)
  era5-global        ERA5 t2m, global 1 deg -> HEALPix nside 16, longitude rotations
  wmap               WMAP W-band temperature, HEALPix nside 16, random SO(3) rotations
  wmap-masked        the same seen only outside its analysis mask and 6 held-out caps
                     (hidden pixels filled by constrained Gaussian realisations)
  mesh-bunny         Matern draws + heat-diffused sources on the Stanford bunny
  mesh-spot          the same on Keenan Crane's Spot
  digits             scikit-learn digits upsampled to 16x16 on a planar grid (Euclidean case)
  gaussian-healpix8  draws of a known Matern prior (closed-form checks)
  gaussian-bumpy     the same on the bumpy mesh

Writes OUT/checkpoint.pt (atomic; weights, EMA, optimizer, domain fingerprint), OUT/log.csv and
OUT/train.json. --resume continues an interrupted run exactly where it stopped (with the
checkpoint's seed, batch size, learning rate, warm-up and EMA; only --steps, --checkpoint-every,
--log-every, --validate-every and --device may change); an OUT that already holds a run is refused
unless --resume or --overwrite is given. Ctrl-C saves a checkpoint first. Several processes:
torchrun --nproc_per_node 2 -m manifold_aps.cli train-prior ...

examples:
  manifold-aps train-prior --dataset era5-uk --steps 2000 --out runs/era5-uk
  manifold-aps train-prior --input z500.nc --var z --select level=500 --out runs/z500
  manifold-aps train-prior --input era5.nc --var t2m msl --out runs/t2m-msl
  manifold-aps train-prior --input era5_pl.nc --var t u --channels-from level=500,850 --out runs/tu
  manifold-aps train-prior --mesh spot.obj --signals spot_signals.npz --out runs/spot
  manifold-aps train-prior --healpix sky_a.fits sky_b.fits --augment so3 --out runs/sky
"""


def _training_data(args: argparse.Namespace):
    """The training data of `train-prior`: a dataset name, or the dataset of a user's files."""
    given = [
        opt
        for opt, dest in (
            ("--dataset", "dataset"),
            ("--input", "input"),
            ("--mesh", "mesh"),
            ("--healpix", "healpix"),
        )
        if getattr(args, dest)
    ]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of --dataset NAME, --input FILE --var VAR, "
            "--mesh FILE --signals FILE, --healpix MAP.fits [...]"
            + (f" (got {' and '.join(given)})" if given else "")
        )
    if args.dataset:
        return args.dataset
    if args.input:
        if not args.var:
            raise ValueError("--input needs --var VAR (the variable to train on)")
        from climate.datasets import grid_file_dataset

        return grid_file_dataset(
            args.input,
            args.var[0] if len(args.var) == 1 else args.var,
            select=tuple(args.select or ()),
            channels_from=args.channels_from,
            fit_period=args.fit_period,
            coarsen=args.coarsen,
            val_fraction=args.val_fraction,
            augment=args.augment,
            sample_dim=args.sample_dim,
            grid=args.grid,
        )
    if args.healpix:
        from manifold_aps.datasets import healpix_maps_dataset

        if args.augment == "longitude":
            raise ValueError(
                "--augment longitude rotates lat-lon grids; HEALPix maps take auto, so3 or none"
            )
        return healpix_maps_dataset(
            args.healpix, val_fraction=args.val_fraction, augment=args.augment
        )
    if not args.signals:
        raise ValueError("--mesh needs --signals FILE (an .npz with `signals` of shape (S, V))")
    from manifold_aps.datasets import mesh_signals_dataset

    return mesh_signals_dataset(args.mesh, args.signals, val_fraction=args.val_fraction)


def _distill_data(args: argparse.Namespace):
    """The dataset `distill` simulates observations from: --dataset, else the prior's own data."""
    if args.dataset:
        return args.dataset
    if args.prior == "exact":
        raise ValueError(
            "--prior exact is the exact prior of a gaussian-* dataset: give --dataset NAME"
        )
    from manifold_aps.posterior.engines import recorded_training_data

    try:
        return recorded_training_data(args.prior)
    except ValueError as err:
        raise ValueError(f"{err}: give --dataset NAME") from None


def _train_prior(args: argparse.Namespace) -> int:
    _refuse_to_replace_run(args)
    import torch

    from manifold_aps.nn import ScoreNetConfig
    from manifold_aps.priors.train import train_prior

    torch.set_num_threads(max(1, args.threads))
    config = _train_config(args)
    net = ScoreNetConfig(channels=tuple(args.channels), num_modes=args.modes)
    dataset = _training_data(args)
    if not isinstance(dataset, str) and not args.quiet:
        print(f"training data: {dataset.description}")
    _, result = train_prior(
        dataset, args.out, config, net=net, resume=args.resume, progress=not args.quiet
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(
        f"step {result.step}: training loss {result.loss:.4f}, "
        f"validation loss {result.val_loss:.4f}, "
        f"{result.seconds:.0f} s; checkpoint {result.checkpoint}"
    )
    return 0


DISTILL_HELP = """\
Distil an amortized posterior sampler from a prior, on simulated observations only (masks from a
family, Gaussian noise): --engine aps (default) trains a conditional flow q(x | y, A) by reverse
KL; --engine implicit trains a one-pass generator by an integral KL with an auxiliary score
(DAVI-style; no density); --engine avi trains the amortizer of a few-step MGDM sampler that keeps
the explicit likelihood at test time (LAVPS-style).

The prior is "exact" for the gaussian-* datasets (closed-form Matern prior, with --dataset) or
the checkpoint of a prior trained with `manifold-aps train-prior`; without --dataset the
observations are simulated from the prior's own training data (its named dataset, or the file
it recorded, refused if its SHA-256 changed), and the engine's checkpoint carries the prior's
weights (it loads without the prior's file). Masks: random (50-95 %
missing), caps, stations, swaths, or mixture (all four). Writes OUT/checkpoint.pt (kind
aps-flow, implicit-generator or amortized-vi), OUT/log.csv (loss per dimension), OUT/train.json;
--resume continues (as for train-prior), and an OUT that already holds a run needs --resume or
--overwrite.

examples:
  manifold-aps distill --dataset gaussian-healpix8 --prior exact --steps 2000 --out runs/aps-h8
  manifold-aps distill --dataset era5-uk --prior runs/era5-uk/checkpoint.pt --masks mixture \\
      --out runs/aps-uk
  manifold-aps distill --prior runs/z500/checkpoint.pt --out runs/aps-z500
  manifold-aps distill --engine implicit --dataset gaussian-healpix8 --prior exact \\
      --out runs/implicit-h8
"""

SAMPLE_HELP = """\
Draw posterior samples with a distilled engine (APS flow, implicit generator, amortized VI) for
held-out observations of its dataset (test split, masks from its family with --seed), and write
them with the truths to an .npz file (keys: y, mask, truth, samples (n, B, N, C), mean, std,
seconds_per_sample).

example:
  manifold-aps sample --checkpoint runs/aps-h8/checkpoint.pt --observations 8 --n 100 --out s.npz
"""


RECONSTRUCT_HELP = """\
Reconstruct signals on your mesh, or a HEALPix map, from their observed values, with uncertainty.

--signals T.npz holds `signals` (S, V): NaN marks an unobserved value (or give --observed O.npz
with a boolean `observed` (S, V)); optional `positions` (V, 3) match its rows to the mesh's
vertices (the output keeps the file's order). --mask random:F also hides a share F of the
observed values and scores the reconstruction on them (RMSE, 90 % coverage).

engines:
  gaussian  (default) Matern GMRF fitted by maximum likelihood to the observed values themselves
            (no training signals), then its exact posterior: mean, std, samples
  harmonic  harmonic (Laplace) interpolation: a point estimate (std NaN, no samples)
  nearest   value of the nearest observed vertex along the edges: a point estimate
  dps       diffusion posterior sampling with a `train-prior --mesh` checkpoint (--checkpoint)
  daps      decoupled annealing with the same checkpoint: --daps-steps network passes a sample
  aps, implicit, avi  an engine from `distill` (--checkpoint); the checkpoint must be of this mesh

--healpix MAP.fits [--mask MASK.fits] reads a map instead (healpy; the header's ordering; UNSEEN
pixels and the mask's zeros are unobserved; a mask of another nside is refused). With a
checkpoint trained on the other ordering of the same nside (train-prior --healpix), the map is
reordered to the checkpoint's, and the output FITS is in that ordering (its header says which).

Writes --output .npz: mean, std (S, V), samples (N, S, V), observed (S, V) [, hidden, truth], or
for a map .fits (MEAN, STD, OBSERVED in the map's ordering); --ply a PLY of the mesh with the
first signal's mean and std as vertex attributes; --plot a PNG (a map: Mollweide).

example:
  manifold-aps reconstruct --mesh spot.obj --signals spot_test.npz --mask random:0.9 \\
      --output rec.npz --plot rec.png
  manifold-aps reconstruct --healpix wmap.fits --mask wmap_mask.fits --output wmap_rec.fits \\
      --plot wmap.png
"""


def _reconstruct(args: argparse.Namespace) -> int:
    import numpy as np

    from manifold_aps.checkpoint import atomic_path
    from manifold_aps.reconstruct import (
        POINT_ESTIMATES,
        in_checkpoint_ordering,
        parse_hiding,
        read_healpix_map,
        read_mesh_signals,
        reconstruct,
        scores,
        write_healpix_fits,
    )

    out = Path(args.output)
    if bool(args.mesh) == bool(args.healpix):
        raise ValueError("give --mesh FILE --signals FILE, or --healpix MAP.fits")
    if args.mesh and not args.signals:
        raise ValueError(
            "--mesh needs --signals FILE (an .npz with signals (S, V), NaN = unobserved)"
        )
    allowed = (".npz", ".fits") if args.healpix else (".npz",)
    if out.suffix.lower() not in allowed:
        raise ValueError(f"--output must end in {' or '.join(allowed)}, got {out}")
    if args.ply and not args.mesh:
        raise ValueError("--ply writes a mesh: it needs --mesh")
    mask_file = args.mask if args.mask and not args.mask.startswith("random:") else None
    if mask_file and not args.healpix:
        raise ValueError(
            f"--mask {args.mask}: a mask file is for --healpix maps; "
            "a mesh takes --observed O.npz or random:F"
        )
    writes = [Path(p) for p in (args.output, args.ply, args.plot) if p]
    for given in (args.mesh, args.signals, args.observed, args.checkpoint, args.healpix, mask_file):
        if given and any(w.resolve() == Path(given).resolve() for w in writes):
            raise ValueError(f"{given} is an input: an output may not replace it")
    for w in writes:
        if w.is_dir():
            raise ValueError(f"{w} is a folder, not a file to write")
    fraction = parse_hiding(None if mask_file else args.mask)
    units = ""
    if args.healpix:
        domain, values, observed, units = read_healpix_map(args.healpix, mask_file)
        if args.checkpoint and args.engine not in ("gaussian", *POINT_ESTIMATES):
            domain, values, observed = in_checkpoint_ordering(
                domain, values, observed, args.checkpoint
            )  # a NESTED map for a RING model (or back): reordered, written in the model's
        order = np.arange(domain.num_nodes)
    else:
        domain, values, observed, order = read_mesh_signals(args.mesh, args.signals, args.observed)
    hidden = None
    if fraction is not None:
        hidden = observed & (np.random.default_rng(args.seed).random(observed.shape) < fraction)
        observed = observed & ~hidden
    rec = reconstruct(
        domain,
        values,
        observed,
        engine=args.engine,
        checkpoint=args.checkpoint,
        samples=args.samples,
        seed=args.seed,
        alpha=args.alpha,
        noise_std=args.noise_std,
        dps_steps=args.dps_steps,
        guidance=args.guidance,
        daps_steps=args.daps_steps,
        daps_covariance=args.daps_covariance,
        progress=not args.quiet,
    )

    def as_file(a):  # mesh vertex order -> the signals file's row order
        back = np.empty_like(a)
        back[..., order] = a
        return back

    arrays = {
        "mean": as_file(rec.mean),
        "std": as_file(rec.std),
        "samples": as_file(rec.samples),
        "observed": as_file(rec.observed),
        "engine": np.array(rec.engine),
        "details": np.array(rec.details),
    }
    line = f"{rec.engine}: {rec.details}"
    if hidden is not None:
        s = scores(rec, values, hidden)
        arrays.update(hidden=as_file(hidden), truth=as_file(np.where(hidden, values, np.nan)))
        line += f"; on the {s['hidden']} hidden values: RMSE {s['rmse']:.4g}" + (
            f", 90 % coverage {s['coverage_90']:.3f}" if "coverage_90" in s else ""
        )
    if out.suffix.lower() == ".fits":
        write_healpix_fits(out, rec, domain, units)
        written = "MEAN, STD, OBSERVED"
    else:
        with atomic_path(out) as tmp:
            np.savez_compressed(tmp, **arrays)
        written = f"mean, std {rec.mean.shape}, samples {rec.samples.shape}"
    print(line)
    print(f"wrote {out}: {written}")
    if args.ply:
        import trimesh

        mesh = trimesh.Trimesh(domain.vertices, domain.faces, process=False)
        mesh.vertex_attributes.update(mean=rec.mean[0], std=rec.std[0])
        with atomic_path(args.ply) as tmp:
            mesh.export(tmp, file_type="ply", encoding="ascii")
        print(f"wrote {args.ply}: the first signal's mean and std as vertex attributes")
    if args.plot:
        from manifold_aps.plotting import plot_signals

        panels = [
            ("observed", np.where(rec.observed[0], rec.mean[0], np.nan)),
            ("mean", rec.mean[0]),
        ]
        if np.isfinite(rec.std[0]).all():
            panels.append(("std", rec.std[0]))
        with atomic_path(args.plot) as tmp:
            what = (
                Path(args.healpix).name
                if args.healpix
                else f"{Path(args.signals).name} on {Path(args.mesh).name}"
            )
            plot_signals(
                domain,
                panels,
                tmp,
                shared_scale=[True, True, False][: len(panels)],
                suptitle=f"{what}: {rec.engine}, first signal",
                units=units,
            )
        print(f"wrote {args.plot}")
    return 0


# training option (argparse dest) -> `TrainConfig` field
_TRAINING_FIELDS = {
    "steps": "steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "warmup": "warmup",
    "ema": "ema_decay",
    "seed": "seed",
    "checkpoint_every": "checkpoint_every",
    "validate_every": "validate_every",
    "log_every": "log_every",
    "device": "device",
}


def _refuse_to_replace_run(args: argparse.Namespace) -> None:
    """Refuse an `--out` that already holds a run unless --resume or --overwrite (before work)."""
    from manifold_aps.training import existing_run_files

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; it must be a folder (new or holding a run)")
    found = existing_run_files(out)
    if found and not (args.resume or args.overwrite):
        raise ValueError(
            f"--out {out} already holds a run ({', '.join(f.name for f in found)}); "
            "give --resume to continue it or --overwrite to replace it"
        )


def _train_config(args: argparse.Namespace):
    """The `TrainConfig` of the options given; the others take their defaults.

    With --resume of an existing checkpoint, the settings a resumed run must keep take the
    checkpoint's values instead.
    """
    from manifold_aps.training import RESUMABLE_CHANGES, TrainConfig, load_checkpoint

    given = {
        field: getattr(args, dest)
        for dest, field in _TRAINING_FIELDS.items()
        if getattr(args, dest, None) is not None
    }
    values = dict(args.training_defaults)
    checkpoint = Path(args.out) / "checkpoint.pt"
    resuming = args.resume and checkpoint.is_file()
    if resuming:  # Trainer.resume refuses a given value that differs from the checkpoint's
        saved = load_checkpoint(checkpoint)["train_config"]
        values.update(
            {k: v for k, v in saved.items() if k in values and k not in RESUMABLE_CHANGES}
        )
    values.update(given)
    if not resuming or "warmup" in given:
        values["warmup"] = min(values["warmup"], values["steps"])
    return TrainConfig(**values)


def _distill_settings(args: argparse.Namespace):
    """The engine settings of `distill`'s options, and the unit of its loss for the summary line."""
    if args.engine == "avi":
        from manifold_aps.posterior.amortized_vi import AmortizedVIConfig

        return AmortizedVIConfig(width=args.width, num_modes=min(args.modes, 64)), ""
    if args.engine == "implicit":
        from manifold_aps.posterior.implicit import ImplicitConfig

        return ImplicitConfig(
            width=args.width,
            num_modes=min(args.modes, 64),
            cg_iterations=args.cg_iterations,
            dense_limit=args.dense_limit,
            warmup_fraction=args.data_warmup or 0.0,
        ), " per dim"
    from manifold_aps.flows import FlowConfig
    from manifold_aps.posterior.aps import APSConfig

    return APSConfig(
        flow=FlowConfig(
            couplings=args.couplings, width=args.width, num_modes=args.modes, coupling=args.coupling
        ),
        cg_iterations=args.cg_iterations,
        dense_limit=args.dense_limit,
        variance_modes=args.variance_modes,
        warmup_fraction=0.2 if args.data_warmup is None else args.data_warmup,
    ), " nats/dim"


def _distill(args: argparse.Namespace) -> int:
    _refuse_to_replace_run(args)
    import torch

    from manifold_aps.posterior.engines import train_engine

    torch.set_num_threads(max(1, args.threads))
    settings, unit = _distill_settings(args)
    _, result = train_engine(
        args.engine,
        _distill_data(args),
        args.prior,
        args.out,
        _train_config(args),
        settings=settings,
        masks=args.masks,
        noise_std=args.noise_std,
        anchor=args.anchor,
        anchor_samples=args.anchor_samples,
        resume=args.resume,
        progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"step {result.step}: loss {result.loss:.4f}{unit}, {result.seconds:.0f} s; "
            f"checkpoint {result.checkpoint}"
        )
    return 0


def _sample(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from manifold_aps.datasets import SignalsNotStored, build_prior_dataset, dataset_names
    from manifold_aps.posterior.distill import held_out_observations
    from manifold_aps.posterior.engines import load_trained_engine
    from manifold_aps.training import checkpoint_domain, load_checkpoint

    torch.set_num_threads(max(1, args.threads))
    _, engine, ds, _ = load_trained_engine(args.checkpoint)
    if isinstance(ds.source, SignalsNotStored):  # held-out signals come from the dataset itself
        if ds.name not in dataset_names():
            raise ValueError(
                f"{args.checkpoint} was trained on {ds.name!r}, not a registered dataset: "
                "`sample` draws held-out signals from a registered one; "
                "give your own observations to `impute` instead"
            )
        ds = build_prior_dataset(ds.name)
        checkpoint_domain(load_checkpoint(args.checkpoint), args.checkpoint, ds.domain)
    batch = held_out_observations(
        ds, engine.noise, args.observations, masks=args.masks or "random", seed=args.seed
    )
    op = batch.operator(ds.domain)
    start = time.perf_counter()
    samples = engine.sample(batch.y, op, args.n, rng=torch.Generator().manual_seed(args.seed + 1))
    per_sample = (time.perf_counter() - start) / (args.n * args.observations)
    np.savez_compressed(
        args.out,
        y=batch.y.numpy(),
        mask=batch.mask.numpy(),
        truth=batch.truth.numpy(),
        samples=samples.numpy(),
        mean=samples.mean(0).numpy(),
        std=samples.std(0).numpy(),
        seconds_per_sample=per_sample,
    )
    print(
        f"wrote {args.out}: {args.n} samples for each of {args.observations} observations, "
        f"{1e3 * per_sample:.2f} ms per sample"
    )
    return 0


def _add_training_options(
    p: argparse.ArgumentParser, steps: int, lr: float, ema: float, validate_every: int
) -> None:
    """Add the `TrainConfig` options and --resume/--overwrite to `p`.

    The options default to None: `_train_config` fills them in.
    """
    batch, warm = (16, 50) if ema == 0 else (32, 100)
    p.set_defaults(
        training_defaults={
            "steps": steps,
            "batch_size": batch,
            "lr": lr,
            "warmup": warm,
            "ema_decay": ema,
            "seed": 0,
            "checkpoint_every": 250,
            "validate_every": validate_every,
            "log_every": 25,
            "device": "cpu",
        }
    )
    keep = "; with --resume: the checkpoint's"
    p.add_argument(
        "--steps", type=_positive_int, help=f"optimisation steps in total (default: {steps})"
    )
    p.add_argument(
        "--batch-size", type=_positive_int, help=f"global batch size (default: {batch}{keep})"
    )
    p.add_argument(
        "--lr", type=_positive_float, help=f"peak Adam learning rate (default: {lr}{keep})"
    )
    p.add_argument(
        "--warmup",
        type=int,
        help=f"learning-rate warm-up steps (default: {warm}, at most --steps{keep})",
    )
    p.add_argument(
        "--ema", type=float, help=f"EMA decay of the weights, 0 for none (default: {ema}{keep})"
    )
    p.add_argument(
        "--seed", type=int, help=f"seed of initialisation and batches (default: 0{keep})"
    )
    p.add_argument(
        "--checkpoint-every", type=_positive_int, help="steps between checkpoints (default: 250)"
    )
    p.add_argument("--log-every", type=_positive_int, help="steps between log rows (default: 25)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per process (default: 1)"
    )
    again = p.add_mutually_exclusive_group()
    again.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoint.pt if it exists, with its settings (a different "
        "seed, batch size, learning rate, warm-up or EMA is refused)",
    )
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUT already holds (checkpoint.pt, log.csv, train.json); "
        "without it (or --resume) such an OUT is refused",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `manifold-aps` (one sub-command per task)."""
    from climate.model import VARIANCE_SCALES
    from manifold_aps.posterior.engines import DAPS_COVARIANCES, distilled_engines, engine_names

    parser = _Parser(
        prog="manifold-aps",
        description="Posterior sampling for inverse problems on spheres, meshes and climate grids.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="impute a real ERA5 field with the exact Gaussian posterior",
        description=DEMO_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--input", help="ERA5 netCDF/GRIB/zarr file (default: the shipped UK t2m sample)"
    )
    demo.add_argument("--var", default="t2m", help="variable to impute (default: t2m)")
    demo.add_argument(
        "--mask",
        default="random",
        choices=["random", "stations", "swath", "box"],
        help="how cells are hidden (default: random)",
    )
    demo.add_argument(
        "--missing",
        type=float,
        default=0.7,
        help="fraction of cells hidden for --mask random/stations (default: 0.7)",
    )
    demo.add_argument(
        "--times", type=int, default=8, help="number of held-out test hours (default: 8)"
    )
    demo.add_argument(
        "--samples", type=int, default=16, help="posterior samples per field (default: 16)"
    )
    demo.add_argument(
        "--noise-std",
        type=_positive_float,
        default=0.1,
        help="observation error std assumed by the likelihood, variable units (default: 0.1)",
    )
    demo.add_argument(
        "--train-fraction",
        type=float,
        default=0.75,
        help="leading fraction of time steps used to fit the prior (default: 0.75)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of masks and samples (default: 0)")
    demo.add_argument(
        "--output-dir", default="demo_output", help="output folder (default: demo_output)"
    )
    demo.add_argument("--no-plot", action="store_true", help="skip the PNG maps")
    demo.add_argument(
        "--learned-checkpoint",
        metavar="FILE",
        help="score this distill checkpoint beside the Gaussian (default: the shipped APS flow, "
        "on the shipped sample)",
    )
    demo.add_argument(
        "--no-learned", action="store_true", help="only the Gaussian (skip the learned engine)"
    )
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    demo.set_defaults(func=_demo)

    im = sub.add_parser(
        "impute",
        help="impute hidden cells of a gridded field to a CF netCDF file",
        description=IMPUTE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    im.add_argument("--input", required=True, help="netCDF/GRIB/zarr file or glob of files")
    im.add_argument(
        "--var",
        nargs="+",
        default=["t2m"],
        metavar="VAR",
        help="variable to impute (default: t2m); several: jointly, by a checkpoint trained on "
        "them, in its order (e.g. --var t2m msl)",
    )
    im.add_argument(
        "--channels-from",
        metavar="DIM[=V1,V2,...]",
        help="the checkpoint's channels along DIM, as given to train-prior, e.g. level=500,850",
    )
    im.add_argument(
        "--skip-corrupt-grib",
        action="store_true",
        help="read a GRIB file with truncated/corrupted messages without them (default: refuse it)",
    )
    im.add_argument(
        "--mask",
        action="append",
        metavar="SPEC",
        help="cells to hide, see above; repeat to combine (default: nan)",
    )
    im.add_argument(
        "--engine",
        default="gaussian",
        choices=engine_names(),
        help="posterior engine (default: gaussian)",
    )
    im.add_argument(
        "--checkpoint", help="model file: --save-model output, train-prior or distill checkpoint"
    )
    im.add_argument(
        "--fit-period",
        metavar="START:END[,...]",
        help="times used to fit the gaussian engine, e.g. 2019-03-01:2019-03-24 or "
        "2019-03-01:2019-03-10,2019-03-20:2019-03-24 (see above)",
    )
    im.add_argument(
        "--period",
        metavar="START:END[,...]",
        help="times to impute: ranges or stamps, comma-separated, e.g. 2019-03-25,2019-03-28T12 "
        "(default: all)",
    )
    im.add_argument(
        "--select",
        action="append",
        metavar="DIM=VALUE",
        help="pick one value of an extra dimension, e.g. level=500 or number=0",
    )
    im.add_argument(
        "--region",
        metavar="S:N:W:E",
        help="crop the field to a latitude-longitude box first, e.g. 35:70:-15:40 (Europe)",
    )
    im.add_argument(
        "--coarsen",
        type=_positive_int,
        default=1,
        metavar="K",
        help="average the observed cells of KxK blocks first, e.g. 4 for a global 1 deg grid "
        "(default: 1)",
    )
    im.add_argument(
        "--output-grid",
        choices=["coarse", "native"],
        default="coarse",
        help="with --coarsen or --grid healpix: write the result on the grid imputed (the "
        "blocks or pixels), or on the input's (native: piecewise constant per block or pixel, the "
        "input's observed cells exact, std 0 there; --truth and --plot then on the input grid) "
        "(default: coarse)",
    )
    im.add_argument(
        "--grid",
        default="native",
        metavar="native|healpix:NSIDE",
        help="impute on the file's grid, or on HEALPix pixels of a global lat-lon field (each "
        "the area-weighted mean of its cells that hold a value; a pixel is observed where any "
        "of them is): the grid of a train-prior --grid healpix:NSIDE checkpoint; every --mask "
        "then acts on the pixel centres, the output is on them (default: native)",
    )
    im.add_argument(
        "--truth",
        metavar="FILE",
        help="score the imputation against FILE's values at the hidden cells (same variable and "
        "grid after --select/--region/--coarsen, every imputed time)",
    )
    im.add_argument(
        "--variance-scale",
        choices=list(VARIANCE_SCALES),
        default=None,
        help="gaussian engine: re-estimate how variable each field's anomalies are from its "
        "observed values (observed), keep the training fields' covariance (fitted), or re-fit "
        "range, std and nugget to each field's observed values (refit: one fit per field, ~20-30 s "
        "at 1 degree; for large contiguous gaps such as swaths, where one scale leaves the "
        "intervals too narrow far from the data) (default: observed for a model fitted "
        "here, a saved model's own setting)",
    )
    im.add_argument("--save-model", metavar="PATH", help="save the fitted gaussian model for reuse")
    im.add_argument(
        "--samples",
        type=_positive_int,
        default=16,
        help="posterior samples per field; at least 2 except for the gaussian engine, whose std is "
        "exact (default: 16)",
    )
    im.add_argument(
        "--quantiles",
        type=float,
        nargs="*",
        metavar="Q",
        help="also write per-cell quantiles of the samples, e.g. 0.05 0.95",
    )
    im.add_argument(
        "--seed", type=int, default=0, help="seed of random masks and samples (default: 0)"
    )
    im.add_argument(
        "--noise-std",
        type=_positive_float,
        default=None,
        help="observation error std of the likelihood, variable units (default: 0.1 for a gaussian "
        "engine fitted here and for dps/daps; a saved gaussian model's own value, which this "
        "replaces, its prior unchanged; aps/implicit/avi keep the value they were distilled for)",
    )
    im.add_argument(
        "--chunk-size",
        type=_positive_int,
        default=None,
        help="time steps per block; memory grows with it (default: up to 24)",
    )
    im.add_argument(
        "--dps-steps",
        type=_positive_int,
        default=1000,
        help="DPS reverse-diffusion steps (default: 1000)",
    )
    im.add_argument("--guidance", type=_guidance, default="auto", help=GUIDANCE_HELP)
    im.add_argument("--daps-steps", type=_daps_steps, default=20, help=DAPS_STEPS_HELP)
    im.add_argument(
        "--daps-covariance",
        choices=list(DAPS_COVARIANCES),
        default="white",
        help=DAPS_COVARIANCE_HELP,
    )
    im.add_argument(
        "--output",
        required=True,
        help="output netCDF file (written atomically; never one of the inputs or the checkpoint)",
    )
    im.add_argument(
        "--plot",
        help="PNG map of the first imputed time step (or --plot-time); not an input or --output",
    )
    im.add_argument("--plot-time", help="time step to map, e.g. 2019-03-28T12")
    im.add_argument(
        "--attribution",
        metavar="TEXT",
        help="credit of the data, written into the output's attributes and under the --plot map "
        "(default: the input file's own licence/institution attributes; none if it has none), "
        "e.g. 'Contains modified Copernicus Climate Change Service information 2024'",
    )
    im.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    im.add_argument("--quiet", action="store_true", help="no progress bar")
    im.add_argument(
        "--scheduler",
        metavar="ADDRESS|local:N",
        help="run the blocks of time steps on a dask cluster: local:N starts N single-threaded "
        "worker processes here, an address (tcp://host:8786) joins a running `dask scheduler`; "
        "the output is the same bit for bit (default: this process)",
    )
    im.set_defaults(func=_impute)

    tp = sub.add_parser(
        "train-prior",
        help="train a diffusion prior on a dataset",
        description=TRAIN_PRIOR_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tp.add_argument("--dataset", help="dataset name (see above)")
    tp.add_argument(
        "--input", metavar="FILE", help="your gridded field: netCDF, GRIB or zarr (with --var)"
    )
    tp.add_argument(
        "--var",
        nargs="+",
        metavar="VAR",
        help="--input: the variable to train on; several (same grid): one channel each, in this "
        "order, e.g. --var t2m msl",
    )
    tp.add_argument(
        "--channels-from",
        metavar="DIM[=V1,V2,...]",
        help="--input: each listed value of DIM a channel (of each --var), e.g. level=500,850; "
        "DIM alone: all of its values",
    )
    tp.add_argument(
        "--select",
        nargs="+",
        metavar="DIM=VALUE",
        help="--input: fix other dimensions, e.g. level=500",
    )
    tp.add_argument(
        "--fit-period",
        metavar="START:END[,...]",
        help="--input: the times trained on (default all)",
    )
    tp.add_argument(
        "--coarsen",
        type=_positive_int,
        default=1,
        help="--input: average KxK blocks first (default 1)",
    )
    tp.add_argument(
        "--augment",
        choices=["auto", "longitude", "so3", "none"],
        default="auto",
        help="--input/--healpix: random rotations about the polar axis (longitude: global evenly "
        "spaced lat-lon grids), random rotations in SO(3) (so3: full-sky HEALPix), none, or auto: "
        "the one that is exact for the domain, else none (default: auto; see above)",
    )
    tp.add_argument(
        "--sample-dim",
        default="time",
        metavar="DIM",
        help="--input: the dimension whose entries are the training fields, e.g. month or number "
        "(default: time)",
    )
    tp.add_argument(
        "--grid",
        default="native",
        metavar="native|healpix:NSIDE",
        help="--input: train on the file's own grid, or on HEALPix pixels of a global lat-lon "
        "field (each pixel the area-weighted mean of its cells; SO(3) rotations with --augment "
        "auto); impute then takes the same --grid (default: native)",
    )
    tp.add_argument(
        "--mesh", metavar="FILE", help="your mesh: OFF, OBJ, PLY or STL (with --signals)"
    )
    tp.add_argument(
        "--signals",
        metavar="FILE",
        help="--mesh: an .npz with signals (S, V) [, positions (V, 3), units]",
    )
    tp.add_argument(
        "--healpix",
        nargs="+",
        metavar="MAP.fits",
        help="your HEALPix maps: FITS files, every column a map, all of one nside",
    )
    tp.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="--input/--mesh/--healpix: the last share of steps/signals/maps held out for "
        "validation (default 0.1)",
    )
    tp.add_argument(
        "--out", required=True, help="output folder (checkpoint.pt, log.csv, train.json)"
    )
    _add_training_options(tp, steps=2000, lr=2e-3, ema=0.999, validate_every=250)
    tp.add_argument(
        "--channels",
        type=int,
        nargs="+",
        default=[16, 32, 64],
        help="feature channels per U-Net level, finest first (default: 16 32 64)",
    )
    tp.add_argument(
        "--modes",
        type=int,
        default=64,
        help="Laplace-Beltrami modes of the spectral filters (default: 64)",
    )
    tp.add_argument(
        "--validate-every",
        type=int,
        help="steps between validation losses, 0 for none (default: 250)",
    )
    tp.set_defaults(func=_train_prior)

    ds = sub.add_parser(
        "distill",
        help="distil an amortized posterior sampler (conditional flow) from a prior",
        description=DISTILL_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ds.add_argument(
        "--engine",
        default="aps",
        choices=distilled_engines(),
        help="aps: conditional flow by reverse KL; implicit: one-pass generator by integral KL; "
        "avi: amortized inner VI for a guided few-step sampler (default: aps)",
    )
    ds.add_argument(
        "--dataset",
        help="dataset name (as for train-prior); default: the prior's own data (the "
        "named dataset or the files it was trained on, checked by SHA-256)",
    )
    ds.add_argument(
        "--prior",
        required=True,
        help='"exact" (gaussian-* datasets, with --dataset) or a prior checkpoint',
    )
    ds.add_argument("--out", required=True, help="output folder")
    ds.add_argument(
        "--masks",
        default="random",
        help="random | caps | stations | swaths | mixture (default: random)",
    )
    ds.add_argument(
        "--noise-std",
        type=_positive_float,
        default=0.1,
        help="observation noise std, signal units (default: 0.1)",
    )
    ds.add_argument("--couplings", type=int, default=4, help="affine coupling layers (default: 4)")
    ds.add_argument(
        "--coupling",
        choices=["graph", "spectral"],
        default="graph",
        help="aps: graph-network conditioners per coupling (graph), or conditioners on the "
        "untouched nodes' lowest Laplace-Beltrami coefficients, the graph network run once per "
        "observation (spectral: several times cheaper per sample) (default: graph)",
    )
    ds.add_argument("--width", type=int, default=32, help="conditioner channels (default: 32)")
    ds.add_argument(
        "--modes",
        type=int,
        default=64,
        help="Laplace-Beltrami modes of spectral layers (default: 64)",
    )
    ds.add_argument(
        "--cg-iterations",
        type=int,
        default=30,
        help="iterations of the first estimate (default: 30)",
    )
    ds.add_argument(
        "--dense-limit",
        type=int,
        default=2000,
        metavar="N",
        help="aps/implicit: domains of at most N nodes take the dense first estimate (a Cholesky "
        "factor per observation: an exact Gaussian anchor, but cubic in the nodes: 10-20 s per "
        "training step at 1617 nodes on one CPU thread); above N the conjugate-gradient one "
        "(default: 2000)",
    )
    ds.add_argument(
        "--anchor",
        choices=["auto", "prior-samples", "signals"],
        default="auto",
        help="aps/implicit: where the first estimate's per-mode prior variances come from: 128 "
        "reverse-SDE samples of the prior (25,600 network evaluations: about 25 min at 12,288 "
        "nodes on one CPU thread), or 128 training signals standardised by the prior (seconds); "
        "auto: signals above 5,000 nodes (ANCHOR_SAMPLING_LIMIT), samples below "
        "(default: auto)",
    )
    ds.add_argument(
        "--anchor-samples",
        type=int,
        default=128,
        metavar="N",
        help="aps/implicit: prior samples or training signals the anchor's variances are "
        "estimated from (default: 128; the prior samples' cost is linear in N)",
    )
    ds.add_argument(
        "--variance-modes",
        type=int,
        default=256,
        metavar="K",
        help="aps: Laplace-Beltrami modes of the first estimate's prior variance; their "
        "eigenvectors are saved in the checkpoint (N x K float64), so fewer make a smaller model "
        "(default: 256)",
    )
    ds.add_argument(
        "--data-warmup",
        type=float,
        default=None,
        help="fraction of training over which the likelihood weight rises to 1 "
        "(default: 0.2 for aps, 0 for implicit)",
    )
    _add_training_options(ds, steps=2000, lr=2e-3, ema=0.0, validate_every=0)
    ds.set_defaults(func=_distill)

    rc = sub.add_parser(
        "reconstruct",
        help="reconstruct signals on your mesh or HEALPix map from their observed values",
        description=RECONSTRUCT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from manifold_aps.reconstruct import reconstruction_engines

    rc.add_argument(
        "--mesh", metavar="FILE", help="the mesh: OFF, OBJ, PLY or STL (with --signals)"
    )
    rc.add_argument(
        "--signals", metavar="FILE", help="an .npz with signals (S, V), NaN = unobserved"
    )
    rc.add_argument(
        "--observed",
        metavar="FILE",
        help="an .npz with a boolean observed (S, V) (default: not NaN)",
    )
    rc.add_argument(
        "--healpix",
        metavar="MAP.fits",
        help="a HEALPix map instead of a mesh (RING/NESTED from its header; UNSEEN = unobserved)",
    )
    rc.add_argument(
        "--mask",
        metavar="random:F|MASK.fits",
        help="random:F also hides a share F of the observed values and scores on them; with "
        "--healpix, a mask map of the same nside (1 = observed)",
    )
    rc.add_argument(
        "--engine",
        default="gaussian",
        choices=reconstruction_engines(),
        help="see above (default: gaussian)",
    )
    rc.add_argument(
        "--checkpoint",
        help="dps/daps: a train-prior checkpoint; aps/implicit/avi: a distill checkpoint",
    )
    rc.add_argument(
        "--samples",
        type=_positive_int,
        default=16,
        help="posterior samples per signal (default: 16)",
    )
    rc.add_argument(
        "--seed", type=int, default=0, help="seed of --mask and of the samples (default: 0)"
    )
    rc.add_argument(
        "--alpha",
        type=int,
        choices=[1, 2, 3],
        default=2,
        help="gaussian: GMRF smoothness order, nu = alpha - 1 (default: 2)",
    )
    rc.add_argument(
        "--noise-std",
        type=_positive_float,
        default=0.1,
        help="dps/daps: observation noise std (default: 0.1)",
    )
    rc.add_argument(
        "--dps-steps",
        type=_positive_int,
        default=1000,
        help="dps: reverse-diffusion steps (default: 1000)",
    )
    rc.add_argument("--guidance", type=_guidance, default="auto", help="dps: " + GUIDANCE_HELP)
    rc.add_argument("--daps-steps", type=_daps_steps, default=20, help="daps: " + DAPS_STEPS_HELP)
    rc.add_argument(
        "--daps-covariance",
        choices=list(DAPS_COVARIANCES),
        default="white",
        help="daps: " + DAPS_COVARIANCE_HELP,
    )
    rc.add_argument(
        "--output",
        required=True,
        help="output .npz (a --healpix map: .fits too, columns MEAN, STD, OBSERVED)",
    )
    rc.add_argument(
        "--ply", metavar="FILE", help="also write a PLY with the mean and std as vertex attributes"
    )
    rc.add_argument("--plot", metavar="FILE", help="also write a PNG of the first signal")
    rc.add_argument("--quiet", action="store_true", help="no progress bar")
    rc.set_defaults(func=_reconstruct)

    ex = sub.add_parser(
        "export",
        help="an inference copy of a checkpoint (weights only, for sharing or shipping)",
        description=EXPORT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("checkpoint", help="a train-prior or distill checkpoint.pt")
    ex.add_argument("--out", required=True, help="the copy to write (.pt)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    ex.set_defaults(func=_export)

    sp = sub.add_parser(
        "sample",
        help="posterior samples from a distilled engine for held-out observations",
        description=SAMPLE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sp.add_argument("--checkpoint", required=True, help="a distill checkpoint (any --engine)")
    sp.add_argument("--out", required=True, help="output .npz file")
    sp.add_argument(
        "--n",
        type=_ensemble_size,
        default=100,
        help="samples per observation, at least 2: the file's std is theirs (default: 100)",
    )
    sp.add_argument(
        "--observations", type=_positive_int, default=4, help="held-out observations (default: 4)"
    )
    sp.add_argument(
        "--masks", default=None, help="mask family of the observations (default: random)"
    )
    sp.add_argument(
        "--seed", type=int, default=0, help="seed of observations and samples (default: 0)"
    )
    sp.add_argument(
        "--threads", type=_positive_int, default=1, help="torch CPU threads (default: 1)"
    )
    sp.set_defaults(func=_sample)
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
    except (
        ValueError,
        KeyError,
        RuntimeError,
    ) as err:  # user input; CheckpointError is a ValueError
        print(f"manifold-aps {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file that cannot be read or written: name it
        files = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        reason = err.strerror or str(err)
        print(
            f"manifold-aps {args.command}: error: {files + ': ' if files else ''}{reason}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
