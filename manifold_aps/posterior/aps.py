r"""Amortized posterior sampling (APS): a conditional flow distilled from a prior by reverse KL.

The engine :math:`q_\phi(x \mid y, A)` is trained on observations only (no clean signals) to
minimise, averaged over observations,

.. math::
    \mathbb{E}_{x\sim q}\big[\log q_\phi(x\mid y) - w\log p(y\mid x) - \log p_\theta(x)\big]
    = \mathrm{KL}(q_\phi \,\|\, p(x\mid y)) - \log p(y) \quad (w = 1),

with :math:`\log p_\theta` exact for a `GaussianPrior` and the DSM evidence lower bound for a
`ScorePrior`. Sums, not means, over nodes and channels: the temperature is 1. `w` follows a
sigmoid warm-up from 0 to 1 that ends well before training does, so that the flow first spreads
like the prior (reverse KL is mode-seeking).

The pieces (objective terms, conditioning, trainer) are shared with the sibling engines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from manifold_aps.datasets import TensorSource
from manifold_aps.flows import ConditionalFlow, FlowCondition, FlowConfig
from manifold_aps.geometry import Domain
from manifold_aps.geometry.domain import sparse_to_torch
from manifold_aps.nn.graph import SavedEigenpairs
from manifold_aps.operators import GaussianNoise, LinearOperator, Mask
from manifold_aps.posterior.observations import SimulatedObservations, check_observations
from manifold_aps.priors.gaussian import GaussianPrior
from manifold_aps.priors.likelihood import elbo
from manifold_aps.training import step_generator

__all__ = [
    "APSConfig",
    "AmortizedFlowPosterior",
    "ConditionedEngine",
    "DistillationObjective",
    "ObservationEncoding",
    "ReverseKLObjective",
    "TikhonovEstimate",
    "data_weight",
    "prior_log_prob",
]


def prior_log_prob(
    prior, x: torch.Tensor, *, generator: torch.Generator | None = None, num_times: int = 1
) -> torch.Tensor:
    """`log p(x)` `(B,)` in physical units: exact for a `GaussianPrior`, the DSM ELBO otherwise."""
    if isinstance(prior, GaussianPrior):
        return prior.log_prob(x)
    return elbo(prior, x, num_times=num_times, generator=generator)


def data_weight(step: int, total: int, warmup_fraction: float) -> float:
    """Sigmoid warm-up of the likelihood weight.

    The weight is 0.5 at `warmup_fraction/2` of training and ~1 at `warmup_fraction`.
    """
    if warmup_fraction <= 0:
        return 1.0
    pivot = 0.5 * warmup_fraction * total
    rate = 12.0 / (warmup_fraction * total)
    return 1.0 / (1.0 + math.exp(-rate * (step - pivot)))


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

        lam = eigenvalues.double()
        target = -torch.log(variances.double().clamp_min(1e-30))
        hi = slice(self.num_modes, None) if lam.numel() > self.num_modes + 3 else slice(None)

        def objective(theta):
            with torch.enable_grad():
                t = torch.tensor(theta, requires_grad=True)
                a = t.exp()
                p = a[0] + a[1] * lam[hi] + a[2] * lam[hi] ** 2
                loss = (torch.log(p) - target[hi]).pow(2).mean()
                (grad,) = torch.autograd.grad(loss, t)
            return float(loss), grad.numpy()

        res = scipy.optimize.minimize(
            objective, self.log_a.detach().double().numpy(), jac=True, method="L-BFGS-B"
        )
        self.log_a.copy_(torch.from_numpy(res.x).to(self.log_a.dtype))
        if self.num_modes:
            p_low = self._poly(lam[: self.num_modes].to(self.log_a.dtype))
            self.log_gain.copy_((target[: self.num_modes].to(p_low.dtype) - torch.log(p_low)))
        return float(res.fun)

    def _poly(self, lam):
        a = self.log_a.exp()
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
        if isinstance(operator, Mask):
            hth = obs.transpose(1, 2)  # (B, C, N): diagonal of H^T H
            prec = q + torch.diag_embed(hth * inv_s2)
        else:
            h = operator_matrix(operator).to(y.dtype)
            rows = obs.transpose(1, 2)[..., None] * h  # unobserved rows are zero
            prec = q + inv_s2 * rows.transpose(-1, -2) @ rows
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


_FORWARD_KL_SETTINGS = ("forward_kl_weight", "forward_kl_signals", "prior_bank", "prior_bank_steps")


@dataclass(frozen=True, kw_only=True)
class APSConfig:
    """Settings of the APS engine.

    Attributes:
        flow: the flow architecture.
        cg_iterations: iterations of the first estimate (0 for none).
        dense_limit: domains with at most this many nodes use the dense (Cholesky) estimate and
            Gaussian anchor; larger ones the iterative one.
        samples_per_observation: flow samples per observation in each training step.
        elbo_times: `(t, eps)` pairs of the ELBO per sample (score priors only).
        warmup_fraction: fraction of training over which the likelihood weight rises to 1.
        forward_kl_weight: weight `lambda` of a forward-KL term added to the reverse KL,
            `lambda * E[-log q(x | y)] / (N C)` over pairs `(x, y)` with `y` simulated from `x`
            (mass-covering: it penalises a `q` too narrow to hold the `x`, where the reverse KL
            alone seeks modes); 0 for the reverse KL alone (APS as published).
        forward_kl_signals: where the forward term's `x` come from: "prior" (draws of the prior
            itself, made once at the start: no data enters) or "data" (the training signals the
            observations are simulated from, i.e. neural posterior estimation on them).
        prior_bank: number of prior draws of "prior" (reverse SDE, `prior_bank_steps` steps).
        prior_bank_steps: reverse-SDE steps of each prior draw.
    """

    flow: FlowConfig = FlowConfig()
    cg_iterations: int = 30
    dense_limit: int = 2000
    samples_per_observation: int = 1
    elbo_times: int = 1
    warmup_fraction: float = 0.2
    forward_kl_weight: float = 0.0
    forward_kl_signals: str = "prior"
    prior_bank: int = 256
    prior_bank_steps: int = 200

    def __post_init__(self):
        if self.forward_kl_weight < 0:
            raise ValueError(f"forward_kl_weight must be >= 0, got {self.forward_kl_weight}")
        if self.forward_kl_signals not in ("prior", "data"):
            raise ValueError(
                f"forward_kl_signals must be 'prior' or 'data', got {self.forward_kl_signals!r}"
            )

    def to_dict(self) -> dict:
        """Plain types, for checkpoints.

        The forward-KL settings are written only when the term is on: a checkpoint without
        them (every one made before they existed) is the reverse KL alone, and resumes as such.
        """
        d = asdict(self)
        d["flow"] = self.flow.to_dict()
        if self.forward_kl_weight == 0:
            for key in _FORWARD_KL_SETTINGS:
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> APSConfig:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["flow"] = FlowConfig(**d["flow"])
        return cls(**d)


@dataclass
class ObservationEncoding:
    r"""What an engine knows of `(y, A)`, in the prior's standardised units.

    Attributes:
        features: per-node features `(B, N, F)`: :math:`A^Ty_z`, coverage
            :math:`A^T\mathbf 1_{obs}`, and (with a first estimate) the estimate and its log
            variance proxy.
        context: global context `(B, 3)`: observed fraction, :math:`\log\sigma_z`, 1.
        estimate: the first estimate `(B, N, C)` or None.
        log_var: log posterior-variance proxy `(B, N, C)` or None.
        cholesky: Cholesky factors `(B, C, N, N)` of the estimate's precision (dense mode) or None.
    """

    features: torch.Tensor
    context: torch.Tensor
    estimate: torch.Tensor | None = None
    log_var: torch.Tensor | None = None
    cholesky: torch.Tensor | None = None


class ConditionedEngine(nn.Module):
    r"""Shared part of the amortized engines: units, first estimate and observation encoding.

    Works in the prior's standardised space `z = prior.normalize(x)` (identity for a Gaussian
    prior): `y` is mapped to :math:`y_z = (y - A\mu)/s` with noise :math:`\sigma/s`.

    Arguments:
        domain: the domain.
        channels: `C`.
        prior: the prior whose normaliser defines the standardised space.
        noise: the observation noise model (its sigma is in physical units).
        cg_iterations: iterations of the `TikhonovEstimate` (0: no first estimate).
        dense_limit: domains up to this many nodes use the dense estimate (Cholesky).
    """

    CONTEXT = 3

    def __init__(
        self,
        domain: Domain,
        channels: int,
        prior,
        noise: GaussianNoise,
        cg_iterations: int,
        dense_limit: int,
    ):
        super().__init__()
        self.domain, self.channels, self.noise = domain, channels, noise
        std = getattr(getattr(prior, "normalizer", None), "std", None)
        mean = getattr(getattr(prior, "normalizer", None), "mean", None)
        self.register_buffer(
            "norm_std", (std if std is not None else torch.ones(channels)).double().clone()
        )
        self.register_buffer(
            "norm_mean", (mean if mean is not None else torch.zeros(channels)).double().clone()
        )
        self.estimate = (
            TikhonovEstimate(domain, cg_iterations, dense=domain.num_nodes <= dense_limit)
            if cg_iterations
            else None
        )

    @property
    def num_features(self) -> int:
        """`F`, the per-node features of `encode`."""
        return 4 * self.channels if self.estimate is not None else 2 * self.channels

    # -- unit conversions (physical <-> standardised) ------------------------------------------
    def to_z(self, x):
        """Physical -> standardised."""
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)

    def from_z(self, z):
        """Standardised -> physical."""
        return z * self.norm_std.to(z.dtype) + self.norm_mean.to(z.dtype)

    def log_abs_det_to_z(self) -> torch.Tensor:
        """log|det dz/dx| for one signal."""
        return -self.domain.num_nodes * torch.log(self.norm_std).sum()

    def encode(
        self, y: torch.Tensor, operator: LinearOperator, dtype: torch.dtype
    ) -> ObservationEncoding:
        """Features of observations `y` `(B, N_out, C)` made with `operator`."""
        check_observations(y, operator)
        y = y.to(dtype)
        obs = operator.range_mask
        obs = torch.ones_like(y) if obs is None else obs.to(dtype).expand_as(y)
        mean_obs = operator(
            self.norm_mean.to(dtype).expand(y.shape[0], self.domain.num_nodes, -1).contiguous()
        )
        y_z = (y - mean_obs) / self.norm_std.to(dtype) * obs
        sigma_z = self.noise.sigma / self.norm_std.to(dtype)
        feats = [operator.transpose(y_z), operator.transpose(obs)]
        estimate = log_var = chol = None
        if self.estimate is not None:
            estimate, log_var, chol = self.estimate(y_z, operator, sigma_z)
            feats.extend([estimate, log_var])
        frac = obs.flatten(1).mean(1)
        context = torch.stack(
            [frac, torch.log(sigma_z.mean()).expand_as(frac), torch.ones_like(frac)], dim=1
        )
        return ObservationEncoding(torch.cat(feats, dim=-1), context, estimate, log_var, chol)


class AmortizedFlowPosterior(ConditionedEngine):
    r"""The APS engine: :math:`q_\phi(x \mid y, A)`, one flow pass per sample.

    Works in the prior's standardised space (see `ConditionedEngine`): the flow draws `z`, and
    `sample` returns `prior.denormalize(z)`. Conditioning features per node: :math:`A^Ty_z`, the
    coverage :math:`A^T\mathbf 1_{obs}`, the `TikhonovEstimate` and its log variance proxy; global
    context: observed fraction and :math:`\log\sigma_z`.

    Arguments:
        domain: the domain.
        channels: `C`.
        prior: the prior (its normaliser defines the standardised space).
        noise: the observation noise model (its sigma is in physical units).
        config: an `APSConfig`.
        seed: seed of the flow's partitions.
    """

    def __init__(
        self,
        domain: Domain,
        channels: int,
        prior,
        noise: GaussianNoise,
        config: APSConfig | None = None,
        seed: int = 0,
    ):
        config = config or APSConfig()
        super().__init__(domain, channels, prior, noise, config.cg_iterations, config.dense_limit)
        self.config = config
        self.flow = ConditionalFlow(
            domain, channels, self.num_features, self.CONTEXT, self.config.flow, seed=seed
        )

    def condition(self, y: torch.Tensor, operator: LinearOperator) -> FlowCondition:
        """Conditioning of the flow for observations `y` `(B, N_out, C)` made with `operator`."""
        dtype = next(self.flow.parameters()).dtype
        enc = self.encode(y, operator, dtype)
        anchor = (None, None, None)
        if enc.estimate is not None:
            # The flow starts at N(estimate, P^-1) (dense) or N(estimate, diag(var proxy)), in units
            # of its area-white base.
            log_base_var = 2 * torch.log(self.flow.base_std.to(dtype))[None, :, None]
            log_scale = (
                -0.5 * log_base_var.expand_as(enc.estimate)
                if enc.cholesky is not None
                else 0.5 * (enc.log_var - log_base_var)
            )
            anchor = (enc.estimate, log_scale, enc.cholesky)
        return self.flow.condition(enc.features, enc.context, *anchor)

    def sample_and_log_prob(self, y, operator, n: int, *, generator=None):
        """`n` samples `(n, B, N, C)` and their log q `(n, B)`, both in physical units."""
        cond = self.condition(y, operator)
        z, logq = self.flow.sample_and_log_prob(cond, n, generator=generator)
        return self.from_z(z), logq + self.log_abs_det_to_z().to(logq.dtype)

    @torch.no_grad()
    def sample(self, y, operator, n: int, *, rng=None) -> torch.Tensor:
        """Posterior samples `(n, B, N, C)` in physical units (engine interface)."""
        return self.sample_and_log_prob(y, operator, n, generator=rng)[0]

    def log_prob(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
        r"""Exact :math:`\log q(x \mid y, A)` for `x` `(S, B, N, C)` in physical units; `(S, B)`."""
        cond = self.condition(y, operator)
        z = self.to_z(x.to(cond.features.dtype))
        return self.flow.log_prob(z, cond) + self.log_abs_det_to_z().to(z.dtype)


class DistillationObjective(nn.Module):
    """Shared part of the engines' training objectives for the one `Trainer`.

    Holds the engine (`model`, what the `Trainer` optimises and checkpoints), the frozen prior, the
    stream of simulated observations and the schedule; `log_likelihood` scores samples.

    Arguments:
        engine: the engine trained.
        prior: `GaussianPrior` or `ScorePrior` (frozen).
        observations: a `SimulatedObservations` stream.
        total_steps: length of training (for warm-up schedules).
        batch_size: global batch size.
        seed: seed of the per-step randomness.
    """

    def __init__(
        self,
        engine: nn.Module,
        prior,
        observations: SimulatedObservations,
        *,
        total_steps: int,
        batch_size: int,
        seed: int = 0,
    ):
        super().__init__()
        self.model = engine
        self.prior = prior
        for p in self.prior.parameters():
            p.requires_grad_(False)
        self.observations = observations
        self.total_steps, self.batch_size, self.seed = total_steps, batch_size, seed

    def log_likelihood(
        self, y: torch.Tensor, operator: LinearOperator, x: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\log p(y \mid x)` `(S*B,)` of samples `x` `(S, B, N, C)` (sample-major).

        In physical units.
        """
        s = x.shape[0]
        flat = x.reshape(-1, *x.shape[2:])
        rep_mask = operator.range_mask.repeat(s, 1, 1) if operator.range_mask is not None else None
        rep_op = Mask(operator.domain, rep_mask) if isinstance(operator, Mask) else operator
        return self.model.noise.log_likelihood(
            y.repeat(s, 1, 1).to(flat.dtype), rep_op(flat), rep_mask
        )


