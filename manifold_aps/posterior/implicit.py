r"""Implicit generator distilled with an integral KL (DAVI-style): one pass per sample, no density.

The generator maps a perturbed, lifted observation to a posterior sample,

.. math::
    z = G_\phi(\tilde y, A) = \hat z(y, A) + \xi_A + g_\phi\big(\text{features}(y, A), \xi_A\big),
    \qquad \xi_A = B(y, A)\,\xi,\ \xi \sim N(0, I),

in the prior's standardised units: :math:`\hat z` is the learned Tikhonov first estimate shared
with the APS flow (`ConditionedEngine`), :math:`\tilde y = \hat z + \xi_A` is the observation
lifted to every node and perturbed by noise shaped like the first posterior guess (:math:`B =
L^{-T}` with the Cholesky factor of the estimate's precision on small domains, the square root
of its variance proxy otherwise) — our perturbed-observation bridge: the noise at the input is
what makes samples differ — and :math:`g_\phi` is a geometry-aware residual network, zero at
initialisation, so a fresh generator draws from the Gaussian anchor of the APS flow.

Training uses observations only (clean signals only simulate `y`). Per observation it follows the
gradient of :math:`\mathbb E_q[-\log p(y\mid x)] + \mathrm{IKL}(q\,\|\,p)` where the integral KL

.. math::
    \mathrm{IKL} = \int_{t_0}^{t_1} \tfrac{1}{t_1 - t_0}\,
    \mathrm{KL}\big(q_t(\cdot\mid y)\,\|\,p_t\big)\,dt,
    \qquad \nabla_z = \mathbb E_{t,\epsilon}\Big[\tfrac{\alpha_t}{\sigma_t}\big(\epsilon_p(z_t, t)
    - \epsilon_\psi(z_t, t \mid y)\big)\Big],\ z_t = \alpha_t z + \sigma_t\epsilon,

compares the generator's diffused distribution with the prior's at every diffusion time in
:math:`[t_0, t_1]` (uniform weight in t; the factor :math:`\alpha_t/\sigma_t` turns the
noise-prediction difference into a score difference, so that at small t the gradient is the
exact reverse-KL gradient :math:`s_q - s_p` and the data term keeps its true
:math:`1/(2\sigma^2)` weight — temperature 1). :math:`\epsilon_p` is the prior's own noise
prediction (exact for a Gaussian prior); :math:`\epsilon_\psi = \epsilon_p + r_\psi` is an
auxiliary *conditional* score of the generator's samples, trained alternately — here in the same
step, on detached samples — by denoising score matching. Its residual :math:`r_\psi` starts at
zero, so the first gradients come from the data term alone (as in Diff-Instruct, where the
auxiliary network starts as a copy of the prior).

Deviations from the DAVI code (see `../shared/methods/davi.md`): no clean signals anywhere (no
supervised or GAN term, no clean signal in the bridge); the prior's own noise schedule; an
auxiliary score conditioned on `(y, A)` (DAVI's models the aggregate over all observations,
which does not pin each conditional's entropy); the likelihood with its true weight.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from manifold_aps.flows.conditioner import GraphConditioner
from manifold_aps.geometry import Domain
from manifold_aps.nn import DomainTensors
from manifold_aps.operators import GaussianNoise, LinearOperator
from manifold_aps.posterior.conditioned import ConditionedEngine, ObservationEncoding
from manifold_aps.posterior.objective import DistillationObjective, data_weight
from manifold_aps.training import step_generator

__all__ = ["KIND", "ImplicitConfig", "ImplicitGenerator", "IntegralKLObjective", "implicit_recipe"]

KIND = "implicit-generator"


@dataclass(frozen=True, kw_only=True)
class ImplicitConfig:
    """Settings of the implicit generator and its integral-KL training.

    Attributes:
        width, depth: hidden channels and residual blocks of the generator and auxiliary networks.
        num_modes: Laplace-Beltrami modes of their spectral filters.
        cg_iterations: iterations of the first estimate.
        dense_limit: domains up to this many nodes use the dense (Cholesky) estimate and noise
            shape.
        t_min, t_max: the diffusion-time window of the integral KL.
        samples_per_observation: generator samples per observation in each training step.
        aux_weight: weight of the auxiliary score's DSM loss (it only trains the auxiliary network).
        warmup_fraction: fraction of training over which the likelihood weight rises to 1 (0: none;
            a fresh generator already starts at a data-aware Gaussian).
        aux_warmup_fraction: fraction of training during which only the auxiliary score learns
            (the generator waits until the IKL gradient it gets is informed: with a zero residual
            the data term alone would shrink its spread).
        generator_lr_scale: the generator's learning rate relative to the auxiliary score's (a
            slower generator lets the auxiliary score keep up: two time scales).
    """

    width: int = 32
    depth: int = 2
    num_modes: int = 32
    cg_iterations: int = 30
    dense_limit: int = 2000
    t_min: float = 0.002
    t_max: float = 0.05
    samples_per_observation: int = 2
    aux_weight: float = 1.0
    warmup_fraction: float = 0.0
    aux_warmup_fraction: float = 0.3
    generator_lr_scale: float = 0.2

    def __post_init__(self):
        if not 0 < self.t_min < self.t_max <= 1:
            raise ValueError(
                f"need 0 < t_min < t_max <= 1, got t_min={self.t_min}, t_max={self.t_max}"
            )
        if self.samples_per_observation < 1 or self.width < 1 or self.depth < 1:
            raise ValueError("samples_per_observation, width and depth must be >= 1")

    def to_dict(self) -> dict:
        """Plain types, for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ImplicitConfig:
        """Inverse of `to_dict`."""
        return cls(**d)


