r"""Amortized VI with likelihood guidance (LAVPS-style): a network initialises MGDM's inner VI.

LAVPS (`../shared/methods/lavps.md` §3) keeps the zero-shot MGDM sampler
(`manifold_aps.posterior.mgdm`) and replaces most of its inner Adam iterations, in a window of
late (low-noise) steps, by one pass of a network :math:`f_\phi` that predicts the Gaussian
:math:`q = N(\mu, \mathrm{diag}\,e^{2\rho})` of the Gibbs conditional of :math:`z_s` as a residual
on the zero-shot initialisation (the bridge prior :math:`N(m, \mathrm{sd}^2 I)`):

.. math::
    \mu = m + \mathrm{sd}\cdot\Delta\mu_\phi, \qquad \rho = \log\mathrm{sd} + \Delta\rho_\phi,

with the prior statistics detached and :math:`f_\phi` a geometry-aware `GraphConditioner` whose
output layer starts at zero, so that a fresh amortizer *is* the zero-shot sampler. Per node it
sees :math:`z_t/\sqrt{\bar\alpha_t}`, the current estimate :math:`\hat z_0`, the lifted whitened
residual :math:`A^T[(y_z - A\hat z_0)\odot\mathbf 1_{obs}]/\sigma_z` and the coverage
:math:`A^T\mathbf 1_{obs}`; globally :math:`\log\sigma_t`, :math:`\log\sigma_s` (VE noise levels
:math:`\sqrt{(1-\bar\alpha)/\bar\alpha}`, log-scaled as §5 pitfall 9 advises) and the observed
fraction. The operator enters only through these lifts, which exist for any linear operator.

Training (`AmortizedVIObjective`) is unsupervised with respect to `x`: clean signals only simulate
`y` and :math:`z_t`; the loss is MGDM's own inner VI loss at the network's output (one Monte
Carlo sample, reparameterised, through the frozen denoiser into :math:`\phi`), on adjacent grid
pairs `(s, t)` of the window. At test time (`AmortizedVI.sample`) the network is used only in the
window, where each sample keeps the better of {network, zero-shot} by one Monte Carlo evaluation
of the loss (best-of-two, per sample), followed by `inner_steps_in_window` Adam steps on the true
operator; outside the window plain MGDM runs with `inner_steps_outside` Adam steps.

Deviations from the LAVPS code: the mean residual is predicted in units of the bridge std (a
scale-aware parameterisation of the same family: the bridge std spans two orders of magnitude
over the window); a graph network instead of an HDiT; the lift is the adjoint of the residual
of the current estimate instead of a pseudo-inverse of `y` (cheap and defined for every
operator); log noise levels in the context; best-of-two per sample, not per batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from manifold_aps.flows.conditioner import GraphConditioner
from manifold_aps.geometry import Domain
from manifold_aps.nn import DomainTensors
from manifold_aps.operators import GaussianNoise, LinearOperator
from manifold_aps.posterior.conditioned import ConditionedEngine
from manifold_aps.posterior.mgdm import (
    Candidate,
    DrivenSampler,
    MGDMProblem,
    StepContext,
    bridge_coefficients,
    check_grid,
    log_alpha_bar,
    zero_shot_init,
)
from manifold_aps.posterior.observations import ObservationBatch, SimulatedObservations
from manifold_aps.priors.sampling import time_grid
from manifold_aps.training import step_generator

__all__ = [
    "KIND",
    "AmortizedVI",
    "AmortizedVIConfig",
    "AmortizedVIObjective",
    "amortized_vi_recipe",
]

KIND = "amortized-vi"


@dataclass(frozen=True, kw_only=True)
class AmortizedVIConfig:
    """Settings of the amortized sampler (the grid and window must match between training and use).

    Attributes:
        steps: `K`, times of the MGDM grid (`K - 2` outer iterations).
        window: `(low, high)`: the network is used at the iterations whose midpoint has ascending
            grid index `k` in `low <= k < high` (`k = 0`: the last iteration, `s = t_min`);
            `0 <= low < high <= K - 2`. Training draws `k` uniformly in the same range.
        t_min: last time of the grid.
        lr: Adam learning rate of the inner VI steps at test time.
        inner_steps_in_window: Adam steps after the network's initialisation (on the true operator).
        inner_steps_outside: Adam steps of the zero-shot iterations outside the window.
        best_of: keep, per sample, the better of {network, zero-shot} initialisations (one Monte
            Carlo evaluation of the loss each); off: always the network's.
        width, depth, hops: hidden channels, residual blocks and diffusion hops of the network.
        num_modes: Laplace-Beltrami modes of its spectral filters.
    """

    steps: int = 8
    window: tuple[int, int] = (0, 4)
    t_min: float = 1e-3
    lr: float = 0.01
    inner_steps_in_window: int = 0
    inner_steps_outside: int = 1
    best_of: bool = True
    width: int = 32
    depth: int = 2
    hops: int = 2
    num_modes: int = 32

    def __post_init__(self):
        check_grid(self.steps, self.t_min)
        window = tuple(self.window)
        if len(window) != 2 or not all(isinstance(v, int) for v in window):
            raise ValueError(f"window must be two integers (low, high), got {self.window!r}")
        low, high = window
        if not 0 <= low < high <= self.steps - 2:
            raise ValueError(
                f"window must satisfy 0 <= low < high <= steps - 2 = {self.steps - 2}, "
                f"got {self.window!r}"
            )
        object.__setattr__(self, "window", window)
        if self.inner_steps_in_window < 0 or self.inner_steps_outside < 0:
            raise ValueError(
                "inner_steps_in_window and inner_steps_outside must be >= 0, got "
                f"{self.inner_steps_in_window}, {self.inner_steps_outside}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.width < 1 or self.depth < 1 or self.hops < 1 or self.num_modes < 1:
            raise ValueError("width, depth, hops and num_modes must be >= 1")

    def in_window(self, k: int) -> bool:
        """Whether the iteration with ascending midpoint index `k` uses the network."""
        return self.window[0] <= k < self.window[1]

    def to_dict(self) -> dict:
        """Plain types, for checkpoints."""
        d = asdict(self)
        d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AmortizedVIConfig:
        """Inverse of `to_dict`."""
        d = dict(d)
        d["window"] = tuple(d["window"])
        return cls(**d)


def _log_sigma_ve(lab: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\sqrt{(1-\bar\alpha)/\bar\alpha}` from :math:`\log\bar\alpha` (float64)."""
    return 0.5 * (torch.log(-torch.expm1(lab)) - lab)


