r"""Whittle-Matérn Gaussian prior on any domain, through the Laplace-Beltrami eigenbasis.

The exact yardstick of the project: its density, its score at every diffusion time and (with a
linear operator and Gaussian noise) its posterior are known in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from torch import nn

from manifold_aps.geometry import Domain
from manifold_aps.priors.sde import VPSDE

__all__ = [
    "DENSE_MAX_NODES",
    "MULTIPOLE_RULES",
    "GaussianPrior",
    "MaternFit",
    "fit_matern",
    "mode_multipoles",
]

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


def _multipoles_by_order(eigenvalues: torch.Tensor) -> torch.Tensor:
    k = torch.arange(eigenvalues.shape[0], dtype=torch.float64)
    return torch.floor(torch.sqrt(k) + 1e-9).long()


def _multipoles_by_eigenvalue(eigenvalues: torch.Tensor) -> torch.Tensor:
    lam = eigenvalues.to(torch.float64).clamp_min(0)
    return torch.round((torch.sqrt(1 + 4 * lam) - 1) / 2).long()


MULTIPOLE_RULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "order": _multipoles_by_order,
    "eigenvalue": _multipoles_by_eigenvalue,
}


def mode_multipoles(eigenvalues: torch.Tensor, rule: str = "order") -> torch.Tensor:
    r"""Multipole `l` of each Laplace-Beltrami mode of a unit sphere, shape `(K,)` (int64).

    Rules (`MULTIPOLE_RULES`):

    * ``"order"``: the `k`-th mode in ascending order of eigenvalue has
      :math:`l = \lfloor\sqrt k\rfloor`, the count of spherical harmonics (:math:`(l+1)^2` of them
      up to degree `l`). It needs only the order of the eigenvalues, so it stays right on a
      discrete sphere whose eigenvalues fall below :math:`l(l+1)` as `l` grows.
    * ``"eigenvalue"``: :math:`l = \mathrm{round}((\sqrt{1 + 4\lambda} - 1)/2)`, the inverse of
      :math:`\lambda = l(l+1)`; exact on the continuous sphere only. On HEALPix nside 16 the 81
      modes of degree 40 have eigenvalues 983-1006 instead of 1640, so this rule puts them near
      l = 31.

    Arguments:
        eigenvalues: ascending eigenvalues `(K,)` (the first `K` modes).
        rule: a key of `MULTIPOLE_RULES`.

    Example:
        >>> mode_multipoles(torch.tensor([0.0, 2.0, 2.0, 2.0, 6.0])).tolist()
        [0, 1, 1, 1, 2]
    """
    if rule not in MULTIPOLE_RULES:
        raise ValueError(f"rule must be one of {sorted(MULTIPOLE_RULES)}, got {rule!r}")
    return MULTIPOLE_RULES[rule](torch.as_tensor(eigenvalues))


class GaussianPrior(nn.Module):
    r"""Whittle-Matérn Gaussian field :math:`x \sim N(\mu, C)`, channels independent and alike.

    :math:`C = \Phi\,\mathrm{diag}(s)\,\Phi^T` with the full mass-orthonormal eigenbasis
    :math:`\Phi` (`N` modes) of the domain and the Matérn spectrum `s` of `matern_spectrum`:
    variance :math:`\sigma^2` (average over the surface), length scale :math:`\ell` (units of the
    domain's positions: radians on the unit sphere), smoothness :math:`\nu`, plus an optional
    white-noise component of variance `nugget` at a cell of average area (white with respect to
    area: :math:`\tau^2\bar m M^{-1}`, so :math:`s_k \mathrel{+}= \tau^2 \bar m`). Densities are
    with respect to Lebesgue measure on the node values :math:`\mathbb{R}^{N}` (per channel).

    Instead of the Matérn parameters, `spectrum` may give the variance :math:`s_k` of every mode
    directly (any isotropic law of the domain's geometry); `from_angular_power` builds it on the
    sphere from an angular power spectrum :math:`C_l`.

    Internally `C` is kept as its Euclidean eigendecomposition :math:`U\,\mathrm{diag}(c)\,U^T`, so
    the diffused marginal :math:`x_t \sim N(\alpha_t\mu, \alpha_t^2 C + \sigma_t^2 I)` of the VP-SDE
    and its score are exact and cheap at every `t`. Dense: up to `DENSE_MAX_NODES` nodes.

    Arguments:
        domain: the domain.
        variance: :math:`\sigma^2` (signal units squared); default 1.
        length_scale: :math:`\ell` (domain length units); default 0.3.
        smoothness: :math:`\nu > 0`; default 1.
        nugget: :math:`\tau^2 \ge 0`, small-scale variance not explained by the Matérn part.
        mean: a number or a tensor `(N, C)` (e.g. a climatology); default 0.
        sde: the diffusion the exact `score` refers to (default `VPSDE()`).
        spectrum: optional variances `(N,)` of the `N` mass-orthonormal eigenfunctions, in
            ascending order of eigenvalue, each >= 0 (the nugget is added to them and their sums
            must be > 0). Replaces the Matérn spectrum; then `variance`, `length_scale` and
            `smoothness` must not be given.

    Attributes:
        variance: :math:`\sigma^2`; for a given `spectrum`, its area average
            :math:`\frac{1}{|\Omega|}\sum_k s_k` (the nugget excluded), as for Matérn.
        length_scale, smoothness: the Matérn parameters, None for a given `spectrum`.
        custom_spectrum: the given `spectrum` `(N,)` float64, or None for a Matérn prior.

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
        variance: float | None = None,
        length_scale: float | None = None,
        smoothness: float | None = None,
        nugget: float = 0.0,
        mean: float | torch.Tensor = 0.0,
        sde: VPSDE | None = None,
        spectrum: torch.Tensor | np.ndarray | None = None,
    ):
        super().__init__()
        check_dense_size(domain)
        if not (math.isfinite(nugget) and nugget >= 0):
            raise ValueError(f"nugget must be a finite number >= 0, got {nugget!r}")
        self.nugget = float(nugget)
        self.domain = domain
        matern = {"variance": variance, "length_scale": length_scale, "smoothness": smoothness}
        if spectrum is None:
            defaults = {"variance": 1.0, "length_scale": 0.3, "smoothness": 1.0}
            matern = {k: defaults[k] if v is None else v for k, v in matern.items()}
            for name, value in matern.items():
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"{name} must be a positive finite number, got {value!r}")
            self.custom_spectrum = None
        else:
            given = [k for k, v in matern.items() if v is not None]
            if given:
                raise ValueError(
                    "spectrum replaces variance, length_scale and smoothness; "
                    f"got spectrum and {given}"
                )
            spectrum = torch.as_tensor(spectrum, dtype=torch.float64).detach().clone()
            if spectrum.shape != (domain.num_nodes,):
                raise ValueError(
                    f"spectrum must have shape (N={domain.num_nodes},), got {tuple(spectrum.shape)}"
                )
            if not torch.all(torch.isfinite(spectrum)) or bool((spectrum < 0).any()):
                raise ValueError("spectrum must be finite and >= 0 on every mode")
            self.custom_spectrum = spectrum
        self.variance = (
            float(spectrum.sum() / domain.total_area)
            if spectrum is not None
            else float(matern["variance"])
        )
        self.length_scale = None if spectrum is not None else float(matern["length_scale"])
        self.smoothness = None if spectrum is not None else float(matern["smoothness"])
        self.sde = sde if sde is not None else VPSDE()
        mean = torch.as_tensor(mean, dtype=torch.float64)
        if mean.dim() not in (0, 2) or (mean.dim() == 2 and mean.shape[0] != domain.num_nodes):
            raise ValueError(
                f"mean must be a number or a tensor (N={domain.num_nodes}, C), "
                f"got {tuple(mean.shape)}"
            )
        self.register_buffer("mean", mean)
        lam, phi = domain.eigenbasis(domain.num_nodes)
        m = domain.mass
        if self.custom_spectrum is None:
            s = matern_spectrum(
                lam, self.variance, self.length_scale, self.smoothness, domain.total_area
            )
        else:
            s = self.custom_spectrum.clone()
        s = s + self.nugget * m.mean()
        if not bool((s > 0).all()):
            raise ValueError(
                "spectrum + nugget must be > 0 on every mode (add a nugget for modes of variance 0)"
            )
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

    @classmethod
    def from_angular_power(
        cls,
        domain: Domain,
        cl,
        *,
        rule: str = "order",
        nugget: float = 0.0,
        mean: float | torch.Tensor = 0.0,
        sde: VPSDE | None = None,
    ) -> GaussianPrior:
        r"""The isotropic Gaussian field of angular power spectrum :math:`C_l` on a unit sphere.

        A statistically isotropic field :math:`x = \sum_{lm} a_{lm} Y_{lm}` has uncorrelated
        real spherical-harmonic coefficients of variance :math:`\mathrm{E}\,a_{lm}^2 = C_l`. The
        mass-orthonormal eigenfunctions of degree `l` (:math:`\Phi^T M \Phi = I`, i.e.
        :math:`\int\phi_k^2\,dA = 1`, the normalisation of :math:`Y_{lm}`) span the same space as
        the :math:`Y_{lm}` up to discretisation error, in some orthonormal rotation, so giving each
        of them the variance :math:`C_l` gives the covariance
        :math:`\Phi\,\mathrm{diag}(C_{l(k)})\,\Phi^T \approx \sum_l \frac{2l+1}{4\pi} C_l
        P_l(\cos\theta)` (the addition theorem), pointwise variance
        :math:`\sum_l (2l+1) C_l / 4\pi`. `C_l` in the convention of `healpy.anafast` (signal
        units squared per steradian). The multipole of each mode is `mode_multipoles(rule)`;
        the default rule ``"order"`` is the one to use on discrete spheres, and all `N` modes need
        a :math:`C_l` (HEALPix: up to :math:`l = \lfloor\sqrt{N-1}\rfloor`, e.g. 55 for nside
        16, above the band limit `3 nside - 1` of `healpy.anafast`'s default).

        How well the pixel basis holds the :math:`Y_{lm}`: on HEALPix nside 16 the eigenvectors of
        degree `l` carry more than 97 % of their power at that degree up to l = 20, 27 % at
        l = 30 (measured with `healpy.anafast`); the low multipoles, where the power of most
        physical spectra is, are accurate, the pixel-scale ones are approximate.

        Arguments:
            domain: a domain of total area :math:`4\pi` (the unit sphere: `HealpixSphere`,
                `IcosphereMesh`, `SphereGrid`).
            cl: :math:`C_l` for `l = 0, 1, ...`, at least up to the largest multipole of the
                domain's modes, each >= 0.
            rule: a key of `MULTIPOLE_RULES`.
            nugget: white-noise variance, as for the constructor.
            mean: a number or a tensor `(N, C)`, as for the constructor.
            sde: the diffusion, as for the constructor.

        Example:
            >>> from manifold_aps.geometry import HealpixSphere
            >>> cl = 1.0 / (1.0 + torch.arange(7.0)) ** 2  # HEALPix nside 2: 48 modes, l <= 6
            >>> prior = GaussianPrior.from_angular_power(HealpixSphere(2), cl)
            >>> [round(float(v), 4) for v in prior.spectrum[:5]]  # l = 0, 1, 1, 1, 2
            [1.0, 0.25, 0.25, 0.25, 0.1111]
        """
        if abs(domain.total_area - 4 * math.pi) > 1e-6 * 4 * math.pi:
            raise ValueError(
                "from_angular_power needs a unit sphere (area 4 pi), "
                f"got {domain!r} of area {domain.total_area:.6g}"
            )
        check_dense_size(domain)
        cl = torch.as_tensor(np.asarray(cl, dtype=np.float64))
        if cl.dim() != 1:
            raise ValueError(
                f"cl must be one-dimensional (C_0, C_1, ...), got shape {tuple(cl.shape)}"
            )
        lam, _ = domain.eigenbasis(domain.num_nodes)
        ell = mode_multipoles(lam, rule)
        if int(ell.max()) >= cl.shape[0]:
            raise ValueError(
                f"cl must cover l = 0..{int(ell.max())} "
                f"for the {domain.num_nodes} modes of {domain!r}, got l = 0..{cl.shape[0] - 1}"
            )
        return cls(domain, spectrum=cl[ell], nugget=nugget, mean=mean, sde=sde)

    def extra_repr(self) -> str:
        """The domain and the spectrum's parameters, for `repr`."""
        if self.custom_spectrum is not None:
            return (
                f"domain={self.domain!r}, spectrum=({self.custom_spectrum.shape[0]} modes), "
                f"variance={self.variance:.4g}, nugget={self.nugget:.4g}"
            )
        return (
            f"domain={self.domain!r}, variance={self.variance:.4g}, "
            f"length_scale={self.length_scale:.4g}, smoothness={self.smoothness:.4g}, "
            f"nugget={self.nugget:.4g}"
        )

    def config(self) -> dict:
        """Hyper-parameters, for checkpoints and `history` attributes.

        `GaussianPrior(domain, **config)` rebuilds the prior.
        """
        if self.custom_spectrum is not None:
            return {"spectrum": self.custom_spectrum.tolist(), "nugget": self.nugget}
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

    def sample(
        self, n: int, *, channels: int = 1, rng: torch.Generator | None = None
    ) -> torch.Tensor:
        """`n` independent draws, shape `(n, N, channels)`, float64."""
        z = torch.randn(n, self.domain.num_nodes, channels, generator=rng, dtype=torch.float64)
        x = torch.einsum("nk,bkc->bnc", self.root, z)
        return x + self.mean.to(x.dtype)

    def _diffused_log_prob_and_score(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
        u = self.cov_eigenvectors.to(x.dtype)
        var = (
            a[:, None, None] ** 2 * self.cov_eigenvalues.to(x.dtype)[None, :, None]
            + s[:, None, None] ** 2
        )
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
        nu = (
            torch.tensor(smoothness, dtype=torch.float64)
            if k_nu is None
            else torch.exp(theta[k_nu])
        )
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
    res = scipy.optimize.minimize(
        objective, np.array(x0), jac=True, method="L-BFGS-B", bounds=bounds
    )
    var, ls, nu, nugget = (float(v) for v in unpack(torch.tensor(res.x)))
    prior = GaussianPrior(
        domain, variance=var, length_scale=ls, smoothness=nu, nugget=nugget, mean=mean, sde=sde
    )
    return MaternFit(prior=prior, log_likelihood=-float(res.fun), num_fields=n_fields)
