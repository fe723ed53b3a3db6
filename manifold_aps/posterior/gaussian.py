r"""Exact posterior of a Gaussian prior under a linear operator with Gaussian noise (the yardstick).

With :math:`x \sim N(\mu, C)` and :math:`y = Hx + \sigma\epsilon` on the observed entries, the
posterior is :math:`N(\mu_y, \Sigma_y)` with precision
:math:`\Sigma_y^{-1} = C^{-1} + H^TH/\sigma^2` and
:math:`\mu_y = \Sigma_y(C^{-1}\mu + H^Ty/\sigma^2)`. It is computed in the eigen-coordinates
:math:`z = U^Tx` of `C`, where the prior precision is diagonal, by one Cholesky factorisation per
batch element and channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from manifold_aps.operators import GaussianNoise, LinearOperator, Mask
from manifold_aps.posterior.observations import check_observations
from manifold_aps.priors.gaussian import DENSE_MAX_NODES, GaussianPrior

__all__ = ["ExactGaussianPosterior", "GaussianConditional", "operator_matrix"]


def operator_matrix(operator: LinearOperator, chunk: int = 512) -> torch.Tensor:
    """The dense matrix `H` `(N_out, N)` of a linear operator on single-channel signals, float64.

    Built by applying the operator to the columns of the identity, or by the operator's own
    `dense_matrix()` where it has one (e.g. `HeatBlur`, from the eigenbasis) and the domain has at
    most `DENSE_MAX_NODES` nodes; for per-example operators (a batch of masks) use the first
    example.
    """
    n = operator.domain.num_nodes
    if hasattr(operator, "dense_matrix") and n <= DENSE_MAX_NODES:
        return operator.dense_matrix()
    cols = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        eye = torch.zeros(stop - start, n, 1, dtype=torch.float64)
        eye[torch.arange(stop - start), torch.arange(start, stop), 0] = 1.0
        if isinstance(operator, Mask):
            cols.append(eye[:, :, 0] * operator.mask[0, :, 0].double())
        else:
            cols.append(operator(eye)[:, :, 0])
    return torch.cat(cols, dim=0).T.contiguous()


@dataclass
class GaussianConditional:
    """The posterior for a batch of observations: per element `b` and channel `c`.

    Attributes:
        mean: posterior mean `(B, N, C)`.
        std: posterior pointwise standard deviation `(B, N, C)`.
        eigenvectors: `U` `(N, N)` of the prior covariance.
        cholesky: lower Cholesky factors `(B, C, N, N)` of the posterior precision in the
            coordinates `z = U^T x`.
    """

    mean: torch.Tensor
    std: torch.Tensor
    eigenvectors: torch.Tensor
    cholesky: torch.Tensor

    def sample(self, n: int, *, rng: torch.Generator | None = None) -> torch.Tensor:
        """`n` exact posterior samples, shape `(n, B, N, C)`."""
        b, nn, c = self.mean.shape
        eps = torch.randn(n, b, c, nn, generator=rng, dtype=self.mean.dtype)
        # samples as right-hand-side columns: the factors are never copied per sample
        cols = eps.permute(1, 2, 3, 0)  # (B, C, N, n)
        z = torch.linalg.solve_triangular(self.cholesky.transpose(-1, -2), cols, upper=True)
        x = torch.einsum("nk,bcks->sbnc", self.eigenvectors, z)
        return self.mean + x

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact posterior log-density of `x` `(S, B, N, C)` (Lebesgue on node values), `(S, B)`."""
        r = torch.einsum("nk,sbnc->sbck", self.eigenvectors, x - self.mean)
        lz = (self.cholesky.transpose(-1, -2) @ r.permute(1, 2, 3, 0)).permute(
            3, 0, 1, 2
        )  # L^T r, (S, B, C, N)
        logdet = torch.log(torch.diagonal(self.cholesky, dim1=-2, dim2=-1)).sum(-1)  # (B, C)
        n = self.mean.shape[1]
        return (-0.5 * (lz**2).sum(-1) + logdet - 0.5 * n * math.log(2 * math.pi)).sum(-1)

    def covariance(self) -> torch.Tensor:
        """Posterior covariance `(B, C, N, N)`."""
        eye = torch.eye(self.cholesky.shape[-1], dtype=self.cholesky.dtype)
        inv_lt = torch.linalg.solve_triangular(self.cholesky, eye, upper=False)  # L^{-1}
        cov_z = inv_lt.transpose(-1, -2) @ inv_lt
        u = self.eigenvectors
        return u @ cov_z @ u.T