class ReverseKLObjective(DistillationObjective):
    """The APS training objective for the shared `Trainer`: `forward(step, start, stop)`.

    Each step draws a global batch of simulated observations (clean signals are used only to
    simulate `y` and are then dropped), draws flow samples, and returns the mean over the local
    rows of `log q - w log p(y|x) - log p(x)`, divided by `N C` (nats per dimension); with
    `APSConfig.forward_kl_weight > 0` plus that weight times `-log q(x | y) / (N C)` of pairs
    simulated from the prior's draws or the training signals (`APSConfig.forward_kl_signals`).

    Arguments:
        engine: the `AmortizedFlowPosterior` trained.
        prior: `GaussianPrior` (exact) or `ScorePrior` (ELBO).
        observations: a `SimulatedObservations` stream.
        total_steps: length of training (for the warm-up schedule).
        batch_size: global batch size.
        seed: seed of the per-step randomness.
    """

    def __init__(
        self,
        engine: AmortizedFlowPosterior,
        prior,
        observations: SimulatedObservations,
        *,
        total_steps: int,
        batch_size: int,
        seed: int = 0,
    ):
        super().__init__(
            engine,
            prior,
            observations,
            total_steps=total_steps,
            batch_size=batch_size,
            seed=seed,
        )
        config = engine.config
        self.pairs = None  # the forward-KL term's (x, y) stream, if it has one
        if config.forward_kl_weight > 0 and config.forward_kl_signals == "prior":
            bank = prior_signal_bank(
                prior,
                engine.domain,
                engine.channels,
                config.prior_bank,
                steps=config.prior_bank_steps,
                seed=self.seed,
            )
            self.pairs = SimulatedObservations(
                TensorSource(bank, bank), observations.masks, observations.noise
            )

    def terms(self, y, operator, generator, weight: float = 1.0):
        """Per-observation terms `(log q, log p(y|x), log p(x))`, each `(S, B)`."""
        engine = self.model
        s = engine.config.samples_per_observation
        x, logq = engine.sample_and_log_prob(y, operator, s, generator=generator)
        flat = x.reshape(-1, *x.shape[2:])
        loglik = self.log_likelihood(y, operator, x).reshape(s, -1)
        logp = prior_log_prob(
            self.prior, flat, generator=generator, num_times=engine.config.elbo_times
        ).reshape(s, -1)
        return logq, loglik, logp

    def forward(self, step: int, start: int, stop: int) -> torch.Tensor:
        """Reverse-KL loss (0-d, per dimension) of the rows `start:stop` of the batch of `step`.

        Plus `forward_kl_weight` times the forward-KL term, when the engine's config has one.
        """
        g = step_generator(self.seed, step)
        rows = slice(start, stop)
        batch = self.observations.batch(g, self.batch_size).slice(rows)
        operator = batch.operator(self.model.domain)
        w = data_weight(step, self.total_steps, self.model.config.warmup_fraction)
        logq, loglik, logp = self.terms(batch.y, operator, g)
        dims = self.model.domain.num_nodes * self.model.channels
        loss = (logq - w * loglik - logp).mean() / dims
        weight = self.model.config.forward_kl_weight
        if weight > 0:
            pairs = (
                batch if self.pairs is None else self.pairs.batch(g, self.batch_size).slice(rows)
            )
            x = pairs.truth[None].to(next(self.model.parameters()).dtype)
            forward = -self.model.log_prob(x, pairs.y, pairs.operator(self.model.domain)).mean()
            loss = loss + weight * forward / dims
        return loss


@torch.no_grad()
def prior_signal_bank(
    prior, domain: Domain, channels: int, n: int, *, steps: int = 200, seed: int = 0
) -> torch.Tensor:
    """`n` draws of the prior in physical units, `(n, N, C)` float32.

    Exact for a `GaussianPrior`; for a score prior, reverse-SDE samples of `steps` steps, drawn
    in batches of 16 with a progress bar (minutes on a mesh of a few thousand vertices).
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(prior, GaussianPrior):
        return prior.sample(n, channels=channels, rng=g).float()
    from tqdm.auto import tqdm

    from manifold_aps.priors.sampling import reverse_sde_sample

    draws = []
    for start in tqdm(range(0, n, 16), desc="prior draws", leave=False):
        m = min(16, n - start)
        z = reverse_sde_sample(prior, (m, domain.num_nodes, channels), steps=steps, generator=g)
        draws.append(prior.denormalize(z.sample).float())
    return torch.cat(draws)
