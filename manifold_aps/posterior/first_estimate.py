r"""The Tikhonov first estimate: a mask-aware Gaussian estimate of the posterior mean.

`TikhonovEstimate` solves a Tikhonov-regularised least-squares problem with a learned geometric
precision :math:`Q_\theta` (a Gaussian prior), by unrolled conjugate gradients or, on small
domains, a dense Cholesky solve. The amortized engines use it as a conditioning feature and, for
the APS flow, as the Gaussian anchor the flow starts from.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from manifold_aps.geometry import Domain
from manifold_aps.geometry.domain import sparse_to_torch
from manifold_aps.nn.graph import SavedEigenpairs
from manifold_aps.operators import LinearOperator, Mask

__all__ = ["TikhonovEstimate"]

# |log a_j| of the fitted polynomial p: e^{+-60} and p stay normal float32 numbers
LOG_COEFFICIENT_BOUND = 60.0


class TikhonovEstimate(SavedEigenpairs):
    r"""A cheap, mask-aware first estimate of the posterior mean, with a learned Gaussian prior.

    Solves :math:`(A^TA/\sigma^2 + Q_\theta)\,x = A^Ty/\sigma^2` by unrolled Jacobi-preconditioned
    conjugate gradients (a fixed number of iterations, differentiable). The learned precision is
    geometric: :math:`Q_\theta = M\,p(L)` with :math:`p(\lambda) = a_0 + a_1\lambda + a_2\lambda^2`
    (:math:`a_j > 0`; sparse: :math:`aM + bS + cSM^{-1}S`) on all modes, replaced on the `K` lowest
    Laplace-Beltrami modes by free gains :math:`g_k`:
    :math:`Q_\theta = M p(L) + M\Phi\,\mathrm{diag}(e^{g_k} - p(\lambda_k))\,\Phi^T M`, so
    that a Gaussian prior whose precision is `Q_theta` gives the exact posterior mean. It also
    returns the log of a proxy of the posterior marginal variance (dense: the inverse diagonal of
    `P`; iterative: see `forward`).

    With `dense=True` (small domains) it forms :math:`P = Q_\theta + A^TA/\sigma^2` as a dense
    matrix per observation and channel and returns its Cholesky factor too: the exact mean by a
    Cholesky solve and, for the flow's anchor, exact samples of the Gaussian :math:`N(\mu, P^{-1})`.

    The eigenpairs it was built with are saved in `state_dict` (see `SavedEigenpairs`), float64:
    `modes` `(N, K)` and `mode_eigenvalues` `(K,)` (with `K > 0`) and, iterative mode only,
    `variance_modes` `(N, Kv)` and `variance_mode_eigenvalues` `(Kv,)` (a separate `Kv`-pair
    solve). The gains :math:`g_k` belong to those modes, so a loaded estimator uses them, not
    the ones the loading machine computes; a state dict without them loads with a warning.

    Arguments:
        domain: the domain.
        iterations: PCG iterations (iterative mode).
        num_modes: `K`, low modes with free gains (0 for none).
        dense: dense Cholesky mode (O(N^3) per observation; for N up to a few thousand).
        variance_modes: `Kv`, modes of the prior-variance expansion (iterative mode; at least
            `K`, clipped to `N`).
    """

    SPECTRUM = ("modes", "mode_eigenvalues", "variance_modes", "variance_mode_eigenvalues")

    def __init__(
        self,
        domain: Domain,
        iterations: int = 30,
        num_modes: int = 32,
        dense: bool = False,
        variance_modes: int = 256,
    ):
        super().__init__()
        self.iterations = iterations
        self.dense = dense
        mass = domain.mass
        stiff = domain.stiffness()
        self.register_buffer("mass", mass.clone(), persistent=False)
        self.register_buffer("stiffness", sparse_to_torch(stiff).to_sparse_csr(), persistent=False)
        s2 = (stiff.multiply(stiff)).T @ (
            1.0 / mass.numpy()
        )  # diag(S M^-1 S)_i = sum_j S_ij^2 / m_j
        self.register_buffer("diag_s", torch.from_numpy(stiff.diagonal().copy()), persistent=False)
        self.register_buffer("diag_ss", torch.from_numpy(s2), persistent=False)
        k = min(num_modes, domain.num_nodes)
        if k:
            self.register_eigenpairs("mode_eigenvalues", "modes", domain.eigenbasis(k))
        self.num_modes = k
        if not dense:
            kv = min(max(variance_modes, k), domain.num_nodes)
            self.register_eigenpairs(
                "variance_mode_eigenvalues", "variance_modes", domain.eigenbasis(kv)
            )
        self._derive_spectral_buffers()
        m = float(mass.mean())
        # start near a white prior of unit variance per node: p(lambda) ~ 1/m
        self.log_a = nn.Parameter(
            torch.tensor([math.log(1.0 / m), math.log(0.1 / m * m), math.log(1e-3 * m)])
        )
        self.log_gain = nn.Parameter(torch.zeros(k))  # offsets of log g_k from log p(lambda_k)

    def _derive_spectral_buffers(self) -> None:
        r"""(Re)build `analysis` `(K, N)` (:math:`\Phi^T M`) and `var_phi_sq` `(N, Kv)`.

        `var_phi_sq` holds :math:`\phi_k(i)^2`.
        """
        if self.num_modes:
            analysis = (self.modes * self.mass.to(self.modes.dtype)[:, None]).T.contiguous()
            self.register_buffer("analysis", analysis, persistent=False)
        if not self.dense:
            self.register_buffer("var_phi_sq", self.variance_modes**2, persistent=False)

    @torch.no_grad()
    def fit_to_spectrum(self, eigenvalues: torch.Tensor, variances: torch.Tensor) -> float:
        r"""Initialise :math:`Q_\theta` from a prior's per-mode variances (standardised units).

        The low-mode gains take the exact precisions :math:`1/v_k`; the polynomial is fitted to
        :math:`\log(1/v_k)` of the remaining modes by least squares (L-BFGS over :math:`\log a_j`).
        No clean signal is used: the variances come from the prior (exact for a Gaussian prior,
        from prior samples for a score prior). Returns the mean squared log misfit on those modes.

        Arguments:
            eigenvalues: :math:`\lambda_k` `(K,)` ascending, the first `num_modes` of them
                matching this estimator's modes.
            variances: prior variance of each mode's coefficient `(K,)`.
        """
        import scipy.optimize

        if not torch.isfinite(variances).all() or (variances < 0).any():
            raise ValueError(
                "the prior's mode variances must be finite and non-negative; got "
                f"{int((~torch.isfinite(variances)).sum())} non-finite and "
                f"{int((variances < 0).sum())} negative of {variances.numel()}"
            )
        lam = eigenvalues.double()
        target = -torch.log(variances.double().clamp_min(1e-30))
        hi = slice(self.num_modes, None) if lam.numel() > self.num_modes + 3 else slice(None)

        # The fit runs on rescaled eigenvalues x = lambda / lambda_max, p = b_0 + b_1 x + b_2 x^2
        # (b_j = a_j lambda_max^j), from a start at the targets' mean level: on a small region
        # lambda_max ~ 1e5 and the fit in log a_j, from the estimator's start, was so badly scaled
        # that L-BFGS stopped far from a polynomial the modes admit exactly (misfit 0.49 for
        # p = 3 lambda^2) or ran log a_0 to -123 (on an ERA5 UK prior: e^-123 is 0 in float32, so
        # p(0) = 0 on the constant mode, its gain was inf and every APS loss NaN at step 1). The
        # bounds keep every a_j a normal float32 (e^{+-60}) wherever the modes leave it free.
        scale = float(lam[hi].abs().max().clamp_min(1e-12))
        x = lam[hi] / scale
        shift = torch.arange(3, dtype=torch.float64) * math.log(scale)  # log b_j - log a_j

        def objective(theta):
            with torch.enable_grad():
                t = torch.tensor(theta, requires_grad=True)
                b = t.exp()
                p = b[0] + b[1] * x + b[2] * x**2
                loss = (torch.log(p) - target[hi]).pow(2).mean()
                (grad,) = torch.autograd.grad(loss, t)
            return float(loss), grad.numpy()

        level = float(target[hi].mean()) - math.log(3.0)  # p = 3 e^level ... e^level on [0, 1]
        res = scipy.optimize.minimize(
            objective,
            (torch.full((3,), level, dtype=torch.float64))
            .clamp(-LOG_COEFFICIENT_BOUND + shift, LOG_COEFFICIENT_BOUND + shift)
            .numpy(),
            jac=True,
            method="L-BFGS-B",
            bounds=list(
                zip(
                    (shift - LOG_COEFFICIENT_BOUND).tolist(),
                    (shift + LOG_COEFFICIENT_BOUND).tolist(),
                    strict=True,
                )
            ),
            options={"maxiter": 1000, "ftol": 1e-15, "gtol": 1e-12},
        )
        res.x = res.x - shift.numpy()  # log a_j
        log_a = torch.from_numpy(res.x).to(self.log_a.dtype)
        log_gain = None
        if self.num_modes:
            p_low = self._poly(lam[: self.num_modes], log_a.double())
            log_gain = target[: self.num_modes] - torch.log(p_low)
        if not (
            torch.isfinite(log_a).all() and (log_gain is None or torch.isfinite(log_gain).all())
        ):
            raise FloatingPointError(
                "the first estimate's fit to the prior's spectrum is not finite "
                f"(log a = {res.x.tolist()})"
            )
        self.log_a.copy_(log_a)
        if log_gain is not None:
            self.log_gain.copy_(log_gain.to(self.log_gain.dtype))
        return float(res.fun)

    def _poly(self, lam, log_a: torch.Tensor | None = None):
        """p(lambda) = a_0 + a_1 lambda + a_2 lambda^2, of `log_a` (default this estimator's)."""
        a = (self.log_a if log_a is None else log_a).exp()
        return a[0] + a[1] * lam + a[2] * lam**2

    def _sparse(self, v):
        b, n, c = v.shape
        flat = v.transpose(0, 1).reshape(n, b * c)
        return torch.sparse.mm(self.stiffness.to(v.dtype), flat).reshape(n, b, c).transpose(0, 1)

    def precision(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`Q_\theta x` for `x` `(B, N, C)`."""
        a = self.log_a.exp().to(x.dtype)
        m = self.mass.to(x.dtype)[None, :, None]
        sx = self._sparse(x)
        out = a[0] * m * x + a[1] * sx + a[2] * self._sparse(sx / m)
        if self.num_modes:
            lam = self.mode_eigenvalues.to(x.dtype)
            p = self._poly(lam)
            gain = p * torch.expm1(self.log_gain.to(x.dtype))  # e^{g} - p with g = log p + offset
            coef = torch.einsum("kn,bnc->bkc", self.analysis.to(x.dtype), x) * gain[None, :, None]
            out = out + m * torch.einsum("nk,bkc->bnc", self.modes.to(x.dtype), coef)
        return out

    def prior_variance(self, dtype) -> torch.Tensor:
        r"""Marginal variances `(N,)` of the Gaussian with precision :math:`Q_\theta`.

        They come from its eigen-expansion on the first `variance_modes` modes:
        :math:`v_i \approx \sum_k \phi_k(i)^2 / q_k` (:math:`q_k = e^{g_k}` on the gain modes,
        :math:`p(\lambda_k)` above); the truncated tail is small for smooth priors.
        """
        q = self._poly(self.variance_mode_eigenvalues.to(dtype))
        if self.num_modes:
            q = torch.cat(
                [q[: self.num_modes] * torch.exp(self.log_gain.to(dtype)), q[self.num_modes :]]
            )
        return self.var_phi_sq.to(dtype) @ (1.0 / q)

    def dense_precision(self, dtype) -> torch.Tensor:
        r""":math:`Q_\theta` as a dense `(N, N)` matrix."""
        n = self.mass.shape[0]
        return self.precision(torch.eye(n, dtype=dtype)[:, :, None])[:, :, 0]

    def _dense(self, y, operator, inv_s2, obs):
        from manifold_aps.posterior.gaussian import operator_matrix

        q = self.dense_precision(y.dtype)
        q = 0.5 * (q + q.T)
        b, n, c = y.shape
        per_channel = inv_s2.reshape(-1, 1)  # (C or 1, 1): a channel's 1/sigma^2 on its rows
        if isinstance(operator, Mask):
            hth = obs.transpose(1, 2)  # (B, C, N): diagonal of H^T H
            prec = q + torch.diag_embed(hth * per_channel)
        else:
            h = operator_matrix(operator).to(y.dtype)
            rows = obs.transpose(1, 2)[..., None] * h  # unobserved rows are zero
            prec = q + per_channel[..., None] * rows.transpose(-1, -2) @ rows
        chol = torch.linalg.cholesky(prec)  # (B, C, N, N)
        rhs = operator.transpose(y) * inv_s2
        mean = torch.cholesky_solve(rhs.transpose(1, 2)[..., None], chol)[..., 0].transpose(1, 2)
        log_var = -torch.log(torch.diagonal(prec, dim1=-2, dim2=-1)).transpose(1, 2)
        return mean, log_var, chol

    def forward(self, y: torch.Tensor, operator: LinearOperator, sigma):
        """The first estimate of the posterior from `y` `(B, N_out, C)`.

        Returns the estimate `(B, N, C)`, a log posterior-variance proxy `(B, N, C)` and Cholesky
        factors `(B, C, N, N)` of the precision (None unless `dense`).
        """
        inv_s2 = 1.0 / torch.as_tensor(sigma, dtype=y.dtype) ** 2
        obs = operator.range_mask
        obs = torch.ones_like(y) if obs is None else obs.to(y.dtype).expand_as(y)
        if self.dense:
            return self._dense(y, operator, inv_s2, obs)
        a = self.log_a.exp().to(y.dtype)
        diag = (
            operator.transpose(obs) * inv_s2
            + (
                a[0] * self.mass.to(y.dtype)
                + a[1] * self.diag_s.to(y.dtype)
                + a[2] * self.diag_ss.to(y.dtype)
            )[None, :, None]
        )

        def apply(v):
            return operator.transpose(operator(v)) * inv_s2 + self.precision(v)

        rhs = operator.transpose(y) * inv_s2
        x = torch.zeros_like(rhs)
        r = rhs
        zr = r / diag
        p = zr
        rz = (r * zr).sum(1, keepdim=True)
        for _ in range(self.iterations):
            ap = apply(p)
            alpha = rz / (p * ap).sum(1, keepdim=True).clamp_min(1e-30)
            x = x + alpha * p
            r = r - alpha * ap
            zr = r / diag
            rz_new = (r * zr).sum(1, keepdim=True)
            p = zr + (rz_new / rz.clamp_min(1e-30)) * p
            rz = rz_new
        # Posterior variance proxy: prior marginal variance combined with the data at each node as
        # if nodes were independent, 1 / (1/v_i + h_i/sigma^2). It overestimates the variance of
        # a missing node next to observed ones (a safe start for reverse KL, which shrinks), where
        # the Jacobi diagonal 1/P_ii would underestimate it many times over for smooth priors.
        v = self.prior_variance(y.dtype)[None, :, None]
        var = 1.0 / (1.0 / v + operator.transpose(obs) * inv_s2)
        return x, torch.log(var), None