class ExactGaussianPosterior:
    r"""Closed-form posterior sampler for a `GaussianPrior`, a `LinearOperator` and `GaussianNoise`.

    Engine interface: `condition(y, operator)` returns a `GaussianConditional`;
    `sample(y, operator, n)` returns `(n, B, N, C)`; `log_prob(x, y, operator)` returns `(S, B)`.

    Arguments:
        prior: the Gaussian prior.
        noise: the observation noise.

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import HealpixSphere
        >>> from manifold_aps.operators import Mask, GaussianNoise
        >>> from manifold_aps.priors import GaussianPrior
        >>> d = HealpixSphere(2)
        >>> post = ExactGaussianPosterior(GaussianPrior(d), GaussianNoise(0.1))
        >>> A = Mask(d, torch.arange(48) % 2 == 0)
        >>> y = A(torch.ones(1, 48, 1, dtype=torch.float64))
        >>> post.sample(y, A, 5).shape
        torch.Size([5, 1, 48, 1])
    """

    def __init__(self, prior: GaussianPrior, noise: GaussianNoise):
        self.prior = prior
        self.noise = noise

    def _rows(self, operator: LinearOperator, b: int, c: int, matrix: torch.Tensor | None):
        """Observation matrix of batch element `b`, channel `c`: `(n_obs, N)`."""
        rmask = operator.range_mask
        if isinstance(operator, Mask):
            keep = rmask[min(b, rmask.shape[0] - 1), :, min(c, rmask.shape[2] - 1)]
            return torch.eye(operator.domain.num_nodes, dtype=torch.float64)[keep]
        if rmask is not None:
            keep = rmask[min(b, rmask.shape[0] - 1), :, min(c, rmask.shape[2] - 1)]
            return matrix[keep]
        return matrix

    def condition(self, y: torch.Tensor, operator: LinearOperator) -> GaussianConditional:
        """Posterior for observations `y` `(B, N_out, C)` made with `operator`."""
        check_observations(y, operator)
        if operator.domain is not self.prior.domain:
            if operator.domain.fingerprint != self.prior.domain.fingerprint:
                raise ValueError("the operator and the prior live on different domains")
        y = y.to(torch.float64)
        bsz, _, ch = y.shape
        u = self.prior.cov_eigenvectors
        prec_z = 1.0 / self.prior.cov_eigenvalues
        mu = self.prior.mean.to(torch.float64)
        mu = (
            mu.expand(self.prior.domain.num_nodes, ch)
            if mu.dim() == 2
            else torch.full((self.prior.domain.num_nodes, ch), float(mu), dtype=torch.float64)
        )
        matrix = None if isinstance(operator, Mask) else operator_matrix(operator)
        rmask = operator.range_mask
        s2 = self.noise.sigma**2
        means, stds, chols = [], [], []
        for b in range(bsz):
            m_b, s_b, l_b = [], [], []
            for c in range(ch):
                h = self._rows(operator, b, c, matrix)
                yo = y[b, :, c]
                if rmask is not None:
                    yo = yo[rmask[min(b, rmask.shape[0] - 1), :, min(c, rmask.shape[2] - 1)]]
                g = h @ u  # (n_obs, N)
                k = torch.diag(prec_z) + g.T @ g / s2
                chol = torch.linalg.cholesky(k)
                rhs = prec_z * (u.T @ mu[:, c]) + g.T @ yo / s2
                z = torch.cholesky_solve(rhs[:, None], chol)[:, 0]
                w = torch.linalg.solve_triangular(chol, u.T, upper=False)  # L^{-1} U^T
                m_b.append(u @ z)
                s_b.append((w**2).sum(0).sqrt())
                l_b.append(chol)
            means.append(torch.stack(m_b, -1))
            stds.append(torch.stack(s_b, -1))
            chols.append(torch.stack(l_b))
        return GaussianConditional(
            mean=torch.stack(means),
            std=torch.stack(stds),
            eigenvectors=u,
            cholesky=torch.stack(chols),
        )

    def sample(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        n: int,
        *,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`n` exact posterior samples `(n, B, N, C)`."""
        return self.condition(y, operator).sample(n, rng=rng)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
        """Exact posterior log-density of samples `x` `(S, B, N, C)`, shape `(S, B)`."""
        return self.condition(y, operator).log_prob(x)