class ImplicitGenerator(ConditionedEngine):
    """The DAVI-style engine: a one-pass generator `x = G(y~, A)` and its auxiliary score.

    Arguments:
        domain: the domain.
        channels: `C`.
        prior: the prior (`GaussianPrior` or `ScorePrior`); its normaliser fixes the units.
        noise: the observation noise (sigma in physical units).
        config: an `ImplicitConfig`.

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import HealpixSphere
        >>> from manifold_aps.operators import GaussianNoise, Mask
        >>> from manifold_aps.priors import GaussianPrior
        >>> d = HealpixSphere(2)
        >>> gen = ImplicitGenerator(d, 1, GaussianPrior(d), GaussianNoise(0.1))
        >>> A = Mask(d, torch.arange(48) % 3 == 0)
        >>> gen.sample(A(torch.ones(2, 48, 1)), A, 5).shape
        torch.Size([5, 2, 48, 1])
    """

    AUX_CONTEXT = 2  # log sigma_t, alpha_t

    def __init__(
        self,
        domain: Domain,
        channels: int,
        prior,
        noise: GaussianNoise,
        config: ImplicitConfig | None = None,
    ):
        config = config or ImplicitConfig()
        super().__init__(domain, channels, prior, noise, config.cg_iterations, config.dense_limit)
        self.config = config
        self.graph = DomainTensors(domain, config.num_modes, num_positional=0)
        feats = self.num_features + channels
        self.generator = GraphConditioner(feats, channels, self.CONTEXT, config.width, config.depth)
        # the auxiliary score also sees z_t, its offset from the diffused estimate in noise units
        # and the prior's own noise prediction, so that the residual it learns is nearly pointwise
        self.aux = GraphConditioner(
            feats + 2 * channels,
            channels,
            self.CONTEXT + self.AUX_CONTEXT,
            config.width,
            config.depth,
        )

    def generator_parameters(self):
        """Parameters of the generator (the first estimate included), not of the auxiliary score."""
        return [p for name, p in self.named_parameters() if not name.startswith("aux.")]

    def optimizer_groups(self):
        """For the `Trainer`: the generator at `generator_lr_scale`, the auxiliary score at 1."""
        return [
            (self.generator_parameters(), self.config.generator_lr_scale),
            (list(self.aux.parameters()), 1.0),
        ]

    def _shaped_noise(self, enc: ObservationEncoding, n: int, generator, dtype) -> torch.Tensor:
        """`B xi` `(n, B, N, C)`: noise shaped by the first estimate's posterior covariance.

        The full covariance where the estimate has Cholesky factors (dense), else its diagonal
        (the log variance proxy), else white noise.
        """
        b, nn_, c = enc.features.shape[0], self.domain.num_nodes, self.channels
        xi = torch.randn(n, b, nn_, c, generator=generator, dtype=dtype)
        if enc.cholesky is not None:
            cols = xi.permute(1, 3, 2, 0)  # (B, C, N, n)
            shaped = torch.linalg.solve_triangular(enc.cholesky.transpose(-1, -2), cols, upper=True)
            return shaped.permute(3, 0, 2, 1)
        if enc.log_var is not None:
            return xi * torch.exp(0.5 * enc.log_var)[None]
        return xi

    def generate_z(self, y: torch.Tensor, operator: LinearOperator, n: int, *, generator=None):
        """`n` samples per observation in standardised units `(n, B, N, C)`, and the encoding."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        dtype = next(self.generator.parameters()).dtype
        enc = self.encode(y, operator, dtype)
        shaped = self._shaped_noise(enc, n, generator, dtype)
        base = shaped if enc.estimate is None else enc.estimate[None] + shaped
        b = enc.features.shape[0]
        feats = torch.cat([enc.features[None].expand(n, -1, -1, -1), shaped], dim=-1).reshape(
            n * b, self.domain.num_nodes, -1
        )
        context = enc.context.repeat(n, 1)
        residual = self.generator(feats, context, self.graph).reshape(
            n, b, self.domain.num_nodes, self.channels
        )
        return base + residual, enc

    def aux_residual(
        self,
        z_t: torch.Tensor,
        alpha: torch.Tensor,
        sigma: torch.Tensor,
        eps_prior: torch.Tensor,
        enc: ObservationEncoding,
        n: int,
    ) -> torch.Tensor:
        r"""The auxiliary residual :math:`r_\psi = \epsilon_\psi - \epsilon_p` `(n*B, N, C)`.

        It is evaluated at `z_t` `(n*B, N, C)` (sample-major), with the schedule's `alpha`, `sigma`
        `(n*B,)` and the prior's noise prediction there.
        """
        est = (
            enc.estimate.detach().repeat(n, 1, 1)
            if enc.estimate is not None
            else torch.zeros_like(z_t)
        )
        offset = (z_t - alpha[:, None, None] * est) / sigma[:, None, None]
        feats = torch.cat([enc.features.detach().repeat(n, 1, 1), z_t, offset, eps_prior], dim=-1)
        context = torch.cat(
            [enc.context.detach().repeat(n, 1), torch.log(sigma)[:, None], alpha[:, None]], dim=1
        )
        return self.aux(feats, context, self.graph)

    @torch.no_grad()
    def sample(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        n: int,
        *,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Posterior samples `(n, B, N, C)` in physical units (engine interface); one pass each."""
        return self.from_z(self.generate_z(y, operator, n, generator=rng)[0])


