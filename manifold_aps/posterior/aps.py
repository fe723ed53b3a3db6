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

The engine builds on the shared pieces of the sibling engines: `ConditionedEngine`
(`posterior.conditioned`: units, first estimate, conditioning) and `DistillationObjective`
(`posterior.objective`: prior log-density, likelihood and warm-up), trained by the one `Trainer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from manifold_aps.datasets import TensorSource
from manifold_aps.flows import ConditionalFlow, FlowCondition, FlowConfig
from manifold_aps.geometry import Domain
from manifold_aps.operators import GaussianNoise, LinearOperator
from manifold_aps.posterior.conditioned import VARIANCE_MODES, ConditionedEngine
from manifold_aps.posterior.objective import (
    DistillationObjective,
    data_weight,
    prior_log_prob,
    prior_signal_bank,
)
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.training import step_generator

__all__ = ["APSConfig", "AmortizedFlowPosterior", "ReverseKLObjective"]


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
        variance_modes: modes of the first estimate's prior-variance expansion (iterative
            estimate); its eigenvectors are saved with the weights (`N x variance_modes` float64:
            3.3 MB at 1617 nodes for the default 256), so a small model to ship may take fewer.
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
    variance_modes: int = VARIANCE_MODES

    def __post_init__(self):
        if self.forward_kl_weight < 0:
            raise ValueError(f"forward_kl_weight must be >= 0, got {self.forward_kl_weight}")
        if self.forward_kl_signals not in ("prior", "data"):
            raise ValueError(
                f"forward_kl_signals must be 'prior' or 'data', got {self.forward_kl_signals!r}"
            )

    def to_dict(self) -> dict:
        """Plain types, for checkpoints.

        The forward-KL settings are written only when the term is on, `variance_modes` only when
        not the default: a checkpoint without them (every one made before they existed) is the
        reverse KL alone with the default modes, and resumes as such.
        """
        d = asdict(self)
        d["flow"] = self.flow.to_dict()
        if self.forward_kl_weight == 0:
            for key in _FORWARD_KL_SETTINGS:
                d.pop(key)
        if self.variance_modes == VARIANCE_MODES:  # likewise: written only when not the default
            d.pop("variance_modes")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> APSConfig:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["flow"] = FlowConfig(**d["flow"])
        return cls(**d)


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
        super().__init__(
            domain,
            channels,
            prior,
            noise,
            config.cg_iterations,
            config.dense_limit,
            config.variance_modes,
        )
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
