"""Where DAPS's error comes from: its white inner Gaussian, not its number of levels.

DAPS (`manifold_aps.posterior.daps`) draws x0 at each level from N(x0; D(z_t), r_t^2 I) times the
likelihood, a white surrogate of p(x0 | z_t). With the exact conditional p(x0 | z_t, y) every
level maps the posterior's marginal at t to the posterior's marginal at the next level, so the
sampler is exact at any number of levels K. For a Gaussian prior p(x0 | z_t) is known:
N(D(z_t), Cov) with Cov = U diag(c s^2 / (a^2 c + s^2)) U^T (C = U diag(c) U^T, a = alpha_t,
s = sigma_t). This script runs DAPS on the HEALPix-8 yardstick (the "gaussian-healpix8" dataset,
16 held-out random-mask observations, noise 0.1, `--samples` draws each, as
`amortized_vi_yardstick.py` scores them) with the white width and with that exact covariance
(a dense solve per observation and level), and exact posterior samples for the floor.

Writes results/daps_exact_covariance.csv. About 5 minutes on two CPU threads. Usage:
  python benchmarks/daps_exact_covariance.py [--samples 64]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from amortized_vi_yardstick import scores
from common import write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.daps import DAPS
from manifold_aps.posterior.distill import held_out_observations
from manifold_aps.posterior.gaussian import ExactGaussianPosterior

HERE = Path(__file__).resolve().parent
SHOWN = ("w2_per_dim", "mean_rmse_vs_exact", "std_ratio", "coverage_90")


class ExactCovarianceDAPS(DAPS):
    """DAPS whose inner Gaussian has the exact covariance of x0 given z_t (a `GaussianPrior`).

    Masks only. The level enters through the width: for the VP diffusion with `inner_scale` 1,
    r = sigma_t, alpha_t^2 = 1 - r^2.
    """

    def inner_step(self, y, operator, dtype, device):
        """The exact draw of x0 from N(x0; centre, Cov_t) p(y | x0), `(B, N, C)`, C = 1."""
        c = self.prior.cov_eigenvalues.double()
        u = self.prior.cov_eigenvectors.double()
        observed = operator.range_mask.expand_as(y)[..., 0].to(dtype)
        sigma2 = self.noise.sigma**2

        def draw(centre, r, eps_prior, eps_noise):
            s2, a2 = r**2, 1.0 - r**2
            var = c * s2 / (a2 * c + s2)  # eigenvalues of Cov[x0 | z_t]
            prior_precision = (u / var) @ u.T
            sample = centre[..., 0] + eps_prior[..., 0] @ (u * var.sqrt()).T
            data = observed * (y[..., 0] + self.noise.sigma * eps_noise[..., 0]) / sigma2
            rhs = sample @ prior_precision + data
            out = torch.stack(
                [
                    torch.linalg.solve(prior_precision + torch.diag(observed[b]) / sigma2, rhs[b])
                    for b in range(centre.shape[0])
                ]
            )
            return out[..., None], 0

        return draw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=64, help="samples per observation")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    ds = build_prior_dataset("gaussian-healpix8")
    noise = GaussianNoise(0.1)
    held = held_out_observations(ds, noise, 16, masks="random", seed=2024)
    op, prior = held.operator(ds.domain), ds.reference
    exact = ExactGaussianPosterior(prior, noise).condition(held.y.double(), op)
    rows = []
    runs = [("white width (the default)", DAPS, 20)]
    runs += [("exact Cov[x0 | z_t]", ExactCovarianceDAPS, k) for k in (5, 20)]
    for inner, cls, k in runs:
        t0 = time.perf_counter()
        sampler = cls(prior, noise, steps=k, max_batch=10**6)
        out = sampler.run(
            held.y.double(), op, args.samples, generator=torch.Generator().manual_seed(1)
        )
        seconds = time.perf_counter() - t0
        sc = scores(out.sample, exact, held.truth, ds.domain.mass)
        rows.append(
            {"sampler": "DAPS", "inner_gaussian": inner, "levels": k}
            | {key: round(sc[key], 4) for key in SHOWN}
            | {"seconds": round(seconds, 1), "samples": args.samples}
        )
        print(rows[-1], flush=True)
    floor = scores(
        exact.sample(args.samples, rng=torch.Generator().manual_seed(7)),
        exact,
        held.truth,
        ds.domain.mass,
    )
    rows.append(
        {"sampler": "exact posterior", "inner_gaussian": "", "levels": ""}
        | {key: round(floor[key], 4) for key in SHOWN}
        | {"seconds": "", "samples": args.samples}
    )
    print(rows[-1], flush=True)
    write_csv(args.out / "daps_exact_covariance.csv", rows)


if __name__ == "__main__":
    main()
