r"""Whittle-Matérn Gaussian prior on any domain, through the Laplace-Beltrami eigenbasis.

The exact yardstick of the project: its density, its score at every diffusion time and (with a
linear operator and Gaussian noise) its posterior are known in closed form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import nn

from manifold_aps.geometry import Domain
from manifold_aps.priors.sde import VPSDE

__all__ = ["DENSE_MAX_NODES", "GaussianPrior", "MaternFit", "fit_matern"]

DENSE_MAX_NODES = 6000  # the dense representation needs O(N^2) memory and O(N^3) set-up


def check_dense_size(domain: Domain) -> None:
    """Raise a clear ValueError when `domain` is too large for the dense Gaussian prior."""
    if domain.num_nodes > DENSE_MAX_NODES:
        raise ValueError(
            f"the Gaussian prior is dense and supports at most {DENSE_MAX_NODES} nodes; "
            f"{domain!r} has {domain.num_nodes}. Coarsen the domain or crop a region."
        )


def matern_spectrum(
    eigenvalues: torch.Tensor,
    variance: torch.Tensor | float,
    length_scale: torch.Tensor | float,
    smoothness: torch.Tensor | float,
    area: float,
) -> torch.Tensor:
    r"""Variances :math:`s_k` of the Matérn field on the eigenfunctions, shape `(K,)`.

    :math:`s_k = \sigma^2 (2\nu/\ell^2 + \lambda_k)^{-(\nu+1)} / Z`, with `Z` chosen so that the
    area-averaged pointwise variance :math:`\frac{1}{|\Omega|}\sum_k s_k` equals :math:`\sigma^2`
    (Borovitskiy et al. 2020, for a 2-D surface).
    """
    kappa2 = 2 * smoothness / length_scale**2
    raw = (kappa2 + eigenvalues) ** (-(smoothness + 1))
    return variance * raw * area / raw.sum()


class GaussianPrior(nn.Module):
    r"""Whittle-Matérn Gaussian field :math:`x \sim N(\mu, C)`, channels independent and alike.

    :math:`C = \Phi\,\mathrm{diag}(s)\,\Phi^T` with the full mass-orthonormal eigenbasis
    :math:`\Phi` (`N` modes) of the domain and the Matérn spectrum `s` of `matern_spectrum`:
    variance :math:`\sigma^2` (average over the surface), length scale :math:`\ell` (units of the
    domain's positions: radians on the unit sphere), smoothness :math:`\nu`, plus an optional
    white-noise component of variance `nugget` at a cell of average area (white with respect to
    area: :math:`\tau^2\bar m M^{-1}`, so :math:`s_k \mathrel{+}= \tau^2 \bar m`). Densities are with
    respect to Lebesgue measure on the node values :math:`\mathbb{R}^{N}` (per channel).

    Internally `C` is kept as its Euclidean eigendecomposition :math:`U\,\mathrm{diag}(c)\,U^T`, so
    the diffused marginal :math:`x_t \sim N(\alpha_t\mu, \alpha_t^2 C + \sigma_t^2 I)` of the VP-SDE
    and its score are exact and cheap at every `t`. Dense: up to `DENSE_MAX_NODES` nodes.

    Arguments:
        domain: the domain.
        variance: :math:`\sigma^2` (signal units squared).
        length_scale: :math:`\ell` (domain length units).
        smoothness: :math:`\nu > 0`.
        nugget: :math:`\tau^2 \ge 0`, small-scale variance not explained by the Matérn part.
        mean: a number or a tensor `(N, C)` (e.g. a climatology); default 0.
        sde: the diffusion the exact `score` refers to (default `VPSDE()`).

    Example:
        >>> from manifold_aps.geometry import HealpixSphere
        >>> prior = GaussianPrior(HealpixSphere(2), variance=1.0, length_scale=0.5)
        >>> prior.sample(3, channels=1, rng=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 48, 1])
    """

    def __init__(
        self,
        domain: Domain,
        *,
        variance: float = 1.0,
        length_scale: float = 0.3,
        smoothness: float = 1.0,
        nugget: float = 0.0,
        mean: float | torch.Tensor = 0.0,
        sde: VPSDE | None = None,
    ):
        super().__init__()
        check_dense_size(domain)
        for name, value in [("variance", variance), ("length_scale", length_scale), ("smoothness", smoothness)]:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not (math.isfinite(nugget) and nugget >= 0):
            raise ValueError(f"nugget must be a finite number >= 0, got {nugget!r}")
        self.nugget = float(nugget)
        self.domain = domain
        self.variance, self.length_scale, self.smoothness = float(variance), float(length_scale), float(smoothness)
        self.sde = sde if sde is not None else VPSDE()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if mean.dim() not in (0, 2) or (mean.dim() == 2 and mean.shape[0] != domain.num_nodes):
            raise ValueError(f"mean must be a number or a tensor (N={domain.num_nodes}, C), got {tuple(mean.shape)}")
        self.register_buffer("mean", mean)
        lam, phi = domain.eigenbasis(domain.num_nodes)
        m = domain.mass
        s = matern_spectrum(lam, self.variance, self.length_scale, self.smoothness, domain.total_area)
        s = s + self.nugget * m.mean()
        # C = Phi diag(s) Phi^T = root root^T; sampling needs only `root`.
        self.register_buffer("root", phi * s.sqrt())
        self.register_buffer("spectrum", s)
        self._uniform_mass = bool(torch.allclose(m, m[0].expand_as(m)))
        self._phi_scale = float(m[0].sqrt()) if self._uniform_mass else None
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None

    def _euclidean_eigen(self) -> tuple[torch.Tensor, torch.Tensor]:
        """`(c, U)` with `C = U diag(c) U^T`, `U` orthonormal; computed on first use (O(N^3))."""
        if self._eig is None:
            if self._uniform_mass:  # Q = sqrt(m0) Phi is orthonormal: C = Q diag(s / m0) Q^T
                m0 = self._phi_scale**2
                self._eig = (self.spectrum / m0, self.root / self.spectrum.sqrt() * self._phi_scale)
            else:
                cov = self.root @ self.root.T
                c, u = torch.linalg.eigh(0.5 * (cov + cov.T))
                self._eig = (c.clamp_min(c.max() * 1e-15), u)
        return self._eig

    @property
    def cov_eigenvalues(self) -> torch.Tensor:
        """Eigenvalues `c` `(N,)` of the covariance (Euclidean), ascending or mode order."""
        return self._euclidean_eigen()[0]

    @property
    def cov_eigenvectors(self) -> torch.Tensor:
        """Orthonormal eigenvectors `U` `(N, N)` of the covariance."""
        return self._euclidean_eigen()[1]

    def extra_repr(self) -> str:
        return (
            f"domain={self.domain!r}, variance={self.variance:.4g}, "
            f"length_scale={self.length_scale:.4g}, smoothness={self.smoothness:.4g}, "
            f"nugget={self.nugget:.4g}"
        )

    def config(self) -> dict:
        """Hyper-parameters, for checkpoints and `history` attributes."""
        return {
            "variance": self.variance,
            "length_scale": self.length_scale,
            "smoothness": self.smoothness,
            "nugget": self.nugget,
        }

    def _mean_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean.to(dtype=x.dtype, device=x.device)

    def covariance(self) -> torch.Tensor:
        """The covariance `C` of one channel, shape `(N, N)`, float64."""
        return self.root @ self.root.T

    def sample(self, n: int, *, channels: int = 1, rng: torch.Generator | None = None) -> torch.Tensor:
        """`n` independent draws, shape `(n, N, channels)`, float64."""
        z = torch.randn(n, self.domain.num_nodes, channels, generator=rng, dtype=torch.float64)
        x = torch.einsum("nk,bkc->bnc", self.root, z)
        return x + self.mean.to(x.dtype)

    def _diffused_log_prob_and_score(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        u = self.cov_eigenvectors.to(x.dtype)
        var = a[:, None, None] ** 2 * self.cov_eigenvalues.to(x.dtype)[None, :, None] + s[:, None, None] ** 2
        r = x - a[:, None, None] * self._mean_like(x)
        coef = torch.einsum("nk,bnc->bkc", u, r)
        score = -torch.einsum("nk,bkc->bnc", u, coef / var)
        n, ch = x.shape[1], x.shape[2]
        logp = -0.5 * (coef**2 / var).sum((1, 2)) - 0.5 * ch * torch.log(var[..., 0]).sum(1)
        return logp - 0.5 * n * ch * math.log(2 * math.pi), score

    def _times(self, x: torch.Tensor, t) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        return t.expand(x.shape[0]) if t.dim() == 0 else t

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of `x` `(B, N, C)` (Lebesgue measure on node values), shape `(B,)`."""
        self.domain.check_signal(x)
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return self._diffused_log_prob_and_score(x, one, 0 * one)[0]

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""Exact score :math:`\nabla\log p_t(x)` of the VP-SDE marginal at time `t`.

        Arguments:
            x: noisy signals `(B, N, C)`.
            t: diffusion time(s) in [0, 1], a number or shape `(B,)`.

        Returns:
            `(B, N, C)`.
        """
        self.domain.check_signal(x)
        t = self._times(x, t)
        return self._diffused_log_prob_and_score(x, self.sde.scale_t(t), self.sde.sigma_t(t))[1]

    def diffused_log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        """Exact log-density of the VP-SDE marginal at time `t`, shape `(B,)`."""
        t = self._times(x, t)
        return self._diffused_log_prob_and_score(x, self.sde.scale_t(t), self.sde.sigma_t(t))[0]

    def eps(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""Exact noise prediction :math:`-\sigma_t \nabla\log p_t(x)`, `(B, N, C)`."""
        t = self._times(x, t)
        return -self.sde.sigma_t(t)[:, None, None] * self.score(x, t)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Identity: the Gaussian prior diffuses signals in their own units."""
        return x

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Identity (see `normalize`)."""
        return z

    def log_abs_det_normalize(self) -> float:
        """0: `normalize` is the identity."""
        return 0.0

    def sigma_t(self, t):
        """Noise level of the prior's diffusion at time `t` (see `VPSDE.sigma_t`)."""
        return self.sde.sigma_t(t)

    def scale_t(self, t):
        """Signal scale of the prior's diffusion at time `t` (see `VPSDE.scale_t`)."""
        return self.sde.scale_t(t)


