"""Quickstart: fill in 80 % of a global temperature map on the sphere, with uncertainty.

The smallest end-to-end use of manifold-aps on real data:

1. ERA5 2 m temperature, global 1°, 25-31 March 2026, regridded to a HEALPix sphere (nside 16,
   3072 equal-area pixels) by `manifold_aps.datasets.build_prior_dataset("era5-global")`: 16
   training fields, 6 held-out test fields;
2. the training fields are standardised (minus their mean field, divided by one overall standard
   deviation) and a Whittle-Matérn Gaussian prior is fitted to them by maximum likelihood
   (`fit_matern`, variance, length scale, smoothness and a nugget);
3. each test field loses 80 % of its pixels at random; the rest is observed with Gaussian noise
   of 0.1 K;
4. the exact posterior (`ExactGaussianPosterior`) gives the mean, the pointwise standard
   deviation and samples;
5. scores over the hidden pixels, area-weighted, in kelvin: RMSE of the posterior mean (next to
   the training mean field and nearest-observed-pixel filling), fair CRPS of the samples and
   coverage of their central 90 % interval; a Mollweide figure (truth / observed / mean / std).

Run from the repository root (needs the shared data, `$MANIFOLD_APS_DATA`, default
`../shared/data`)::

    .venv/bin/python examples/quickstart.py                # nside 16, all 6 test fields, 64 samples each
    .venv/bin/python examples/quickstart.py --quick        # nside 8 (768 pixels), 2 test fields, 16 samples

Measured on the project's 2-core CPU with two trainings running beside it, one thread, with the
Laplace-Beltrami eigenbasis of the sphere already in the disk cache (its first computation adds
40 s once): 15 s wall (13 s of CPU) in full, 4 s with `--quick`. Writes `example_output/quickstart/quickstart.png` and `scores.json` and prints the scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import healpy
import torch

from manifold_aps import (
    ExactGaussianPosterior,
    GaussianNoise,
    HealpixSphere,
    Mask,
    NearestNeighbour,
    RandomMaskGenerator,
    crps_ensemble,
    fit_matern,
    interval_coverage,
    weighted_rmse,
)
from manifold_aps.datasets import build_prior_dataset
from manifold_aps.metrics import central_interval
from manifold_aps.plotting import plot_signals


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--missing", type=float, default=0.8, help="fraction of pixels hidden (default: 0.8)")
    parser.add_argument("--noise-std", type=float, default=0.1, help="observation error in kelvin (default: 0.1)")
    parser.add_argument("--samples", type=int, default=64, help="posterior samples per test field (default: 64)")
    parser.add_argument("--nside", type=int, choices=[8, 16], default=16,
                        help="HEALPix resolution; 8 averages the nside-16 fields with healpy.ud_grade (default: 16)")
    parser.add_argument("--quick", action="store_true", help="nside 8, 2 test fields and 16 samples (a few seconds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks, noise and samples (default: 0)")
    parser.add_argument("--out", type=Path, default=Path("example_output/quickstart"),
                        help="output folder (default: example_output/quickstart)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    try:
        ds = build_prior_dataset("era5-global")  # HEALPix nside 16; train (16, N, 1), test (6, N, 1) in K
    except FileNotFoundError as err:
        sys.exit(f"quickstart needs the shared data ($MANIFOLD_APS_DATA, default ../shared/data): {err}")
    domain, train, test = ds.domain, ds.source.train.double(), ds.test.double()
    nside, n_test, n_samples = (8, 2, 16) if args.quick else (args.nside, test.shape[0], args.samples)
    if nside != domain.nside:  # average 4 pixels into 1 (both RING order)
        domain = HealpixSphere(nside)
        train, test = (torch.from_numpy(healpy.ud_grade(x[..., 0].numpy(), nside))[..., None] for x in (train, test))
    weight = domain.mass
    truth = test[:n_test]

    # Standardise with training statistics only, then fit the prior of the standardised fields.
    mean_field = train.mean(0)  # (N, 1)
    scale = float((train - mean_field).std())
    fit = fit_matern(domain, (train - mean_field) / scale, fit_nugget=True)
    prior = fit.prior
    print(f"{domain}: Matérn prior fitted on {train.shape[0]} fields: std {prior.variance ** 0.5 * scale:.2f} K, "
          f"length scale {prior.length_scale * 6371:.0f} km, smoothness {prior.smoothness:.2f}, "
          f"nugget std {prior.nugget ** 0.5 * scale:.2f} K")

    # Observe 20 % of the pixels of each test field, with noise.
    rng = torch.Generator().manual_seed(args.seed)
    observed = RandomMaskGenerator(domain, missing=args.missing).step(n_test, seed=args.seed)["mask"]  # (B, N, 1)
    operator = Mask(domain, observed)
    noise = GaussianNoise(args.noise_std / scale)  # the same error in standardised units
    y = noise(operator((truth - mean_field) / scale), operator.range_mask, rng=rng)

    # The exact posterior, back in kelvin.
    posterior = ExactGaussianPosterior(prior, noise).condition(y, operator)
    samples = posterior.sample(n_samples, rng=rng) * scale + mean_field  # (S, B, N, 1)
    mean, std = posterior.mean * scale + mean_field, posterior.std * scale
    nearest = NearestNeighbour(domain).estimate(y, operator) * scale + mean_field

    hidden = ~observed
    lo, hi = central_interval(samples, 0.9)
    scores = {
        "rmse_posterior_mean": float(weighted_rmse(mean, truth, weight, hidden)),
        "rmse_training_mean_field": float(weighted_rmse(mean_field.expand_as(truth), truth, weight, hidden)),
        "rmse_nearest_neighbour": float(weighted_rmse(nearest, truth, weight, hidden)),
        "crps": float(crps_ensemble(samples, truth, weight, hidden)),
        "coverage_90": float(interval_coverage(lo, hi, truth, weight, hidden)),
    }
    print(f"{n_test} test fields, {100 * args.missing:.0f} % of pixels hidden, {n_samples} samples each; "
          f"scores over the hidden pixels, area-weighted:")
    print(f"  RMSE of the posterior mean     {scores['rmse_posterior_mean']:.3f} K")
    print(f"  RMSE of the training mean field {scores['rmse_training_mean_field']:.3f} K")
    print(f"  RMSE of nearest observed pixel {scores['rmse_nearest_neighbour']:.3f} K")
    print(f"  CRPS                           {scores['crps']:.3f} K")
    print(f"  90 % interval coverage         {100 * scores['coverage_90']:.1f} %")

    first = truth[0, :, 0]
    png = plot_signals(
        domain,
        [("truth [K]", first), (f"observed ({100 * (1 - args.missing):.0f} %)", first.masked_fill(hidden[0, :, 0], float("nan"))),
         ("posterior mean", mean[0, :, 0]), ("posterior std [K]", std[0, :, 0])],
        args.out / "quickstart.png",
        shared_scale=[True, True, True, False],
        cmap="RdYlBu_r",
        suptitle=f"ERA5 t2m on HEALPix nside {nside}: {100 * args.missing:.0f} % hidden, exact Gaussian posterior",
    )
    (args.out / "scores.json").write_text(json.dumps(scores, indent=1))
    print(f"wrote {png} and scores.json ({time.perf_counter() - start:.1f} s)")
    return scores


if __name__ == "__main__":
    main()
