r"""Exact posterior of a Whittle-Matérn GMRF observed at a set of nodes with Gaussian noise.

The truth is :math:`x = u + e`: a `MaternGMRF` field `u` plus an optional white nugget
:math:`e \sim N(0, \eta^2 I)` (small-scale variability of the truth itself), observed at nodes
`O` as :math:`y = x_O + \epsilon`, :math:`\epsilon \sim N(0, \mathrm{diag}(s^2))`. With
:math:`v = s^2 + \eta^2` the posterior of `u` has the sparse precision
:math:`Q_y = Q + H^T V^{-1} H` (`H` selects `O`) and mean
:math:`\mu + Q_y^{-1} H^T V^{-1}(y - H\mu)`;
one sparse factorisation of :math:`Q_y` (`SparseCholesky`) gives

* the mean (one solve), the exact marginal variances (Takahashi selected inversion; above a work
  budget, the Rao-Blackwellised Monte Carlo estimator of Sidén et al. 2018 with its standard
  error reported), samples by one solve each with the factor's square root;
* the log marginal likelihood
  :math:`\log p(y) = \tfrac12\log|Q| - \tfrac12\log|Q_y| - \tfrac12\sum\log v
  - \tfrac12(r^TV^{-1}r - b^TQ_y^{-1}b) - \tfrac{n}{2}\log 2\pi` (:math:`r = y - H\mu`,
  :math:`b = H^TV^{-1}r`), for fitting the hyper-parameters to gappy data (`fit_gmrf`).

At a hidden node the truth is `u + e` (variance :math:`\mathrm{Var}\,u + \eta^2`); at an observed
node :math:`x \mid u, y` is Gaussian with mean :math:`u + w(y - u)`, :math:`w = \eta^2/v`, and
variance :math:`\eta^2 s^2/v`, so samples of `x` are exact everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from manifold_aps.operators import GaussianNoise, Identity, LinearOperator, Mask, Subsample
from manifold_aps.priors.gmrf import MaternGMRF
from manifold_aps.sparse_cholesky import SparseCholesky

__all__ = [
    "EXACT_VARIANCE_WORK",
    "GMRFConditional",
    "GMRFObservation",
    "GMRFPosterior",
    "observed_nodes",
]

EXACT_VARIANCE_WORK = (
    2e9  # Takahashi steps (sum over columns of L of m^2 / 2) above which "auto" estimates
)
RBMC_SAMPLES = 100


def observed_nodes(operator: LinearOperator, b: int, c: int) -> np.ndarray:
    """Indices `(n_obs,)` of the nodes that `operator` observes for batch element `b`, channel `c`.

    Raises:
        ValueError: the operator is not a selection of nodes (`Mask`, `Subsample`, `Identity`).
    """
    if isinstance(operator, Mask):
        m = operator.mask
        return np.flatnonzero(m[min(b, m.shape[0] - 1), :, min(c, m.shape[2] - 1)].cpu().numpy())
    if isinstance(operator, Subsample):
        return operator.indices.cpu().numpy()
    if isinstance(operator, Identity):
        return np.arange(operator.domain.num_nodes)
    raise ValueError(
        f"the GMRF posterior takes operators that select nodes (Mask, Subsample, Identity), got "
        f"{type(operator).__name__}; use ExactGaussianPosterior (dense, up to 6000 nodes) "
        "for others"
    )


def _observed_values(
    y: torch.Tensor, operator: LinearOperator, idx: np.ndarray, b: int, c: int
) -> np.ndarray:
    values = y[b, :, c].detach().cpu().numpy().astype(np.float64)
    return values[idx] if isinstance(operator, Mask) else values


class GMRFObservation:
    r"""The posterior precision of `prior` observed at nodes `observed`, factorised once.

    Serves any number of fields observed at the same nodes with the same noise: `mean`,
    `variance`, `sample` and `log_likelihood` take the observed values.

    Arguments:
        prior: the `MaternGMRF` of `u`.
        observed: node indices `(n_obs,)`, distinct.
        noise_var: :math:`s^2`, a number or `(n_obs,)` (signal units squared), >= 0.
        nugget: :math:`\eta^2 \ge 0`; `noise_var + nugget` must be > 0 everywhere.
    """

    def __init__(self, prior: MaternGMRF, observed, noise_var=0.0, nugget: float = 0.0):
        n = prior.domain.num_nodes
        idx = np.asarray(observed, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= n)):
            raise ValueError(f"observed must be node indices in 0..{n - 1}")
        if np.unique(idx).size != idx.size:
            raise ValueError("observed node indices must be distinct")
        noise_var = np.broadcast_to(np.asarray(noise_var, dtype=np.float64), idx.shape)
        if (
            not (math.isfinite(nugget) and nugget >= 0)
            or np.any(~np.isfinite(noise_var))
            or np.any(noise_var < 0)
        ):
            raise ValueError("noise variances and the nugget must be finite and >= 0")
        total = noise_var + nugget
        if np.any(total <= 0):
            raise ValueError(
                "noise_var + nugget must be > 0 at every observed node "
                "(exact interpolation is singular)"
            )
        self.prior, self.observed, self.noise_var, self.nugget = (
            prior,
            idx,
            noise_var,
            float(nugget),
        )
        self.total_var = total
        weights = np.zeros(n)
        weights[idx] = 1.0 / total
        self.precision = (prior.precision() + sp.diags(weights)).tocsc()
        self.factor = SparseCholesky(self.precision)
        self._latent_vars: dict = {}  # (method, num_samples) -> (variance, error), for seeded runs
        self.variance_error: np.ndarray | None = (
            None  # standard error of an estimated variance, else None
        )

    @property
    def num_nodes(self) -> int:
        """Number of nodes `N` of the prior's domain."""
        return self.prior.domain.num_nodes

    def _rhs(self, values) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(values, dtype=np.float64)
        if values.shape[-1] != self.observed.size:
            raise ValueError(
                f"values must have {self.observed.size} observed entries, got shape {values.shape}"
            )
        if not np.all(np.isfinite(values)):
            raise ValueError(
                "observed values must be finite (hide missing values with the mask instead)"
            )
        mu = np.broadcast_to(self.prior.mean, (self.num_nodes,))
        resid = values - mu[self.observed]
        b = np.zeros((self.num_nodes,) + values.shape[:-1])
        b[self.observed] = (resid / self.total_var).T
        return resid, b

    def latent_mean(self, values) -> np.ndarray:
        r"""Posterior mean of `u` `(N,)` for `values` `(n_obs,)`."""
        _, b = self._rhs(values)
        return np.broadcast_to(self.prior.mean, (self.num_nodes,)) + self.factor.solve(b)

    # ------------------------------------------------------------------ variances
    def takahashi_work(self) -> float | None:
        """Steps of the exact selected inversion, or None when the factor does not expose `L`.

        The count is the sum over columns of `L` of m(m-1)/2; it is None under PARDISO (used only
        on large domains).
        """
        return self.factor.selected_inversion_work()

    def latent_variance(
        self, method: str = "auto", *, num_samples: int = RBMC_SAMPLES, rng=None
    ) -> np.ndarray:
        r"""Posterior variances of `u` `(N,)`.

        Arguments:
            method: ``"exact"`` (Takahashi recursions), ``"rbmc"`` (Rao-Blackwellised Monte Carlo:
                :math:`1/Q_{y,ii} + \frac1S\sum_s ((Q_y - \mathrm{diag}\,Q_y) z_s)_i^2
                / Q_{y,ii}^2`,
                :math:`z_s \sim N(0, Q_y^{-1})`, unbiased; its standard error is stored in
                `variance_error`), or ``"auto"``: exact below `EXACT_VARIANCE_WORK` steps (rbmc
                when the factor is PARDISO's, which is chosen only from 100k nodes, where the work
                was above that on every grid and mesh measured).
            num_samples: `S` for ``"rbmc"``.
            rng: a numpy Generator for ``"rbmc"`` (default seeded 0: results are reproducible).
        """
        if method not in ("auto", "exact", "rbmc"):
            raise ValueError(f"method must be 'auto', 'exact' or 'rbmc', got {method!r}")
        if method == "auto":
            work = self.takahashi_work()
            method = "exact" if work is not None and work <= EXACT_VARIANCE_WORK else "rbmc"
        key = (method, num_samples if method == "rbmc" else None)
        if rng is None and key in self._latent_vars:  # fields observed at the same nodes share it
            var, self.variance_error = self._latent_vars[key]
            return var
        if method == "exact":
            var, err = self.factor.inverse_diagonal(), None
        else:
            rng = np.random.default_rng(0) if rng is None else rng
            z = self.factor.draw(rng.standard_normal((self.num_nodes, num_samples)))
            diag = self.precision.diagonal()
            off = self.precision - sp.diags(diag)
            terms = ((off @ z) / diag[:, None]) ** 2
            var = 1.0 / diag + terms.mean(1)
            err = terms.std(1, ddof=1) / math.sqrt(num_samples)
        self.variance_error = err
        if rng is None:
            self._latent_vars[key] = (var, err)
        return var

    # ------------------------------------------------------------------ the truth x = u + e
    def _observed_weight(self) -> np.ndarray:
        return self.nugget / self.total_var

    def mean(self, values) -> np.ndarray:
        """Posterior mean of the truth `x` `(N,)`."""
        m = self.latent_mean(values)
        if self.nugget > 0:
            m[self.observed] += self._observed_weight() * (np.asarray(values) - m[self.observed])
        return m

    def variance(self, method: str = "auto") -> np.ndarray:
        """Posterior variance of the truth `x` `(N,)` (does not depend on the values)."""
        var = self.latent_variance(method).copy()
        if self.nugget > 0:
            w = self._observed_weight()
            hidden = np.ones(self.num_nodes, dtype=bool)
            hidden[self.observed] = False
            var[hidden] += self.nugget
            var[self.observed] = (1 - w) ** 2 * var[
                self.observed
            ] + self.nugget * self.noise_var / self.total_var
        return var

    def sample(self, values, n: int, *, rng: np.random.Generator) -> np.ndarray:
        """`n` exact posterior draws of the truth `x`, `(n, N)`."""
        mean_u = self.latent_mean(values)
        z = rng.standard_normal((self.num_nodes, n))
        u = mean_u[:, None] + self.factor.draw(z)
        if self.nugget > 0:
            e = rng.standard_normal((self.num_nodes, n))
            hidden = np.ones(self.num_nodes, dtype=bool)
            hidden[self.observed] = False
            u[hidden] += math.sqrt(self.nugget) * e[hidden]
            w = self._observed_weight()[:, None]
            uo = u[self.observed]
            cond_std = np.sqrt(self.nugget * self.noise_var / self.total_var)[:, None]
            u[self.observed] = (
                uo
                + w * (np.asarray(values, dtype=np.float64)[:, None] - uo)
                + cond_std * e[self.observed]
            )
        return u.T

    def log_likelihood(self, values, *, log_det_prior: float | None = None) -> np.ndarray:
        r"""Log marginal likelihood :math:`\log p(y)` of `values`: a number or `(B,)`.

        Arguments:
            values: the observed values `(n_obs,)` or `(B, n_obs)`.
            log_det_prior: :math:`\log|Q|` if already known (it does not depend on the values).
        """
        return self.likelihood_terms(values, log_det_prior=log_det_prior)[0]

    def likelihood_terms(
        self, values, *, log_det_prior: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        r"""`(log p(y), y^T Cov(y)^{-1} y)`, each a number or `(B,)`.

        Here :math:`y` are the residuals from the prior mean.

        The quadratic form :math:`y^T\mathrm{Cov}(y)^{-1}y` is what a common scale of the covariance
        multiplies (`fit_gmrf` profiles that scale out). It is computed as the minimum it is,
        :math:`(r - H\hat u)^TV^{-1}(r - H\hat u) + \hat u^TQ\hat u` at the posterior mean
        :math:`\hat u = Q_y^{-1}H^TV^{-1}r`: a sum of two positive terms, in which an error of
        :math:`\hat u` enters only at second order, where the textbook
        :math:`r^TV^{-1}r - b^TQ_y^{-1}b` cancels two numbers about :math:`1/\eta^2` times larger
        than their difference (they differ by 3e-3 of 4.1e6 on a 1.04 M-cell grid with a nugget of
        0.01, 1e-5 at 260k cells).
        """
        values = np.asarray(values, dtype=np.float64)
        resid, b = self._rhs(values)
        sol = self.factor.solve(b)  # (N, *B): the posterior mean minus the prior mean
        fitted = np.moveaxis(sol[self.observed], 0, -1)  # (*B, n_obs)
        prior_part = np.einsum("n...,n...->...", sol, self.prior.precision() @ sol)
        quad = ((resid - fitted) ** 2 / self.total_var).sum(-1) + prior_part
        log_q = self.prior.log_det_precision() if log_det_prior is None else log_det_prior
        n_obs = self.observed.size
        loglik = (
            0.5 * log_q
            - 0.5 * self.factor.logdet()
            - 0.5 * float(np.log(self.total_var).sum())
            - 0.5 * quad
            - 0.5 * n_obs * math.log(2 * math.pi)
        )
        return loglik, quad


@dataclass
class GMRFConditional:
    """The posterior for a batch of observations `(B, N, C)`.

    Attributes:
        mean: posterior mean of the truth `(B, N, C)`.
        std: posterior pointwise standard deviation `(B, N, C)`.
        parts: per `(b, c)`, the `GMRFObservation` and the observed values.
    """

    mean: torch.Tensor
    std: torch.Tensor
    parts: list

    def sample(self, n: int, *, rng: torch.Generator | None = None) -> torch.Tensor:
        """`n` exact posterior samples `(n, B, N, C)`, float64 (seeded from `rng`)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=rng)) if rng is not None else None
        np_rng = np.random.default_rng(seed)
        b, nn, c = self.mean.shape
        out = torch.empty(n, b, nn, c, dtype=torch.float64)
        for (bi, ci), (obs, values) in self.parts:
            out[:, bi, :, ci] = torch.from_numpy(obs.sample(values, n, rng=np_rng))
        return out


class GMRFPosterior:
    r"""Exact posterior engine of a `MaternGMRF` under node selections with Gaussian noise.

    It has no size limit.

    Engine interface as `ExactGaussianPosterior`: `condition(y, operator)` returns a
    `GMRFConditional`; `sample(y, operator, n)` returns `(n, B, N, C)`. Fields observed at the
    same nodes share one factorisation.

    Arguments:
        prior: the `MaternGMRF`.
        noise: the observation noise (`GaussianNoise`, or its std as a number).
        nugget: white variance of the truth beyond the GMRF (see the module docstring).
        variance_method: ``"auto"``, ``"exact"`` or ``"rbmc"`` (see
            `GMRFObservation.latent_variance`).

    Example:
        >>> from manifold_aps.geometry import HealpixSphere
        >>> d = HealpixSphere(4)
        >>> post = GMRFPosterior(MaternGMRF.from_range(d, range_=0.8, std=1.0), GaussianNoise(0.1))
        >>> A = Mask(d, torch.arange(192) % 3 == 0)
        >>> y = A(torch.ones(2, 192, 1, dtype=torch.float64))
        >>> post.sample(y, A, 5, rng=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2, 192, 1])
    """

    def __init__(
        self,
        prior: MaternGMRF,
        noise: GaussianNoise | float,
        *,
        nugget: float = 0.0,
        variance_method: str = "auto",
    ):
        self.prior = prior
        self.noise_std = float(noise.sigma if isinstance(noise, GaussianNoise) else noise)
        self.nugget = float(nugget)
        self.variance_method = variance_method

    def observation(self, observed) -> GMRFObservation:
        """The factorised posterior precision for observations at nodes `observed`."""
        return GMRFObservation(self.prior, observed, self.noise_std**2, self.nugget)

    def _observations(self, y: torch.Tensor, operator: LinearOperator):
        """`((b, c), (GMRFObservation, observed values))` per field.

        Fields observed at the same nodes share one `GMRFObservation`.
        """
        cache: dict[bytes, GMRFObservation] = {}
        for b in range(y.shape[0]):
            for c in range(y.shape[2]):
                idx = observed_nodes(operator, b, c)
                if idx.tobytes() not in cache:
                    cache[idx.tobytes()] = self.observation(idx)
                yield (b, c), (cache[idx.tobytes()], _observed_values(y, operator, idx, b, c))

    def condition(self, y: torch.Tensor, operator: LinearOperator) -> GMRFConditional:
        """Posterior for observations `y` `(B, N_out, C)` made with `operator`."""
        operator.check_output(y)
        if operator.domain.fingerprint != self.prior.domain.fingerprint:
            raise ValueError("the operator and the prior live on different domains")
        bsz, _, ch = y.shape
        n = self.prior.domain.num_nodes
        mean = torch.empty(bsz, n, ch, dtype=torch.float64)
        std = torch.empty_like(mean)
        parts = []
        for (b, c), (obs, values) in self._observations(y, operator):
            mean[b, :, c] = torch.from_numpy(obs.mean(values))
            std[b, :, c] = torch.from_numpy(np.sqrt(obs.variance(self.variance_method)))
            parts.append(((b, c), (obs, values)))
        return GMRFConditional(mean=mean, std=std, parts=parts)

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

    def log_marginal_likelihood(self, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
        r""":math:`\log p(y)` summed over channels, `(B,)`."""
        log_q = self.prior.log_det_precision()
        out = torch.zeros(y.shape[0], dtype=torch.float64)
        for (b, _), (obs, values) in self._observations(y, operator):
            out[b] += float(obs.log_likelihood(values, log_det_prior=log_q))
        return out