@dataclass(frozen=True)
class MaternFit:
    """Result of `fit_matern`.

    Attributes:
        prior: the fitted `GaussianPrior`.
        log_likelihood: maximised log-likelihood of the data (nats, all fields and channels).
        num_fields: number of fields `B * C` used.
    """

    prior: GaussianPrior
    log_likelihood: float
    num_fields: int


def fit_matern(
    domain: Domain,
    data: torch.Tensor,
    *,
    mean: float | torch.Tensor = 0.0,
    smoothness: float | None = None,
    fit_nugget: bool = False,
    init: tuple[float, float, float] | None = None,
    sde: VPSDE | None = None,
) -> MaternFit:
    r"""Maximum-likelihood Matérn hyper-parameters from complete fields.

    In the eigenbasis the likelihood is cheap: with :math:`a = \Phi^T M (x - \mu)`,
    :math:`\log p(x) = -\tfrac12\sum_k a_k^2/s_k - \tfrac12\sum_k\log s_k + \tfrac12\log\det M -
    \tfrac{N}{2}\log 2\pi`. Optimised with L-BFGS-B over the logs of variance, length scale and
    (unless `smoothness` is given) smoothness.

    Arguments:
        domain: the domain.
        data: complete fields `(B, N, C)` (no NaN), e.g. training time steps.
        mean: the prior mean subtracted before fitting (a number or `(N, C)`).
        smoothness: fix :math:`\nu` (else it is fitted in [0.25, 8]).
        fit_nugget: also fit the white-noise `nugget` (else it is 0).
        init: starting `(variance, length_scale, smoothness)`.
        sde: passed on to the prior.

    Returns:
        a `MaternFit`.
    """
    check_dense_size(domain)  # before the O(N^3) eigendecomposition
    domain.check_signal(data, "data")
    data = torch.as_tensor(data, dtype=torch.float64)
    if data.dim() != 3:
        raise ValueError(f"data must have shape (B, N, C), got {tuple(data.shape)}")
    if not torch.all(torch.isfinite(data)):
        raise ValueError("data contains NaN or infinity; fit on complete fields only")
    lam, phi = domain.eigenbasis(domain.num_nodes)
    m = domain.mass
    centred = data - torch.as_tensor(mean, dtype=torch.float64)
    coef = torch.einsum("nk,n,bnc->bkc", phi, m, centred)
    power = (coef**2).sum((0, 2))  # (N,)
    n_fields = data.shape[0] * data.shape[2]
    const = 0.5 * n_fields * (torch.log(m).sum() - domain.num_nodes * math.log(2 * math.pi))
    area = domain.total_area
    var0 = float(centred.var()) if init is None else init[0]
    ls0 = math.sqrt(area) / 10 if init is None else init[1]
    nu0 = (smoothness or 1.0) if init is None else init[2]

    mean_mass = m.mean()
    k_nu = 2 if smoothness is None else None

    def unpack(theta):
        nu = torch.tensor(smoothness, dtype=torch.float64) if k_nu is None else torch.exp(theta[k_nu])
        nugget = torch.exp(theta[-1]) if fit_nugget else torch.zeros((), dtype=torch.float64)
        return torch.exp(theta[0]), torch.exp(theta[1]), nu, nugget

    def objective(theta_np):
        theta = torch.tensor(theta_np, dtype=torch.float64, requires_grad=True)
        var, ls, nu, nugget = unpack(theta)
        s = matern_spectrum(lam, var, ls, nu, area) + nugget * mean_mass
        nll = 0.5 * (power / s).sum() + 0.5 * n_fields * torch.log(s).sum() - const
        (grad,) = torch.autograd.grad(nll, theta)
        return float(nll.detach()), grad.numpy()

    x0 = [math.log(max(var0, 1e-12)), math.log(ls0)]
    bounds = [(None, None), (math.log(1e-4 * math.sqrt(area)), math.log(10 * math.sqrt(area)))]
    if smoothness is None:
        x0.append(math.log(nu0))
        bounds.append((math.log(0.25), math.log(8.0)))
    if fit_nugget:
        x0.append(math.log(max(var0, 1e-12) * 1e-2))
        bounds.append((math.log(max(var0, 1e-12) * 1e-8), None))
    res = scipy.optimize.minimize(objective, np.array(x0), jac=True, method="L-BFGS-B", bounds=bounds)
    var, ls, nu, nugget = (float(v) for v in unpack(torch.tensor(res.x)))
    prior = GaussianPrior(
        domain, variance=var, length_scale=ls, smoothness=nu, nugget=nugget, mean=mean, sde=sde
    )
    return MaternFit(prior=prior, log_likelihood=-float(res.fun), num_fields=n_fields)