class AmortizedVI(DrivenSampler, ConditionedEngine):
    r"""The LAVPS-style sampler: MGDM whose inner VI is initialised by a network in a late window.

    The prior is held by reference (frozen; not a submodule: it is neither saved with the
    amortizer nor cast by `.to()`). Units: the prior's standardised space (see `ConditionedEngine`).

    Arguments:
        domain: the domain.
        channels: `C`.
        prior: the prior (`GaussianPrior` or `ScorePrior`), with `sde`, `eps`, `normalize`.
        noise: the observation noise (sigma in physical units).
        config: an `AmortizedVIConfig`.
        max_batch: signals per sampling pass (samples times observations).

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import HealpixSphere
        >>> from manifold_aps.operators import GaussianNoise, Mask
        >>> from manifold_aps.priors import GaussianPrior
        >>> d = HealpixSphere(2)
        >>> engine = AmortizedVI(d, 1, GaussianPrior(d), GaussianNoise(0.1))
        >>> A = Mask(d, torch.arange(48) % 3 == 0)
        >>> engine.sample(A(torch.ones(2, 48, 1)), A, 5).shape
        torch.Size([5, 2, 48, 1])
        >>> engine.cost()
        (17, 2)
    """

    CONTEXT = 3  # log sigma_t, log sigma_s, observed fraction

    def __init__(
        self,
        domain: Domain,
        channels: int,
        prior,
        noise: GaussianNoise,
        config: AmortizedVIConfig | None = None,
        *,
        max_batch: int = 4096,
    ):
        super().__init__(domain, channels, prior, noise, 0, 0)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        object.__setattr__(self, "prior", prior)  # by reference, outside the module tree
        self.config = config or AmortizedVIConfig()
        self.max_batch = max_batch
        cfg = self.config
        self.graph = DomainTensors(domain, cfg.num_modes, num_positional=0)
        self.net = GraphConditioner(
            4 * channels, 2 * channels, self.CONTEXT, cfg.width, cfg.depth, cfg.hops
        )

    # -- the grid ---------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """Adam learning rate of the inner VI steps."""
        return self.config.lr

    def timesteps(self) -> torch.Tensor:
        """The grid `(K,)`, float64, from 1 down to `t_min`."""
        return time_grid(self.config.steps - 1, self.config.t_min)

    def ascending_times(self) -> torch.Tensor:
        """The grid in increasing order: `s = u[k]`, `t = u[k + 1]` at ascending index `k`."""
        return self.timesteps().flip(0)

    def cost(self) -> tuple[int, int]:
        """`(forward, backward)` denoiser passes per sample of `sample`.

        Forward: 1 at the start, and per iteration: `M + 1` (Adam steps, final estimate) plus 2
        for the best-of-two evaluation in the window (when `best_of`). Backward: `M` per
        iteration. The network's own passes (one per window iteration) are not counted.
        """
        cfg = self.config
        fwd, bwd = 1, 0
        for k in range(cfg.steps - 2):
            m = self._inner_steps(k)
            fwd += m + 1 + (2 if cfg.best_of and cfg.in_window(k) else 0)
            bwd += m
        return fwd, bwd

    # -- the network ------------------------------------------------------------------------
    def standardised_observations(self, y: torch.Tensor, operator: LinearOperator, dtype):
        """`(y_z, obs)`: `y` `(B, N_out, C)` standardised, and the observed-entry indicator.

        `y_z` is zero where unobserved; `obs` has the shape `(B, N_out, C)`.
        """
        y = y.to(dtype)
        obs = operator.range_mask
        obs = torch.ones_like(y) if obs is None else obs.to(dtype).expand_as(y)
        mean = self.norm_mean.to(dtype).expand(y.shape[0], self.domain.num_nodes, -1).contiguous()
        return (y - operator(mean)) / self.norm_std.to(dtype) * obs, obs

    def initial(
        self,
        z_t: torch.Tensor,
        z0: torch.Tensor,
        mean: torch.Tensor,
        std: torch.Tensor,
        lab_t: torch.Tensor,
        lab_s: torch.Tensor,
        y: torch.Tensor,
        operator: LinearOperator,
    ) -> Candidate:
        r"""The network's :math:`(\mu, \rho)` `(B, N, C)` for the inner VI at `(s, t)`.

        Arguments:
            z_t: state at `t` `(B, N, C)` (standardised).
            z0: current estimate of the clean signal `(B, N, C)`.
            mean: the bridge prior :math:`q_{s|0,t}`'s mean `(B, N, C)`.
            std: the bridge prior's std (0-d or `(B, 1, 1)`).
            lab_t: :math:`\log\bar\alpha` at `t` (float64, 0-d or `(B,)`).
            lab_s: :math:`\log\bar\alpha` at `s` (likewise).
            y: observations `(B, N_out, C)` in physical units.
            operator: their operator.

        Returns:
            `(mu, rho)` in the dtype of `z_t`; the prior statistics enter detached.
        """
        param = next(self.net.parameters())
        dtype, like = param.dtype, {"dtype": param.dtype, "device": param.device}
        b = z_t.shape[0]
        y_z, obs = self.standardised_observations(y, operator, dtype)
        z0n = z0.detach().to(dtype)
        sigma_z = (self.noise.sigma / self.norm_std).to(dtype)
        resid = operator.transpose((y_z - operator(z0n)) * obs) / sigma_z
        lab_t = torch.as_tensor(lab_t, dtype=torch.float64).expand(b)
        lab_s = torch.as_tensor(lab_s, dtype=torch.float64).expand(b)
        feats = torch.cat(
            [
                z_t.detach().to(dtype) * torch.exp(-0.5 * lab_t).to(**like)[:, None, None],
                z0n,
                resid,
                operator.transpose(obs),
            ],
            dim=-1,
        )
        frac = obs.flatten(1).mean(1)
        context = torch.stack(
            [_log_sigma_ve(lab_t).to(**like), _log_sigma_ve(lab_s).to(**like), frac], dim=1
        )
        out = self.net(feats, context, self.graph).to(z_t.dtype)
        c = self.channels
        sd = torch.as_tensor(std).detach().to(dtype=z_t.dtype, device=z_t.device)
        mu = mean.detach() + sd * out[..., :c]
        rho = torch.log(sd) + out[..., c:]
        return mu, rho

    # -- the sampler (hooks of mgdm.run_driver) --------------------------------------------
    def _inner_steps(self, k: int) -> int:
        cfg = self.config
        return cfg.inner_steps_in_window if cfg.in_window(k) else cfg.inner_steps_outside

    def _midpoint_rule(self, generator):
        return None  # deterministic midpoint: training and sampling share the (s, t) pairs

    def _init(self, ctx: StepContext) -> list[Candidate]:
        zero_shot = zero_shot_init(ctx)
        if not self.config.in_window(ctx.index):
            return zero_shot
        sde = self.prior.sde
        with torch.no_grad():
            net = self.initial(
                ctx.z_t,
                ctx.z0,
                ctx.mean,
                ctx.std,
                log_alpha_bar(sde, ctx.t),
                log_alpha_bar(sde, ctx.s),
                ctx.problem.y,
                ctx.problem.operator,
            )
        return [net, *zero_shot] if self.config.best_of else [net]


