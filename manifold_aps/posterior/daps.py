r"""Decoupled annealing posterior sampling (DAPS, Zhang et al. CVPR 2025) with an exact inner step.

DPS nudges one reverse-diffusion trajectory towards the data with a gradient through the score
network at every step. DAPS decouples the two: at each of `K` noise levels
:math:`t_1 = 1 > \dots > t_K = t_\min` it

1. denoises the current state, :math:`\hat z_0 = D(z_{t_i}, t_i) = (z_{t_i} -
   \sigma_{t_i}\hat\epsilon)/\alpha_{t_i}` (one network evaluation; clamped to :math:`\pm`
   `clip` training stds, as DPS does),
2. draws :math:`z_0` from :math:`p(z_0 \mid z_{t_i}, y) \propto N(z_0; \hat z_0, r_i^2 I)\,
   p(y \mid \mathrm{denorm}(z_0))`, a Gaussian approximation of the prior's conditional times the
   likelihood, and
3. re-noises it to the next level, :math:`z_{t_{i+1}} = \alpha_{t_{i+1}} z_0 + \sigma_{t_{i+1}}
   \epsilon`.

The sample is :math:`\mathrm{denorm}(z_0)` of the last level. The published method runs Langevin
MCMC in step 2 with a hand-set step size; for the Gaussian likelihoods of this package
(:math:`y = A x + \sigma\epsilon` on the operator's observed entries, `A` linear) the conditional
is Gaussian and is sampled *exactly* by perturb-and-solve:

.. math::
    P = \frac{I}{r_i^2} + \frac{S A^T O A S}{\sigma^2}, \qquad
    z_0 = P^{-1}\Big[\frac{\hat z_0 + r_i\epsilon_1}{r_i^2}
        + \frac{S A^T O (y - A\mu + \sigma\epsilon_2)}{\sigma^2}\Big],

with `S`, :math:`\mu` the prior's per-channel std and mean (`denorm(z) = \mu + S z`), `O` the
operator's observed entries and :math:`A^T` its Euclidean transpose. For masks and subsampling
:math:`A^T O A` is diagonal and the solve is elementwise. For any other operator (a heat blur) on
a domain of at most `DENSE_MAX_NODES` nodes, :math:`A^T O A = V\Lambda V^T` is diagonalised
once per operator (dense, :math:`O(N^3)`; the operator's matrix from `operator_matrix`), and
every level is a few matrix products, with no application of the operator itself; on larger
domains it is a batched conjugate-gradient solve started at :math:`\hat z_0`. There are no
network gradients and no guidance step to tune: `K` network evaluations per sample, no backward
pass.

The conditional's width is :math:`r_i = \rho\,\sigma_{t_i}/\sqrt{\alpha_{t_i}^2 +
\sigma_{t_i}^2}`, the exact posterior std of :math:`z_0` given :math:`z_{t_i}` for a white
unit-variance prior (`inner_scale` :math:`\rho`, default 1), so it shrinks from about 1 to 0
along the annealing, as the paper's :math:`r_t = \sigma_t`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manifold_aps.operators import GaussianNoise, LinearOperator, Mask, Subsample
from manifold_aps.operators.linear import conjugate_gradient
from manifold_aps.posterior.dps import DPS_CLIP
from manifold_aps.posterior.gaussian import operator_matrix
from manifold_aps.posterior.inner_covariance import InnerCovariance
from manifold_aps.posterior.mgdm import check_grid, copy_chunks, prior_dtype
from manifold_aps.posterior.observations import check_observations
from manifold_aps.priors.gaussian import DENSE_MAX_NODES
from manifold_aps.priors.sampling import time_grid

__all__ = ["DAPS", "DAPSOutput", "INNER_SOLVERS"]

INNER_SOLVERS = ("auto", "cg")  # auto: elementwise, else dense eigenbasis, else CG


@dataclass
class DAPSOutput:
    """Result of `DAPS.run`.

    Attributes:
        sample: posterior samples `(n, B, N, C)` in physical units.
        nfe: score-network evaluations per sample (`K`).
        timesteps: the annealing levels `(K,)`, from 1 down to `t_min`.
        cg_iterations: the most conjugate-gradient iterations one inner solve took (0 without
            conjugate gradients).
        backward: backward passes through the network per sample: none.
    """

    sample: torch.Tensor
    nfe: int
    timesteps: torch.Tensor
    cg_iterations: int = 0
    backward: int = 0


def distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of `x` `(B, ...)` and the order that groups equal rows together.

    Returns `(rows (G, ...), order (B,))`: `x[order]` is `G` consecutive groups of `B / G`
    copies of `rows[0]`, `rows[1]`, ... When the groups differ in size, every row is its own:
    `(x, arange(B))`.
    """
    rows, inverse = torch.unique(x.flatten(1), dim=0, return_inverse=True)
    counts = torch.bincount(inverse)
    if not (counts == counts[0]).all():
        return x, torch.arange(x.shape[0], device=x.device)
    return rows.reshape(-1, *x.shape[1:]), torch.argsort(inverse, stable=True)


