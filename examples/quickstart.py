"""Quickstart: fill in 80 % of a global temperature map on the sphere, with uncertainty.

The smallest end-to-end use of manifold-aps on real data:

1. ERA5 2 m temperature, global 1°, 25-31 March 2026, on a HEALPix sphere (nside 16, 3072
   equal-area pixels): `build_prior_dataset("era5-global")`, 16 training and 6 test fields;
2. the training fields are standardised (minus their mean field, over one overall standard
   deviation) and a Whittle-Matérn Gaussian prior is fitted to them by maximum likelihood
   (`fit_matern`: variance, length scale, smoothness and a nugget);
3. each test field loses 80 % of its pixels at random; the rest is observed with Gaussian noise
   of 0.1 K;
4. the exact posterior (`ExactGaussianPosterior`) gives the mean, the pointwise standard
   deviation and samples;
5. scores over the hidden pixels, area-weighted, in kelvin (`posterior_scores`), next to the
   training mean field and nearest-observed-pixel filling; a Mollweide figure (`plot_signals`).

Run from the repository root (needs the shared data, `$MANIFOLD_APS_DATA`, default
`../shared/data`)::

    .venv/bin/python examples/quickstart.py           # nside 16, 6 test fields, 64 samples each
    .venv/bin/python examples/quickstart.py --quick   # nside 8 (768 pixels), 2 fields, 16 samples

Measured on the project's 2-core CPU with two trainings running beside it, one thread, with the
Laplace-Beltrami eigenbasis of the sphere already in the disk cache (its first computation adds
40 s once): 15 s wall (13 s of CPU) in full, 4 s with `--quick`. Writes `quickstart.png` and
`scores.json` to `--out` and prints the scores.
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
    build_prior_dataset,
    fit_matern,
    plot_signals,
    posterior_scores,
    weighted_rmse,
)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--missing", type=float, default=0.8, help="share of pixels hidden (default: 0.8)"
    )
    p.add_argument(
        "--noise-std", type=float, default=0.1, help="observation error, K (default: 0.1)"
    )
    p.add_argument(
        "--samples", type=int, default=64, help="posterior samples per test field (default: 64)"
    )
    p.add_argument(
        "--nside",
        type=int,
        choices=[8, 16],
        default=16,
        help="HEALPix resolution; 8 averages the nside-16 fields (default: 16)",
    )
    p.add_argument(
        "--quick", action="store_true", help="nside 8, 2 test fields and 16 samples (a few seconds)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the masks, noise and samples (default: 0)"
    )
    p.add_argument(
        "--out", type=Path, default=Path("example_output/quickstart"), help="output folder"
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()

    try:
        ds = build_prior_dataset("era5-global")  # train (16, N, 1), test (6, N, 1), kelvin
    except FileNotFoundError as err:
        sys.exit(f"quickstart needs the shared data ($MANIFOLD_APS_DATA): {err}")
    domain, train, test = ds.domain, ds.source.train.double(), ds.test.double()
    nside, n_test, n_samples = (8, 2, 16) if args.quick else (args.nside, len(test), args.samples)
    if nside != domain.nside:  # average 4 pixels into 1 (both RING order)
        domain = HealpixSphere(nside)
        train, test = (
            torch.from_numpy(healpy.ud_grade(x[..., 0].numpy(), nside))[..., None]
            for x in (train, test)
        )
    truth = test[:n_test]

    # Standardise with training statistics only, then fit the prior of the standardised fields.
    mean_field = train.mean(0)  # (N, 1)
    scale = float((train - mean_field).std())
    prior = fit_matern(domain, (train - mean_field) / scale, fit_nugget=True).prior
    print(
        f"{domain}: Matérn prior fitted on {len(train)} fields: "
        f"std {prior.variance**0.5 * scale:.2f} K, length scale {prior.length_scale * 6371:.0f} "
        f"km, smoothness {prior.smoothness:.2f}, nugget std {prior.nugget**0.5 * scale:.2f} K"
    )

    # Observe 20 % of the pixels of each test field, with noise (in standardised units).
    rng = torch.Generator().manual_seed(args.seed)
    masks = RandomMaskGenerator(domain, missing=args.missing)
    observed = masks.step(n_test, seed=args.seed)["mask"]  # (B, N, 1), True = observed
    operator = Mask(domain, observed)
    noise = GaussianNoise(args.noise_std / scale)
    y = noise(operator((truth - mean_field) / scale), operator.range_mask, rng=rng)

    # The exact posterior, back in kelvin.
    posterior = ExactGaussianPosterior(prior, noise).condition(y, operator)
    samples = posterior.sample(n_samples, rng=rng) * scale + mean_field  # (S, B, N, 1)
    mean, std = posterior.mean * scale + mean_field, posterior.std * scale
    nearest = NearestNeighbour(domain).estimate(y, operator) * scale + mean_field

    hidden, weight = ~observed, domain.mass
    scores = posterior_scores(samples, truth, weight, hidden, mean=mean)
    training_mean = mean_field.expand_as(truth)
    scores["rmse_training_mean_field"] = float(weighted_rmse(training_mean, truth, weight, hidden))
    scores["rmse_nearest_neighbour"] = float(weighted_rmse(nearest, truth, weight, hidden))
    print(
        f"{n_test} test fields, {100 * args.missing:.0f} % of pixels hidden, {n_samples} "
        "samples each; scores over the hidden pixels, area-weighted:"
    )
    print(f"  RMSE of the posterior mean      {scores['rmse_mean']:.3f} K")
    print(f"  RMSE of the training mean field {scores['rmse_training_mean_field']:.3f} K")
    print(f"  RMSE of nearest observed pixel  {scores['rmse_nearest_neighbour']:.3f} K")
    print(f"  CRPS                            {scores['crps']:.3f} K")
    print(f"  90 % interval coverage          {100 * scores['coverage_90']:.1f} %")

    first, shown = truth[0, :, 0], f"observed ({100 * (1 - args.missing):.0f} %)"
    png = plot_signals(
        domain,
        [
            ("truth", first),
            (shown, first.masked_fill(hidden[0, :, 0], torch.nan)),
            ("posterior mean", mean[0, :, 0]),
            ("posterior std", std[0, :, 0]),
        ],
        args.out / "quickstart.png",
        shared_scale=[True, True, True, False],
        cmap="RdYlBu_r",
        suptitle=f"ERA5 t2m, HEALPix nside {nside}, {100 * args.missing:.0f} % hidden: exact "
        "Gaussian posterior",
        units="K",
        coastlines=True,
        attribution="ERA5 (CC-BY-4.0): contains modified Copernicus Climate Change Service "
        "information",
    )
    (args.out / "scores.json").write_text(json.dumps(scores, indent=1))
    print(f"wrote {png} and scores.json ({time.perf_counter() - start:.1f} s)")
    return scores


if __name__ == "__main__":
    main()
