"""Where MGDM (and so the LAVPS-style amortizer) loses spread on the exact Gaussian yardstick.

The amortized VI engine (`posterior/amortized_vi.py`) learns the inner VI of MGDM's Gibbs
conditional; on the Gaussian yardstick it covers 71 % of held-out truths with its 90 % intervals
(`results/amortized_vi_yardstick.csv`). This script separates the three approximations of the
sampler by replacing the inner VI with closed forms (possible because the prior is Gaussian: the
denoiser is affine, `D(z, s) = W_s z + b_s`, so the Gibbs conditional of `z_s` is Gaussian):

* `ddpm-chain`: nothing observed. The chain is then MGDM's DDPM bridges with the plug-in Tweedie
  estimate; its samples should follow the prior, and the yardstick is the prior itself;
* `exact-conditional`: the Gibbs conditional (bridge prior x DPS-style likelihood at the
  midpoint) sampled exactly, full covariance: what a perfect inner VI with a full-covariance
  family would give;
* `mean-field-optimum`: its mean-field optimum (exact mean, variances 1/diag(precision)): what a
  perfect diagonal inner VI (the family of MGDM and LAVPS) would give.

Same problem as `amortized_vi_yardstick.py` ("gaussian-healpix8", random masks 50-95 % missing,
noise 0.1, held-out observations of test signals) and the same scores, plus the sample std over
the exact std and the error of the sample mean in exact stds, split into observed and hidden
nodes. Writes results/mgdm_exactness.csv. Usage:
  python benchmarks/mgdm_exactness.py [--held-out 8] [--samples 128] [--grids 8 20 50]
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
from manifold_aps.posterior.distill import held_out_observations
from manifold_aps.posterior.gaussian import ExactGaussianPosterior
from manifold_aps.posterior.mgdm import MGDMProblem, StepContext, mgdm_drive, repeat_operator
from manifold_aps.priors.sampling import time_grid


class GaussianGibbsConditional:
    r"""Closed-form sampler of MGDM's Gibbs conditional for a `GaussianPrior` and a mask.

    The conditional of :math:`z_s` is :math:`N(m, sd^2 I)` tilted by
    :math:`\exp(-\|y - A(W_s z_s + b_s)\|^2/2\sigma^2)`: Gaussian with precision
    :math:`P = I/sd^2 + W_s^T A^T A W_s/\sigma^2`. `mean_field=True` keeps its mean and replaces
    the covariance by :math:`\mathrm{diag}(1/P_{ii})`, the optimum of a diagonal reverse-KL fit.

    Arguments:
        prior: the `GaussianPrior` (identity normalisation).
        operator: any mask on the domain (only to build the denoiser's helper problem).
        observed: observed nodes per observation `(B, N)` (bool).
        y: observations `(B, N)` (zero where hidden), physical units = standardised units.
        sigma: observation noise std.
        mean_field: see above.
        generator: source of the sampling noise.
    """

    def __init__(self, prior, operator, observed, y, sigma: float, *, mean_field: bool, generator):
        self.prior, self.operator, self.obs, self.y = prior, operator, observed.double(), y.double()
        self.sig2, self.mean_field, self.generator = sigma**2, mean_field, generator
        self._affine = {}

    def affine(self, s: torch.Tensor):
        """`(W (N, N), b (N,))` of the denoiser at time `s` (cached)."""
        key = float(s)
        if key not in self._affine:
            n = self.obs.shape[1]
            helper = MGDMProblem(
                self.prior, GaussianNoise(1.0), torch.zeros(self.obs.shape[0], n, 1), self.operator
            )
            eye = torch.eye(n, dtype=torch.float64)[:, :, None]
            b = helper.denoise(torch.zeros(1, n, 1, dtype=torch.float64), s)[0, :, 0]
            cols = helper.denoise(eye, s)[..., 0] - b  # row j: W e_j
            self._affine[key] = (cols.T.contiguous(), b)
        return self._affine[key]

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        """A draw `(B', N, 1)` of `z_s` from the conditional (or its mean-field fit) at `ctx.s`."""
        w, b0 = self.affine(ctx.s)
        m = ctx.mean.double()[..., 0]  # (B', N), sample-major copies of the B observations
        sd2 = float(ctx.std) ** 2
        n_obs, n = self.obs.shape
        out = torch.empty_like(m)
        eye = torch.eye(n, dtype=torch.float64)
        for b in range(n_obs):
            rows = slice(b, None, n_obs)
            aw = w * self.obs[b][:, None]
            prec = eye / sd2 + aw.T @ aw / self.sig2
            rhs = m[rows] / sd2 + ((self.y[b] - self.obs[b] * b0) @ aw) / self.sig2
            noise = torch.randn(rhs.shape, generator=self.generator, dtype=torch.float64)
            chol = torch.linalg.cholesky(prec)
            mu = torch.cholesky_solve(rhs.T, chol).T
            if self.mean_field:
                out[rows] = mu + noise / torch.diagonal(prec).sqrt()
            else:
                out[rows] = mu + torch.linalg.solve_triangular(chol.T, noise.T, upper=True).T
        return out.to(ctx.mean.dtype)[..., None]


def split_scores(x: torch.Tensor, exact, observed: torch.Tensor) -> dict:
    """Sample std / exact std and |mean error| / exact std (RMS), at observed and hidden nodes."""
    x = x.double()[..., 0]
    std = exact.std[..., 0]
    ratio = x.std(0) / std
    err = (x.mean(0) - exact.mean[..., 0]) / std
    out = {}
    for name, sel in (("observed", observed), ("hidden", ~observed)):
        if sel.any():
            out[f"std_ratio_{name}"] = float(ratio[sel].mean())
            out[f"mean_error_{name}"] = float(err[sel].pow(2).mean().sqrt())
        else:
            out[f"std_ratio_{name}"] = out[f"mean_error_{name}"] = float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="gaussian-healpix8")
    parser.add_argument("--held-out", type=int, default=8)
    parser.add_argument("--samples", type=int, default=128, help="samples per held-out observation")
    parser.add_argument("--grids", type=int, nargs="+", default=[8, 20, 50], help="grid sizes K")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = build_prior_dataset(args.dataset)
    prior, noise, n = ds.reference, GaussianNoise(0.1), ds.domain.num_nodes
    held = held_out_observations(ds, noise, args.held_out, masks="random", seed=2024)
    op = held.operator(ds.domain)
    observed = op.range_mask.expand(args.held_out, n, 1)[..., 0].bool()
    y = held.y.double()[..., 0] * observed
    cases = {  # name -> (observed nodes, noise of the yardstick, mean_field)
        # nothing observed: the yardstick is the prior (noise 1e6: posterior = prior to 1e-12)
        "ddpm-chain": (torch.zeros_like(observed), GaussianNoise(1e6), False),
        "exact-conditional": (observed, noise, False),
        "mean-field-optimum": (observed, noise, True),
    }
    rows = []
    for case, (obs, yard_noise, mean_field) in cases.items():
        exact = ExactGaussianPosterior(prior, yard_noise).condition(held.y.double(), op)
        for k in args.grids:
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(1)
            sampler = GaussianGibbsConditional(
                prior, op, obs, y * obs, noise.sigma, mean_field=mean_field, generator=g
            )
            batch = args.samples * args.held_out
            # the problem only denoises here (the conditional replaces the inner VI)
            problem = MGDMProblem(
                prior,
                noise,
                held.y.double().repeat(args.samples, 1, 1),
                repeat_operator(op, args.samples),
            )
            res = mgdm_drive(
                problem,
                time_grid(k - 1, 1e-3),
                (batch, n, 1),
                generator=g,
                dtype=torch.float64,
                conditional=sampler,
            )
            x = res.z0.reshape(args.samples, args.held_out, n, 1)
            row = {"case": case, "grid_K": k, "samples": args.samples, "held_out": args.held_out}
            row.update(
                {
                    key: round(v, 4)
                    for key, v in scores(x, exact, held.truth, ds.domain.mass).items()
                }
            )
            row.update({key: round(v, 4) for key, v in split_scores(x, exact, obs).items()})
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(row, flush=True)
            rows.append(row)
            write_csv(args.out / "mgdm_exactness.csv", rows)


if __name__ == "__main__":
    main()
