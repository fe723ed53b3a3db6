r"""Whittle-Matérn Gaussian Markov random field on any domain: sparse precision, no eigenbasis.

The SPDE route to Matérn fields at any size (Lindgren, Rue & Lindström 2011): the field solving
:math:`(\kappa^2 - \Delta)^{\alpha/2}(\tau x) = W` on a surface, discretised with the domain's own
stiffness `S` and lumped mass `M` (:math:`K = \kappa^2 M + S`), has the sparse precision

.. math:: Q_1 = \tau^2 K, \quad Q_2 = \tau^2 K M^{-1} K, \quad Q_3 = \tau^2 K M^{-1} K M^{-1} K.

Since :math:`S\phi_k = \lambda_k M\phi_k` with :math:`\Phi^T M\Phi = I`, the covariance is
:math:`Q^{-1} = \Phi\,\mathrm{diag}(\tau^{-2}(\kappa^2 + \lambda_k)^{-\alpha})\,\Phi^T`: the same
field as the dense `GaussianPrior` with that spectrum (tested to 1e-10), without its
:math:`O(N^3)` eigendecomposition.

Parameters: smoothness :math:`\nu = \alpha - 1` (a surface, `d = 2`), practical range
:math:`\rho = \sqrt{8\nu}/\kappa` and marginal variance
:math:`\sigma^2 = \Gamma(\nu) / (\Gamma(\alpha)\,4\pi\,\kappa^{2\nu}\tau^2)` of the stationary
continuous field (away from boundaries; the discrete field's variance differs by the
discretisation error). For :math:`\alpha = 1` (:math:`\nu = 0`) the continuous variance diverges,
so that field is given by :math:`\kappa, \tau` only (`range` := :math:`1/\kappa`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from manifold_aps.geometry import Domain
from manifold_aps.sparse_cholesky import SparseCholesky

__all__ = ["ALPHAS", "MaternGMRF", "matern_kappa_tau"]

ALPHAS = (1, 2, 3)


def matern_kappa_tau(range_: float, std: float, alpha: int) -> tuple[float, float]:
    r""":math:`(\kappa, \tau)` of the field of given practical range and marginal std.

    The range :math:`\rho` and std :math:`\sigma` define fields with :math:`\alpha \ge 2`.

    Example:
        >>> kappa, tau = matern_kappa_tau(0.5, 2.0, 2)
        >>> round(kappa, 6), round(1 / (4 * math.pi * kappa**2 * tau**2), 6)  # sigma^2 = 4
        (5.656854, 4.0)
    """
    if alpha not in (2, 3):
        raise ValueError(f"range and std define alpha = 2 or 3 fields, got alpha={alpha!r}")
    if not (range_ > 0 and std > 0 and math.isfinite(range_) and math.isfinite(std)):
        raise ValueError(f"range and std must be positive and finite, got {range_!r}, {std!r}")
    nu = alpha - 1
    kappa = math.sqrt(8 * nu) / range_
    tau2 = math.gamma(nu) / (math.gamma(alpha) * 4 * math.pi * kappa ** (2 * nu) * std**2)
    return kappa, math.sqrt(tau2)


class MaternGMRF:
    r"""The Whittle-Matérn GMRF :math:`x \sim N(\mu, Q^{-1})` on a domain.

    Channels are independent and alike.

    Arguments:
        domain: any `Domain` (its `stiffness()` and `mass` define `K`).
        alpha: 1, 2 or 3 (smoothness :math:`\nu = \alpha - 1`).
        kappa: inverse length scale :math:`\kappa > 0` (1 / domain length units).
        tau: precision scale :math:`\tau > 0` (1 / signal units).
        mean: a number or an array `(N,)` (e.g. a climatology); default 0.

    Use `from_range` for the interpretable parameters.

    Example:
        >>> from manifold_aps.geometry import HealpixSphere
        >>> prior = MaternGMRF.from_range(HealpixSphere(4), range_=0.8, std=1.0, alpha=2)
        >>> prior.precision().shape, prior.sample(3, rng=np.random.default_rng(0)).shape
        ((192, 192), (3, 192))
    """

    def __init__(self, domain: Domain, *, alpha: int, kappa: float, tau: float, mean=0.0):
        if alpha not in ALPHAS:
            raise ValueError(
                f"alpha must be one of {ALPHAS} (integer smoothness nu = alpha - 1), got {alpha!r}"
            )
        for name, value in (("kappa", kappa), ("tau", tau)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.domain, self.alpha, self.kappa, self.tau = domain, int(alpha), float(kappa), float(tau)
        mean = np.asarray(mean, dtype=np.float64)
        if mean.ndim not in (0, 1) or (mean.ndim == 1 and mean.shape != (domain.num_nodes,)):
            raise ValueError(
                f"mean must be a number or an array (N={domain.num_nodes},), got shape {mean.shape}"
            )
        self.mean = mean
        self._mass = domain.mass.numpy()
        self._stiffness = domain.stiffness().tocsc()
        # log det K by kappa, shared by `with_params` copies (a likelihood search varies the nugget
        # at a fixed kappa); the same number either way, only the time differs
        self._log_det_k: dict[float, float] = {}

    @classmethod
    def from_range(
        cls, domain: Domain, *, range_: float, std: float, alpha: int = 2, mean=0.0
    ) -> MaternGMRF:
        r"""The field of practical range :math:`\rho` and marginal std :math:`\sigma`.

        The range is in domain length units; :math:`\alpha \ge 2`.
        """
        kappa, tau = matern_kappa_tau(range_, std, alpha)
        return cls(domain, alpha=alpha, kappa=kappa, tau=tau, mean=mean)

    # ------------------------------------------------------------------ parameters
    @property
    def smoothness(self) -> int:
        r""":math:`\nu = \alpha - 1`."""
        return self.alpha - 1

    @property
    def range(self) -> float:
        r"""Practical range :math:`\sqrt{8\nu}/\kappa`, domain length units.

        It is :math:`1/\kappa` for :math:`\alpha = 1`.
        """
        nu = self.smoothness
        return math.sqrt(8 * nu) / self.kappa if nu > 0 else 1.0 / self.kappa

    @property
    def std(self) -> float | None:
        r"""Marginal std of the stationary continuous field (None for :math:`\alpha = 1`)."""
        nu = self.smoothness
        if nu == 0:
            return None
        var = math.gamma(nu) / (
            math.gamma(self.alpha) * 4 * math.pi * self.kappa ** (2 * nu) * self.tau**2
        )
        return math.sqrt(var)

    def config(self) -> dict:
        """Hyper-parameters, for checkpoints (`MaternGMRF(domain, **config)`), mean excluded."""
        return {"alpha": self.alpha, "kappa": self.kappa, "tau": self.tau}

    def __repr__(self) -> str:
        std = "" if self.std is None else f", std={self.std:.4g}"
        return (
            f"MaternGMRF(domain={self.domain!r}, alpha={self.alpha}, range={self.range:.4g}{std})"
        )

    def with_params(self, *, kappa: float, tau: float) -> MaternGMRF:
        r"""The same field family on the same domain with other :math:`\kappa, \tau`.

        It shares the FEM matrices.
        """
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        if not (kappa > 0 and tau > 0 and math.isfinite(kappa) and math.isfinite(tau)):
            raise ValueError(f"kappa and tau must be positive and finite, got {kappa!r}, {tau!r}")
        other.kappa, other.tau = float(kappa), float(tau)
        return other

    # ------------------------------------------------------------------ matrices
    def operator_k(self) -> sp.csc_matrix:
        r""":math:`K = \kappa^2 M + S`, sparse `(N, N)`."""
        return (sp.diags(self.kappa**2 * self._mass) + self._stiffness).tocsc()

    def precision(self) -> sp.csc_matrix:
        r"""The precision `Q` `(N, N)`, sparse, symmetric positive definite."""
        k = self.operator_k()
        q = k
        m_inv = sp.diags(1.0 / self._mass)
        for _ in range(self.alpha - 1):
            q = k @ m_inv @ q
        q = (self.tau**2) * q
        return ((q + q.T) * 0.5).tocsc()

    def log_det_precision(self) -> float:
        r""":math:`\log\det Q = 2N\log\tau + \alpha\log\det K - (\alpha - 1)\log\det M`.

        It needs one factorisation of `K` per :math:`\kappa` (kept for the `with_params` family).
        """
        n = self.domain.num_nodes
        log_k = self._log_det_k.get(self.kappa)
        if log_k is None:
            log_k = SparseCholesky(self.operator_k()).logdet()
            if len(self._log_det_k) >= 64:
                self._log_det_k.clear()
            self._log_det_k[self.kappa] = log_k
        return (
            2 * n * math.log(self.tau)
            + self.alpha * log_k
            - (self.alpha - 1) * float(np.log(self._mass).sum())
        )

    def spectrum(self, eigenvalues) -> np.ndarray:
        r"""Variances :math:`\tau^{-2}(\kappa^2 + \lambda_k)^{-\alpha}` of the eigenfunctions.

        The eigenfunctions are mass-orthonormal; the variances are for the dense
        `GaussianPrior(spectrum=...)`.
        """
        lam = np.asarray(eigenvalues, dtype=np.float64)
        return 1.0 / (self.tau**2 * (self.kappa**2 + lam) ** self.alpha)

    # ------------------------------------------------------------------ densities and draws
    def _mean_vector(self) -> np.ndarray:
        return np.broadcast_to(self.mean, (self.domain.num_nodes,))

    def log_prob(self, x) -> np.ndarray:
        r"""Log-density of fields `x` `(B, N)` (Lebesgue on node values), `(B,)`."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if x.shape[-1] != self.domain.num_nodes:
            raise ValueError(f"x must have shape (B, N={self.domain.num_nodes}), got {x.shape}")
        r = x - self._mean_vector()
        q = self.precision()
        quad = np.einsum("bn,bn->b", r, (q @ r.T).T)
        n = self.domain.num_nodes
        return 0.5 * self.log_det_precision() - 0.5 * quad - 0.5 * n * math.log(2 * math.pi)

    def sample(self, n: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
        r"""`n` exact draws `(n, N)`: :math:`x = \mu + Q^{-1} R z` with :math:`R R^T = Q`.

        See `SparseCholesky.draw`.
        """
        rng = np.random.default_rng() if rng is None else rng
        factor = SparseCholesky(self.precision())
        z = rng.standard_normal((self.domain.num_nodes, n))
        x = factor.draw(z)
        return (x.T + self._mean_vector()).reshape(n, -1)