class AmortizedVIObjective(nn.Module):
    r"""The amortizer's training objective for the shared `Trainer`: `forward(step, start, stop)`.

    Each step draws a global batch of simulated observations; per example a grid index
    `k ~ U{low..high-1}` of the window, `s = u[k]`, `t = u[k+1]`, the forward-noised
    :math:`z_t = \alpha_t z + \sigma_t\epsilon` of the (standardised) clean signal, and
    :math:`\hat z_0 = D(z_t, t)` (no gradient). The loss is the inner VI loss at the network's
    output with one reparameterised sample, through the frozen denoiser, divided by `N C` and
    averaged over the local rows. Clean signals serve only to simulate `y` and :math:`z_t`.

    Arguments:
        engine: the `AmortizedVI` trained.
        prior: its prior (frozen here).
        observations: a `SimulatedObservations` stream.
        batch_size: global batch size.
        seed: seed of the per-step randomness.
        validation_size: observations of the fixed validation batch (`validation_loss`: the loss
            ratio network / zero-shot on it; 0 for none).
    """

    def __init__(
        self,
        engine: AmortizedVI,
        prior,
        observations: SimulatedObservations,
        *,
        batch_size: int,
        seed: int = 0,
        validation_size: int = 32,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = engine
        self.prior = prior
        for p in self.prior.parameters():
            p.requires_grad_(False)
        self.observations = observations
        self.batch_size, self.seed = batch_size, seed
        self.validation_size = validation_size

    def example(
        self, batch: ObservationBatch, generator: torch.Generator, rows: slice = slice(None)
    ) -> dict:
        """Training examples of rows `rows` of `batch`: `k`, times, `z_t`, `z0`, bridge, `eps`.

        All the randomness (`k`, the forward noise, the VI noise) is drawn from `generator` for the
        whole batch and then sliced, so that every process of a distributed run draws alike.
        """
        engine = self.model
        cfg = engine.config
        dtype = next(engine.net.parameters()).dtype
        u = engine.ascending_times()
        z = self.prior.normalize(batch.truth.to(dtype))
        k = torch.randint(cfg.window[0], cfg.window[1], (z.shape[0],), generator=generator)
        noise = torch.randn(z.shape, generator=generator, dtype=dtype)
        eps = torch.randn(z.shape, generator=generator, dtype=dtype)
        k, z, noise, eps, local = k[rows], z[rows], noise[rows], eps[rows], batch.slice(rows)
        s, t = u[k], u[k + 1]
        sde = self.prior.sde
        lab_s, lab_t = log_alpha_bar(sde, s), log_alpha_bar(sde, t)
        alpha, sigma = torch.exp(0.5 * lab_t), (-torch.expm1(lab_t)).sqrt()
        z_t = alpha.to(dtype)[:, None, None] * z + sigma.to(dtype)[:, None, None] * noise
        problem = MGDMProblem(
            self.prior, engine.noise, local.y.to(dtype), local.operator(engine.domain)
        )
        with torch.no_grad():
            z0 = problem.denoise(z_t, t)
        c_t, c_0, sd = bridge_coefficients(lab_t, lab_s, torch.zeros((), dtype=torch.float64))
        mean = c_t.to(dtype) * z_t + c_0.to(dtype) * z0
        return {
            "k": k,
            "s": s,
            "t": t,
            "lab_s": lab_s,
            "lab_t": lab_t,
            "z_t": z_t,
            "z0": z0,
            "mean": mean,
            "std": sd.to(dtype),
            "eps": eps,
            "problem": problem,
        }

    def losses(
        self,
        batch: ObservationBatch,
        generator: torch.Generator,
        *,
        zero_shot: bool = False,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        """Inner VI loss per example and dimension `(B,)` at the network's output.

        With `zero_shot=True`, at the zero-shot initialisation instead, for the same draws.
        """
        ex = self.example(batch, generator, rows)
        problem = ex["problem"]
        if zero_shot:
            mu, rho = ex["mean"], torch.log(ex["std"]).expand_as(ex["mean"])
        else:
            mu, rho = self.model.initial(
                ex["z_t"],
                ex["z0"],
                ex["mean"],
                ex["std"],
                ex["lab_t"],
                ex["lab_s"],
                problem.y,
                problem.operator,
            )
        loss, _, _ = problem.vi_loss(mu, rho, ex["mean"], ex["std"], ex["s"], ex["eps"])
        return loss / (self.model.domain.num_nodes * self.model.channels)

    @torch.no_grad()
    def loss_ratio(self, batch: ObservationBatch, seed: int = 0) -> float:
        """Mean loss of the network over that of the zero-shot initialisation on `batch`.

        Both use the same draws; below 1, the network improves on the zero-shot start.
        """
        net = self.losses(batch, torch.Generator().manual_seed(seed))
        zs = self.losses(batch, torch.Generator().manual_seed(seed), zero_shot=True)
        return float(net.mean() / zs.mean())

    def validation_loss(self, model) -> float:
        """`loss_ratio` on a fixed batch of the stream (drawn from `seed + 1`)."""
        if not self.validation_size:
            return float("nan")
        batch = self.observations.batch(
            torch.Generator().manual_seed(self.seed + 1), self.validation_size
        )
        return self.loss_ratio(batch, seed=self.seed + 2)

    def forward(self, step: int, start: int, stop: int) -> torch.Tensor:
        """Inner VI loss (0-d, per dimension) of the rows `start:stop` of the batch of `step`."""
        g = step_generator(self.seed, step)
        batch = self.observations.batch(g, self.batch_size)
        return self.losses(batch, g, rows=slice(start, stop)).mean()


def amortized_vi_recipe():
    """How `train_engine("avi", ...)` builds, trains and reloads an `AmortizedVI`."""
    from manifold_aps.posterior.distill import EngineRecipe

    return EngineRecipe(
        kind=KIND,
        config_key="vi",
        config_cls=AmortizedVIConfig,
        build=lambda domain, channels, prior, noise, settings, seed: AmortizedVI(
            domain, channels, prior, noise, settings
        ),
        objective=lambda engine, prior, observations, config: AmortizedVIObjective(
            engine, prior, observations, batch_size=config.batch_size, seed=config.seed
        ),
        fit_anchor=False,
    )