class IntegralKLObjective(DistillationObjective):
    r"""The implicit generator's training objective for the shared `Trainer`.

    Each step draws simulated observations, `S` generator samples each, and returns (per dimension)

    * the integral-KL surrogate :math:`\langle \mathrm{sg}[\nabla_z\mathrm{IKL}], z\rangle` (its
      gradient is the integral-KL gradient, see the module docstring) minus `w` times the
      log-likelihood of the samples, for the generator;
    * `aux_weight` times the DSM loss of the auxiliary score on the detached samples, for it.

    The two parts touch disjoint parameters, so one optimiser step updates both (the 1:1
    alternation of DAVI, done simultaneously).

    Arguments:
        engine: the `ImplicitGenerator`.
        prior: `GaussianPrior` (exact noise prediction) or `ScorePrior`.
        observations: a `SimulatedObservations` stream.
        total_steps: length of training (for the data warm-up).
        batch_size: global batch size.
        seed: seed of the per-step randomness.
    """

    def _times(self, count: int, generator, dtype) -> torch.Tensor:
        """Stratified uniform times in `[t_min, t_max]`, `(count,)`."""
        cfg = self.model.config
        u = (
            torch.arange(count, dtype=dtype) + torch.rand(count, generator=generator, dtype=dtype)
        ) / count
        return cfg.t_min + (cfg.t_max - cfg.t_min) * u[torch.randperm(count, generator=generator)]

    def terms(self, y, operator, generator) -> dict[str, torch.Tensor]:
        """Per-sample pieces `(S*B,)`: `ikl` surrogate, `loglik`, `dsm`; and the samples `x`.

        The samples are in physical units.
        """
        engine, sde = self.model, self.prior.sde
        s = engine.config.samples_per_observation
        z, enc = engine.generate_z(y, operator, s, generator=generator)
        x = engine.from_z(z)
        flat = x.reshape(-1, *x.shape[2:])
        loglik = self.log_likelihood(y, operator, x)
        zp = self.prior.normalize(flat)  # the prior's standardised units (those of its eps)
        count = zp.shape[0]
        # integral KL: the gradient direction at diffused samples, detached
        t = self._times(count, generator, zp.dtype)
        alpha, sigma = sde.scale_t(t), sde.sigma_t(t)
        eps = torch.randn(zp.shape, generator=generator, dtype=zp.dtype)
        z_t = alpha[:, None, None] * zp.detach() + sigma[:, None, None] * eps
        with torch.no_grad():
            r = engine.aux_residual(z_t, alpha, sigma, self.prior.eps(z_t, t), enc, s)
            direction = -(alpha / sigma)[:, None, None] * r  # alpha/sigma (eps_p - eps_psi)
        ikl = (direction * zp).flatten(1).sum(1)
        # auxiliary conditional score: DSM on detached samples at fresh times
        t2 = self._times(count, generator, zp.dtype)
        a2, s2 = sde.scale_t(t2), sde.sigma_t(t2)
        eps2 = torch.randn(zp.shape, generator=generator, dtype=zp.dtype)
        z_t2 = a2[:, None, None] * zp.detach() + s2[:, None, None] * eps2
        with torch.no_grad():
            eps_p = self.prior.eps(z_t2, t2)
        pred = eps_p + engine.aux_residual(z_t2, a2, s2, eps_p, enc, s)
        dsm = (pred - eps2).pow(2).flatten(1).sum(1)
        return {"ikl": ikl, "loglik": loglik, "dsm": dsm, "x": x}

    def forward(self, step: int, start: int, stop: int) -> torch.Tensor:
        """The loss (0-d, per dimension) of the rows `start:stop` of the batch of `step`."""
        g = step_generator(self.seed, step)
        batch = self.observations.batch(g, self.batch_size).slice(slice(start, stop))
        operator = batch.operator(self.model.domain)
        w = data_weight(step, self.total_steps, self.model.config.warmup_fraction)
        parts = self.terms(batch.y, operator, g)
        dims = self.model.domain.num_nodes * self.model.channels
        generator_loss = (parts["ikl"] - w * parts["loglik"]).mean() / dims
        if step < self.model.config.aux_warmup_fraction * self.total_steps:
            generator_loss = 0.0 * generator_loss  # the auxiliary score learns the anchor's first
        return generator_loss + self.model.config.aux_weight * parts["dsm"].mean() / dims


def implicit_recipe():
    """How `train_engine("implicit", ...)` builds, trains and reloads an `ImplicitGenerator`."""
    from manifold_aps.posterior.distill import EngineRecipe

    return EngineRecipe(
        kind=KIND,
        config_key="implicit",
        config_cls=ImplicitConfig,
        build=lambda domain, channels, prior, noise, settings, seed: ImplicitGenerator(
            domain, channels, prior, noise, settings
        ),
        objective=lambda engine, prior, observations, config: IntegralKLObjective(
            engine,
            prior,
            observations,
            total_steps=config.steps,
            batch_size=config.batch_size,
            seed=config.seed,
        ),
    )