class DAPS:
    r"""DAPS sampler for any prior (`sde`, `eps`, `normalize`, `denormalize`) and linear operator.

    Arguments:
        prior: a `ScorePrior` or `GaussianPrior` (its `normalize` must be per-channel affine).
        noise: the observation noise (its sigma weighs the likelihood: temperature 1).
        steps: `K`, the annealing levels and network evaluations per sample, `>= 3`.
        t_min: the last level.
        inner_scale: :math:`\rho`, the factor on the inner conditional's width `r_i`, `> 0`.
        clip: the denoised estimate is clamped to `+-clip` standardised units (None: never).
        solver: the inner solve of non-diagonal operators: "auto" (the dense eigenbasis of
            :math:`A^T O A` up to `DENSE_MAX_NODES` nodes, conjugate gradients above) or "cg".
        cg_iter: conjugate-gradient iterations at most per inner solve.
        cg_tol: their relative residual tolerance.
        max_batch: signals per network pass (samples times observations); more run in chunks.
        inner_covariance: an `InnerCovariance` fitted for these levels
            (`fit_inner_covariance(prior, training_signals, steps=, t_min=)`): the inner Gaussian
            takes its covariance instead of :math:`r_i^2 I` (`inner_scale` still multiplies its
            std). None: white.

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import HealpixSphere
        >>> from manifold_aps.operators import GaussianNoise, Mask
        >>> from manifold_aps.priors import GaussianPrior
        >>> d = HealpixSphere(2)
        >>> A = Mask(d, torch.arange(48) % 3 == 0)
        >>> out = DAPS(GaussianPrior(d), GaussianNoise(0.1), steps=10).run(
        ...     A(torch.ones(2, 48, 1)), A, 4)
        >>> out.sample.shape, out.nfe
        (torch.Size([4, 2, 48, 1]), 10)
    """

    def __init__(
        self,
        prior,
        noise: GaussianNoise,
        *,
        steps: int = 20,
        t_min: float = 1e-3,
        inner_scale: float = 1.0,
        clip: float | None = DPS_CLIP,
        solver: str = "auto",
        cg_iter: int = 200,
        cg_tol: float = 1e-5,
        max_batch: int = 256,
        inner_covariance: InnerCovariance | None = None,
    ):
        check_grid(steps, t_min)
        if not inner_scale > 0:
            raise ValueError(f"inner_scale must be > 0, got {inner_scale}")
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip}")
        if not isinstance(cg_iter, int) or cg_iter < 1 or not cg_tol > 0:
            raise ValueError(
                f"cg_iter must be an integer >= 1 and cg_tol > 0, got {cg_iter}, {cg_tol}"
            )
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if solver not in INNER_SOLVERS:
            raise ValueError(f"solver must be one of {list(INNER_SOLVERS)}, got {solver!r}")
        self.solver = solver
        if inner_covariance is not None:
            levels = inner_covariance.timesteps.double()
            grid = time_grid(steps - 1, t_min)
            if levels.shape != grid.shape or not torch.allclose(levels, grid):
                raise ValueError(
                    f"the inner covariance was fitted for {levels.shape[0]} levels down to "
                    f"{float(levels[-1]):.3g}, this sampler has {steps} down to {t_min:.3g}: "
                    "fit it with the sampler's steps and t_min"
                )
        self.inner_covariance = inner_covariance
        self._eigen: dict[int, tuple] = {}  # id(operator) -> (operator, copies, float64 arrays)
        self.prior, self.noise = prior, noise
        self.steps, self.t_min, self.inner_scale, self.clip = steps, t_min, inner_scale, clip
        self.cg_iter, self.cg_tol, self.max_batch = cg_iter, cg_tol, max_batch

    def timesteps(self) -> torch.Tensor:
        """The annealing levels `(K,)`, float64, from 1 down to `t_min`."""
        return time_grid(self.steps - 1, self.t_min)

    def cost(self) -> tuple[int, int]:
        """`(forward, backward)` denoiser passes per sample: `(K, 0)`."""
        return self.steps, 0

    def inner_width(self, t: torch.Tensor) -> torch.Tensor:
        """`r` at level `t` (0-d float64): `inner_scale * sigma_t / sqrt(alpha_t^2 + sigma_t^2)`."""
        sde = self.prior.sde
        a, s = sde.scale_t(t), sde.sigma_t(t)
        return self.inner_scale * s / (a**2 + s**2).sqrt()

    def inner_variances(self, level: int, t: torch.Tensor) -> tuple:
        """The inner Gaussian at level index `level` (time `t`): `(w, c)` for `inner_step`'s draw.

        White: `(r^2, None)`; with an `inner_covariance`: its `rest[level]` `(C,)` and
        `variances[level]` `(C, m)`, times `inner_scale^2`.
        """
        if self.inner_covariance is None:
            return float(self.inner_width(t)) ** 2, None
        rho2 = self.inner_scale**2
        cov = self.inner_covariance
        return rho2 * cov.rest[level], rho2 * cov.variances[level]

    def conditional_sample(
        self,
        centre: torch.Tensor,
        r: float,
        y: torch.Tensor,
        operator: LinearOperator,
        eps_prior: torch.Tensor,
        eps_noise: torch.Tensor,
    ) -> tuple[torch.Tensor, int]:
        r"""One exact draw of :math:`z_0 \propto N(z_0; c, r^2 I)\,p(y \mid \mathrm{denorm}(z_0))`.

        Arguments:
            centre: `c`, `(B, N, C)` in standardised units.
            r: the width, standardised units.
            y: observations `(B, N_out, C)`, physical units.
            operator: their operator (batch matching `y`'s or shared).
            eps_prior: standard normal `(B, N, C)` (zeros give the conditional mean).
            eps_noise: standard normal `(B, N_out, C)` (zeros give the conditional mean).

        Returns:
            `(z0 (B, N, C), CG iterations used)` (0 without conjugate gradients).
        """
        draw = self.inner_step(y, operator, centre.dtype, centre.device)
        return draw(centre, r**2, None, eps_prior, eps_noise)

    def inner_step(self, y: torch.Tensor, operator: LinearOperator, dtype, device):
        r"""The exact inner draw for observations `y` `(B, N_out, C)` through `operator`.

        What does not change between levels (the residual of the prior mean, the diagonal of
        :math:`A^T O A`, the dense eigenbasis, the inner covariance's basis through it) is
        computed here, once per batch of signals.

        Returns:
            `draw(centre, w, c, eps_prior, eps_noise) -> (z0, CG iterations)`: a draw of
            :math:`z_0 \propto N(z_0; \mathrm{centre}, \Sigma)\,p(y \mid \mathrm{denorm}(z_0))`
            with :math:`\Sigma = w I` (`c` None; `w` a number) or, with an `inner_covariance`
            of basis `U`, :math:`\Sigma = U \mathrm{diag}(c) U^T + w (I - U U^T)` per channel
            (`c` `(C, m)`, `w` `(C,)`); `centre`, `eps_prior` `(B, N, C)`, `eps_noise` as `y`.
        """
        b, _, c = y.shape
        n = operator.domain.num_nodes
        one = torch.ones(1, 1, c, dtype=dtype, device=device)
        mu = self.prior.denormalize(0 * one)
        scale = self.prior.denormalize(one) - mu  # (1, 1, C): denorm(z) = mu + scale * z
        obs = operator.range_mask
        obs = torch.ones_like(y) if obs is None else obs.to(dtype).expand_as(y)
        sigma2, sigma = self.noise.sigma**2, self.noise.sigma
        diagonal = isinstance(operator, (Mask, Subsample))  # A^T O A is diagonal
        dense = None
        if not diagonal and self.solver == "auto":
            dense = self._dense(operator, dtype, device)
        if dense is not None:  # A as a matrix: no operator applications at all
            h, vecs, lam = dense

            def transpose_observed(v):  # A^T O v (the rows of h are zero where O is)
                return torch.einsum("mn,bmc->bnc", h, v)

            residual = y - torch.einsum("mn,bnc->bmc", h, mu.expand(1, n, c))
        else:

            def transpose_observed(v):
                return operator.transpose(obs * v)

            residual = y - operator(mu.expand(b, n, c))
        order = torch.arange(b, device=device)  # the batch grouped by distinct A^T O A
        if diagonal:
            diag = transpose_observed(operator(torch.ones(b, n, c, dtype=dtype, device=device)))
            distinct = diag
            if self.inner_covariance is not None:
                distinct, order = distinct_rows(diag)
        u = ut_vecs = gram = level = eye_m = None
        if self.inner_covariance is not None:
            u = self.inner_covariance.basis.to(dtype=dtype, device=device)  # (C, N, m)
            eye_m = torch.eye(u.shape[2], dtype=dtype, device=device)
            if dense is not None:
                ut_vecs = torch.einsum("nj,cnk->cjk", vecs, u)  # V^T U, (C, N, m)
            if diagonal:  # a mask's or subsampling's A^T O A: 0, or one value per row
                level = distinct.amax(dim=1, keepdim=True)  # (U, 1, C)
                near = (distinct - level).abs() <= 1e-6 * level  # equal up to rounding
                if not ((distinct == 0) | near).all():
                    raise RuntimeError(f"{operator!r}: A^T O A is not a 0/1 diagonal")
                seen = (distinct > 0).to(dtype)
                gram = torch.einsum("cnj,unc,cnk->ucjk", u, seen, u)  # U^T diag(seen) U

        def along(v):  # U^T v per channel: (B, N, C) -> (B, C, m)
            return torch.einsum("bnc,cnk->bck", v, u)

        def spread(coef):  # U coef: (B, C, m) -> (B, N, C)
            return torch.einsum("cnk,bck->bnc", u, coef)

        def white_solve(rhs, w):  # (I / w + S A^T O A S / sigma^2)^-1 rhs, w (1, 1, C)
            if diagonal:
                return rhs / (1 / w + scale**2 * diag / sigma2)
            coef = torch.einsum("nk,bnc->bkc", vecs, rhs)
            coef = coef / (1 / w + scale**2 * lam[None, :, None] / sigma2)
            return torch.einsum("nk,bkc->bnc", vecs, coef)

        def solve_small(mat, rhs_small):  # (G, C, m, m) and (G, C, m, q): one 2-D solve each
            # (MKL's batched LU can hang, torch 2.13)
            return torch.stack(
                [
                    torch.stack([torch.linalg.solve(mat[i, k], rhs_small[i, k]) for k in range(c)])
                    for i in range(mat.shape[0])
                ]
            )

        def grouped(v):  # (B, C, m) -> (G, copies, C, m), the copies of one A^T O A together
            return v[order].reshape(distinct.shape[0], -1, *v.shape[1:])

        def masked_draw(rhs, w, wc, cov, g, centre, eps_prior):
            # Woodbury with D = I / w + S diag S / sigma^2 diagonal, per distinct D:
            # (D + U G U^T)^-1 = D^-1 - D^-1 U (I + G K)^-1 G U^T D^-1, K = U^T D^-1 U; the
            # draw is D^-1 (rhs + U (h - t)) with rhs + U h the right-hand side: three U^T
            # products (one call) and one U product a level
            xr = white_solve(rhs, w)  # D^-1 rhs
            noise_modes, centre_modes, xr_modes = along(torch.cat([eps_prior, centre, xr])).chunk(3)
            # U^T of the draw of N(centre, Sigma): U^T centre + sqrt(c) U^T eps; Sigma^-1 of it
            h = (cov.sqrt() - wc.sqrt()) * noise_modes / wc
            h = h + g * (centre_modes + cov.sqrt() * noise_modes)
            # K = U^T D^-1 U: D^-1 is w off the observed entries and `hit` on them
            hit = 1 / (1 / w + scale**2 * level / sigma2)  # (G, 1, C)
            excess = (hit[:, 0] - w[0, 0])[:, :, None, None]  # (G, C, 1, 1)
            seen_part = excess * gram  # (G, C, m, m)
            k = w[0, 0][None, :, None, None] * eye_m + seen_part
            hg = grouped(h)  # (G, q, C, m)
            k_h = w[0, 0][:, None] * hg + torch.einsum("ucjk,uqck->uqcj", seen_part, hg)
            proj = g * (grouped(xr_modes) + k_h)  # G U^T D^-1 (rhs + U h)
            mat = eye_m + g[None, :, :, None] * k
            t = solve_small(mat, proj.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (G, q, C, m)
            coef = torch.empty_like(h)
            coef[order] = (hg - t).reshape(h.shape)
            return xr + white_solve(spread(coef), w)

        def draw(centre, w, cov, eps_prior, eps_noise):
            w = torch.as_tensor(w, dtype=dtype, device=device).reshape(-1)
            w = w.expand(c).reshape(1, 1, c)
            data = scale * transpose_observed(residual + sigma * eps_noise) / sigma2
            start = centre + w.sqrt() * eps_prior  # a draw of N(centre, w I) ...
            rhs, g = start / w + data, None
            if cov is not None:  # ... made one of N(centre, U diag(c) U^T + w (I - U U^T)):
                cov = cov.to(dtype=dtype, device=device)
                wc = w.reshape(c, 1)
                g = 1 / cov - 1 / wc  # Sigma^-1 = I / w + U diag(g) U^T
                if diagonal:
                    return masked_draw(rhs, w, wc, cov, g, centre, eps_prior), 0
                # U^T of the draw: U^T centre + sqrt(c) U^T eps; its Sigma^-1 in one spread
                noise_modes = along(eps_prior)
                modes = along(centre) + cov.sqrt() * noise_modes
                rhs = rhs + spread((cov.sqrt() - wc.sqrt()) * noise_modes / wc + g * modes)
            if g is None and (diagonal or dense is not None):
                return white_solve(rhs, w), 0
            if dense is not None:
                x = white_solve(rhs, w)
                # Woodbury with D = I / w + S V Lambda V^T S / sigma^2 (one D for the batch):
                # D^-1 U t = V (inv * (V^T U t)), never D^-1 U itself (N^2 m a level)
                inv = 1 / (1 / w[0] + scale[0] ** 2 * lam[:, None] / sigma2)  # (N, C)
                small = torch.einsum("cjm,jc,cjk->cmk", ut_vecs, inv, ut_vecs)[None]  # K
                mat = eye_m + g[None, :, :, None] * small
                proj = (g * along(x)).permute(1, 2, 0)[None]  # (1, C, m, B)
                t = solve_small(mat, proj)[0]  # (C, m, B)
                modes_t = torch.einsum("cjk,ckb->bjc", ut_vecs, t) * inv  # (B, N, C)
                return x - torch.einsum("nj,bjc->bnc", vecs, modes_t), 0
            count = [0]

            def precision(v):
                count[0] += 1
                out = v / w + scale * transpose_observed(operator(scale * v)) / sigma2
                return out if g is None else out + spread(g * along(v))

            z0 = conjugate_gradient(
                precision, rhs, x0=centre, max_iter=self.cg_iter, tol=self.cg_tol
            )
            return z0, count[0] - 1  # the first call is the start's residual

        return draw

    def _dense(self, operator: LinearOperator, dtype, device) -> tuple[torch.Tensor, ...] | None:
        r"""`(O A (N_out, N), V (N, N), lambda (N,))` in `dtype`, :math:`A^T O A = V\Lambda V^T`.

        Computed in float64 once per operator and kept (with its copy in `dtype` on `device`);
        None above `DENSE_MAX_NODES` nodes, or when the observed entries differ between batch
        elements or channels (then conjugate gradients solve it).
        """
        if operator.domain.num_nodes > DENSE_MAX_NODES:
            return None
        obs = operator.range_mask
        if obs is not None and obs.shape[0] * obs.shape[2] != 1:
            return None
        held = self._eigen.get(id(operator))
        if held is None or held[0] is not operator:
            h = operator_matrix(operator).double()  # (N_out, N)
            if obs is not None:
                h = h * obs[0, :, 0].to(h.dtype)[:, None]
            lam, vecs = torch.linalg.eigh(h.T @ h)
            held = self._eigen[id(operator)] = (operator, {}, (h, vecs, lam.clamp_min(0)))
        copies = held[1]
        if (dtype, device) not in copies:
            copies[dtype, device] = tuple(v.to(dtype=dtype, device=device) for v in held[2])
        return copies[dtype, device]

    def _chunk(self, y, operator, generator, dtype) -> tuple[torch.Tensor, int]:
        sde = self.prior.sde
        ts = self.timesteps()
        shape = (y.shape[0], operator.domain.num_nodes, y.shape[2])

        def randn(s):
            return torch.randn(s, generator=generator, dtype=dtype, device=y.device)

        draw = self.inner_step(y, operator, dtype, y.device)
        z, most = randn(shape), 0
        for i, t in enumerate(ts):
            a, sig = sde.scale_t(t), sde.sigma_t(t)
            eps = self.prior.eps(z, t.to(dtype=dtype, device=y.device))
            centre = (z - sig.to(dtype) * eps) / a.to(dtype)
            if self.clip is not None:
                centre = centre.clamp(-self.clip, self.clip)
            w, cov = self.inner_variances(i, t)
            z0, iters = draw(centre, w, cov, randn(shape), randn(y.shape))
            most = max(most, iters)
            if i + 1 < len(ts):
                nxt = ts[i + 1]
                z = sde.scale_t(nxt).to(dtype) * z0 + sde.sigma_t(nxt).to(dtype) * randn(shape)
        return self.prior.denormalize(z0), most

    @torch.no_grad()
    def run(
        self, y: torch.Tensor, operator: LinearOperator, n: int, *, generator=None
    ) -> DAPSOutput:
        """`n` samples per observation `y` `(B, N_out, C)`; returns a `DAPSOutput`.

        The `n` copies of the batch run together (sample-major) in chunks of at most
        `max_batch` signals, one by one when the operator cannot be repeated over copies.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        check_observations(y, operator)
        dtype = prior_dtype(self.prior, y)
        y = y.to(dtype)
        b, _, c = y.shape
        nodes = operator.domain.num_nodes
        out, most = [], 0
        for copies, rep in copy_chunks(operator, n, b, self.max_batch):
            x, iters = self._chunk(y.repeat(copies, 1, 1), rep, generator, dtype)
            out.append(x.reshape(copies, b, nodes, c))
            most = max(most, iters)
        return DAPSOutput(torch.cat(out), self.steps, self.timesteps(), most)

    def sample(
        self, y: torch.Tensor, operator: LinearOperator, n: int, *, rng=None
    ) -> torch.Tensor:
        """Posterior samples `(n, B, N, C)` in physical units (engine interface)."""
        return self.run(y, operator, n, generator=rng).sample
