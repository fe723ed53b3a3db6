r"""MGDM: zero-shot posterior sampling by midpoint Gibbs sweeps with an inner Gaussian VI.

A port of the mixture-guided diffusion sampler (Janati et al., ICML 2025, as coded in the LAVPS
repository; see `../shared/methods/lavps.md` §2 and §6) to signals `(B, N, C)` on any domain. It
runs in the prior's standardised space `z = prior.normalize(x)` with the prior's own VP-SDE:
continuous times in `[t_min, 1]`, :math:`\bar\alpha(t) = \alpha_t^2` (`sde.scale_t`), and the
denoiser :math:`D(z, t) = (z - \sigma_t\hat\epsilon(z, t))/\alpha_t`.

On a grid of `K` times :math:`1 = \tau_0 > \tau_1 > \dots > \tau_{K-1} = t_{min}`, each of the
`K - 2` outer iterations takes the triple :math:`(t_{next}, t, s) = (\tau_i, \tau_{i+1},
\tau_{i+2})` (deterministic midpoint: `s` is the next grid point) and does

1. a DDPM step :math:`z_t \sim q_{t\mid 0, t_{next}}(\cdot \mid \hat z_0, z_{t_{next}})` with the
   current estimate :math:`\hat z_0`;
2. the Gibbs conditional of :math:`z_s`: the bridge prior :math:`N(m, \mathrm{sd}^2 I) =
   q_{s\mid 0,t}(\cdot\mid\hat z_0, z_t)` tilted by the DPS-style likelihood
   :math:`g(y \mid D(z_s, s))`, fitted by a diagonal Gaussian :math:`q = N(\mu,
   \mathrm{diag}\,e^{2\rho})` with `M` Adam steps (fresh optimiser, one Monte Carlo sample per
   step) on the loss, per sample,

   .. math::
       L(\mu, \rho) = \frac{\|y - A\,\mathrm{denorm}(D(z_s, s))\|^2_{obs}}{2\sigma^2}
       + \frac{\|z_s - m\|^2}{2\,\mathrm{sd}^2} - \sum\rho, \qquad z_s = \mu + e^{\rho}\epsilon,

   which is :math:`\mathrm{KL}(q\,\|\,\pi_s)` up to a constant, written as in the LAVPS code (no
   normalising constants; it is positive, so loss ratios are meaningful);
3. :math:`z_s \sim q`, :math:`\hat z_0 = D(z_s, s)`, and :math:`z_t` is re-drawn from the exact
   bridge :math:`q_{t\mid s, t_{next}}(\cdot\mid z_s, z_{t_{next}})`.

The sample is the last Tweedie estimate :math:`D(z_s, t_{min})`, mapped to physical units (no
clamping: the signals here are unbounded). Bridge coefficients are computed in float64.

The one-step kernel (`gibbs_step`, built on `MGDMProblem`, `bridge_coefficients`,
`select_candidate`, `fit_inner_vi`) is separate from the driver (`mgdm_drive`), which takes an
*initialiser* of :math:`(\mu, \rho)`: the zero-shot one
(:math:`\mu = m`, :math:`\rho = \log\mathrm{sd}`, the unguided DDPM bridge) for MGDM, a network
(`manifold_aps.posterior.amortized_vi`) for the amortized sampler. When an initialiser proposes
several candidates, the driver keeps, per sample, the one with the lowest one-sample loss
(common random numbers across candidates).

Cost, per sample: `nfe` counts denoiser forward passes (1 at the start, per iteration one per
candidate when there are several, one per Adam step and one for :math:`\hat z_0`); `backward`
counts backward passes through the denoiser (one per Adam step), reported separately.

`midpoint="mix"` gives the original MGDM rule (a random midpoint between `t_min` and the next
grid point in the early iterations); LAVPS needs the deterministic one.

Accuracy. MGDM is approximate even with the inner VI solved exactly: the DPS-style likelihood at
the midpoint ignores the spread of :math:`x_0` given :math:`z_s` (overconfident at high noise),
the Gibbs chain makes one sweep per time and plugs in the Tweedie mean for :math:`x_0`, and the
variational family is diagonal. On the exact Gaussian yardstick (tests/test_amortized_vi.py)
the sample mean keeps an error of about a third of the prior-mean error at any grid size,
mostly at unobserved nodes, and few-step grids lose spread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from manifold_aps.operators import Compose, GaussianNoise, LinearOperator, Mask
from manifold_aps.posterior.observations import check_observations
from manifold_aps.priors.sampling import time_grid

__all__ = [
    "MGDM",
    "Candidate",
    "DriveResult",
    "DrivenSampler",
    "MGDMOutput",
    "MGDMProblem",
    "StepContext",
    "bridge_coefficients",
    "check_grid",
    "fit_inner_vi",
    "gibbs_step",
    "log_alpha_bar",
    "mgdm_drive",
    "prior_dtype",
    "copy_chunks",
    "repeat_operator",
    "run_driver",
    "select_candidate",
    "zero_shot_init",
]

Candidate = tuple[torch.Tensor, torch.Tensor]  # (mu, rho), each (B, N, C)
MIDPOINTS = ("deterministic", "mix")


@dataclass
class MGDMOutput:
    """Result of `MGDM.run`.

    Attributes:
        sample: posterior samples `(n, B, N, C)` in physical units.
        nfe: denoiser forward passes per sample.
        timesteps: the time grid `(K,)`, from 1 down to `t_min`.
        backward: backward passes through the denoiser per sample (not included in `nfe`).
        chosen: per outer iteration (from `t = 1` down), the fraction of samples whose first
            candidate won the best-of selection (the network's, for the amortizer); NaN where
            there was a single candidate.
    """

    sample: torch.Tensor
    nfe: int
    timesteps: torch.Tensor
    backward: int = 0
    chosen: list | None = None


def log_alpha_bar(sde, t: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\bar\alpha(t) = 2\log\alpha_t` in float64, same shape as `t`."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if hasattr(sde, "log_scale_t"):
        return 2 * sde.log_scale_t(t).double()
    return 2 * torch.log(sde.scale_t(t).double())


def bridge_coefficients(lab_l, lab_t, lab_s, eta: float = 1.0):
    r"""Coefficients of the Gaussian bridge :math:`q_{t\mid s,l}(z_t\mid z_s, z_l)`, `s < t < l`.

    :math:`z_t = c_l z_l + c_s z_s + \mathrm{std}\,\epsilon` with :math:`a_{st} =
    \bar\alpha_t/\bar\alpha_s` (likewise :math:`a_{tl}, a_{sl}`), :math:`\mathrm{std} =
    \eta\sqrt{(1-a_{tl})(1-a_{st})/(1-a_{sl})}`, :math:`c_l = \sqrt{(1 - a_{st} -
    \mathrm{std}^2)/(1-a_{sl})}`, :math:`c_s = \sqrt{a_{st}} - c_l\sqrt{a_{sl}}`; `eta = 1` is
    the DDPM posterior. Everything in float64 from the log-alpha-bars.

    Arguments:
        lab_l: :math:`\log\bar\alpha` at `l` (0-d or `(B,)`; :math:`\log\bar\alpha = 0` is the
            clean signal).
        lab_t: :math:`\log\bar\alpha` at `t` (likewise).
        lab_s: :math:`\log\bar\alpha` at `s` (likewise).
        eta: 0 (deterministic, DDIM) to 1 (DDPM).

    Returns:
        `(c_l, c_s, std)`, float64, each 0-d or `(B, 1, 1)`.
    """
    lab_l, lab_t, lab_s = (torch.as_tensor(v, dtype=torch.float64) for v in (lab_l, lab_t, lab_s))
    one_st = -torch.expm1(lab_t - lab_s)
    one_tl = -torch.expm1(lab_l - lab_t)
    one_sl = -torch.expm1(lab_l - lab_s)
    var = eta**2 * one_tl * one_st / one_sl
    c_l = ((one_st - var).clamp_min(0) / one_sl).sqrt()
    c_s = torch.exp(0.5 * (lab_t - lab_s)) - c_l * torch.exp(0.5 * (lab_l - lab_s))
    out = (c_l, c_s, var.sqrt())
    return tuple(v[:, None, None] if v.dim() == 1 else v for v in out)


def repeat_operator(operator: LinearOperator, n: int) -> LinearOperator | None:
    """The operator for `n` sample-major copies of its batch (`y.repeat(n, 1, 1)`).

    Returns the operator itself when it does not depend on the batch element, a `Mask` (or a
    `Compose` of such) with repeated masks, and None when it cannot be repeated (then run the
    copies one by one).
    """
    rmask = operator.range_mask
    if n == 1:
        return operator
    if isinstance(operator, Mask):
        return (
            operator
            if operator.mask.shape[0] == 1
            else Mask(operator.domain, operator.mask.repeat(n, 1, 1))
        )
    if isinstance(operator, Compose):
        outer, inner = repeat_operator(operator.outer, n), repeat_operator(operator.inner, n)
        return None if outer is None or inner is None else Compose(outer, inner)
    if rmask is None or rmask.shape[0] == 1:
        return operator
    return None


def copy_chunks(operator: LinearOperator, n: int, batch: int, max_batch: int):
    """Yield `(copies, operator for them)`: `n` sample-major copies of a batch of `batch` signals.

    At most `max_batch` signals a chunk (`copies * batch`, at least one copy); one copy a chunk
    when the operator cannot be repeated (`repeat_operator`).
    """
    per_chunk = max(1, max_batch // batch) if repeat_operator(operator, 2) is not None else 1
    for start in range(0, n, per_chunk):
        copies = min(per_chunk, n - start)
        yield copies, repeat_operator(operator, copies)


class MGDMProblem:
    """One posterior problem in the prior's standardised space: denoiser, likelihood, VI loss.

    Counts the denoiser forward and backward passes it does (`forward_signals`,
    `backward_signals`: signals passed, so per-sample counts are these over the batch size).

    Arguments:
        prior: a prior with `sde`, `eps(z, t)`, `normalize` and `denormalize`.
        noise: the observation noise (sigma in physical units).
        y: observations `(B, N_out, C)` in physical units, one per signal of the batch.
        operator: the linear operator of `y` (its batch matches `y`'s, or is shared).
    """

    def __init__(self, prior, noise: GaussianNoise, y: torch.Tensor, operator: LinearOperator):
        self.prior, self.noise, self.y, self.operator = prior, noise, y, operator
        obs = operator.range_mask
        self.obs = torch.ones_like(y) if obs is None else obs.to(y.dtype).expand_as(y)
        self.batch = y.shape[0]
        self.forward_signals = 0
        self.backward_signals = 0

    def denoise(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        r"""Tweedie denoiser :math:`D(z, t) = (z - \sigma_t\hat\epsilon(z, t))/\alpha_t`.

        Arguments:
            z: noisy signals `(B', N, C)` (standardised).
            t: their time, a float64 0-d tensor or `(B',)`.

        Returns:
            `(B', N, C)` in standardised units.
        """
        sde = self.prior.sde
        t = torch.as_tensor(t, dtype=torch.float64)
        a, sig = sde.scale_t(t), sde.sigma_t(t)
        if t.dim() == 1:
            a, sig = a[:, None, None], sig[:, None, None]
        eps = self.prior.eps(z, t.to(dtype=z.dtype, device=z.device))
        self.forward_signals += z.shape[0]
        return (z - sig.to(dtype=z.dtype, device=z.device) * eps) / a.to(
            dtype=z.dtype, device=z.device
        )

    def data_term(self, z0: torch.Tensor) -> torch.Tensor:
        r""":math:`\|y - A\,\mathrm{denorm}(z_0)\|^2/(2\sigma^2)` over observed entries, `(B',)`.

        `z0` may hold several copies of the batch (sample-major, `B'` a multiple of `B`).
        """
        x0 = self.prior.denormalize(z0)
        pred = torch.cat([self.operator(chunk) for chunk in x0.split(self.batch)])
        copies = z0.shape[0] // self.batch
        y, obs = self.y.repeat(copies, 1, 1), self.obs.repeat(copies, 1, 1)
        return 0.5 * ((y - pred) ** 2 * obs).flatten(1).sum(1) / self.noise.sigma**2

    def vi_loss(
        self,
        mu: torch.Tensor,
        rho: torch.Tensor,
        m: torch.Tensor,
        sd: torch.Tensor,
        s: torch.Tensor,
        eps: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The inner VI loss of one Monte Carlo sample, per signal (see the module docstring).

        Arguments:
            mu: variational mean `(B', N, C)`.
            rho: variational log-std `(B', N, C)`.
            m: bridge prior mean `(B', N, C)`.
            sd: bridge prior std (0-d or `(B', 1, 1)`).
            s: the midpoint time (0-d or `(B',)`, float64).
            eps: standard normal noise `(B', N, C)`.

        Returns:
            `(loss (B',), z_s, D(z_s, s))`.
        """
        z_s = mu + torch.exp(rho) * eps
        z0 = self.denoise(z_s, s)
        quad = 0.5 * ((z_s - m) / sd).pow(2).flatten(1).sum(1)
        return self.data_term(z0) + quad - rho.flatten(1).sum(1), z_s, z0


@dataclass
class StepContext:
    """What an initialiser of the inner VI sees at one outer iteration.

    Attributes:
        index: ascending grid index `k` of the midpoint: `s` is the `k`-th smallest grid time
            (`k = 0` is the last iteration, `s = t_min`), `t` the `k+1`-th.
        s, t: the midpoint and current times (float64, 0-d).
        z_t: current state at `t` `(B, N, C)` (standardised).
        z0: current estimate of the clean signal `(B, N, C)`.
        mean, std: the bridge prior :math:`q_{s|0,t}` mean `(B, N, C)` and std (0-d).
        problem: the `MGDMProblem` (observations and operator).
    """

    index: int
    s: torch.Tensor
    t: torch.Tensor
    z_t: torch.Tensor
    z0: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    problem: MGDMProblem


def zero_shot_init(ctx: StepContext) -> list[Candidate]:
    """The zero-shot MGDM initialisation: the bridge prior itself, `(m, log sd)`."""
    rho = torch.log(ctx.std).to(dtype=ctx.mean.dtype, device=ctx.mean.device)
    return [(ctx.mean, rho.expand_as(ctx.mean))]


def select_candidate(
    problem: MGDMProblem,
    cands: list[Candidate],
    m: torch.Tensor,
    sd: torch.Tensor,
    s: torch.Tensor,
    eps: torch.Tensor,
) -> tuple[Candidate, torch.Tensor]:
    """Per signal, the candidate `(mu, rho)` of lowest one-sample inner loss (common noise `eps`).

    Costs one denoiser pass per candidate and signal. Returns `((mu, rho), index (B,))`.
    """
    copies = len(cands)
    with torch.no_grad():
        mus, rhos = torch.cat([c[0] for c in cands]), torch.cat([c[1] for c in cands])
        loss, _, _ = problem.vi_loss(
            mus, rhos, m.repeat(copies, 1, 1), sd, s, eps.repeat(copies, 1, 1)
        )
        best = loss.view(copies, -1).argmin(0)
        sel = best[None, :, None, None].expand(1, *m.shape)
        mu = torch.stack([c[0] for c in cands]).gather(0, sel)[0]
        rho = torch.stack([c[1] for c in cands]).gather(0, sel)[0]
    return (mu, rho), best


def fit_inner_vi(
    problem: MGDMProblem,
    init: Candidate,
    m: torch.Tensor,
    sd: torch.Tensor,
    s: torch.Tensor,
    *,
    steps: int,
    lr: float,
    randn: Callable[[], torch.Tensor],
) -> Candidate:
    """`steps` Adam steps (a fresh optimiser, one Monte Carlo sample each) on the inner VI loss.

    The loss is summed over signals, so each signal's `(mu, rho)` follows its own gradient
    (Adam is per coordinate). Gradients are taken with respect to `(mu, rho)` only, never the
    prior's parameters. Returns the detached `(mu, rho)`.
    """
    mu = init[0].detach().clone().requires_grad_(True)
    rho = init[1].detach().clone().requires_grad_(True)
    if steps > 0:
        opt = torch.optim.Adam([mu, rho], lr=lr)
        for _ in range(steps):
            loss, _, _ = problem.vi_loss(mu, rho, m, sd, s, randn())
            mu.grad, rho.grad = torch.autograd.grad(loss.sum(), [mu, rho])
            problem.backward_signals += mu.shape[0]
            opt.step()
    return mu.detach(), rho.detach()


def gibbs_step(
    problem: MGDMProblem,
    z_next: torch.Tensor,
    z0: torch.Tensor,
    labs: tuple,
    times: tuple,
    index: int,
    *,
    init: Callable[[StepContext], list[Candidate]],
    steps: int,
    lr: float,
    randn: Callable[[], torch.Tensor],
    conditional: Callable[[StepContext], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""One outer iteration of MGDM (the one-step kernel).

    Arguments:
        problem: the `MGDMProblem`.
        z_next: state at :math:`t_{next}` `(B, N, C)`.
        z0: current estimate of the clean signal `(B, N, C)`.
        labs: :math:`\log\bar\alpha` at :math:`(t_{next}, t, s)` (float64, 0-d).
        times: `(t, s)` (float64, 0-d).
        index: ascending grid index of the midpoint (passed on to `init`).
        init: the initialiser of the inner VI.
        steps: Adam steps of the inner VI.
        lr: their learning rate.
        randn: draws standard normal noise of the signals' shape.
        conditional: optional sampler of the Gibbs conditional of :math:`z_s` itself, `ctx ->
            z_s` `(B, N, C)`, used instead of the inner VI (`init`, `steps`, `lr` unused); for
            diagnostics with a closed-form conditional (`benchmarks/mgdm_exactness.py`).

    Returns:
        `(z_t, z0, chosen)`: the re-drawn state at `t`, :math:`D(z_s, s)`, and the fraction of
        signals whose first candidate won the best-of selection (NaN for a single candidate).
    """
    lab_n, lab_t, lab_s = labs
    t, s = times
    zero = torch.zeros((), dtype=torch.float64)

    def cast(v):
        return v.to(dtype=z_next.dtype, device=z_next.device)

    with torch.no_grad():
        c_l, c_0, std = bridge_coefficients(lab_n, lab_t, zero)  # DDPM step t_next -> t
        z = cast(c_l) * z_next + cast(c_0) * z0 + cast(std) * randn()
        c_t, c_0, sd = bridge_coefficients(lab_t, lab_s, zero)  # bridge prior q_{s|0,t}
        m = cast(c_t) * z + cast(c_0) * z0
    ctx = StepContext(index, s, t, z, z0, m, sd, problem)
    chosen = float("nan")
    if conditional is None:
        cands = init(ctx)
        start = cands[0]
        if len(cands) > 1:
            start, best = select_candidate(problem, cands, m, cast(sd), s, randn())
            chosen = float((best == 0).to(torch.float64).mean())
        mu, rho = fit_inner_vi(problem, start, m, cast(sd), s, steps=steps, lr=lr, randn=randn)
        with torch.no_grad():
            z_s = mu + torch.exp(rho) * randn()
    else:
        with torch.no_grad():
            z_s = conditional(ctx)
    with torch.no_grad():
        z0 = problem.denoise(z_s, s)
        c_l, c_s, std = bridge_coefficients(lab_n, lab_t, lab_s)  # z_t | z_s, z_next
        z = cast(c_l) * z_next + cast(c_s) * z_s + cast(std) * randn()
    return z, z0, chosen


@dataclass
class DriveResult:
    """Result of `mgdm_drive`.

    Attributes:
        z0: final estimates `(B, N, C)` in standardised units.
        nfe: denoiser forward passes per signal.
        backward: backward passes through the denoiser per signal.
        chosen: per iteration (in order), the fraction of signals whose first candidate won the
            best-of selection (NaN where there was a single candidate).
    """

    z0: torch.Tensor
    nfe: float
    backward: float
    chosen: list


def mgdm_drive(
    problem: MGDMProblem,
    times: torch.Tensor,
    shape: tuple[int, int, int],
    *,
    init: Callable[[StepContext], list[Candidate]] = zero_shot_init,
    inner_steps: Callable[[int], int] = lambda k: 3,
    lr: float = 0.01,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    midpoint: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    conditional: Callable[[StepContext], torch.Tensor] | None = None,
) -> DriveResult:
    """The MGDM outer loop (one Gibbs sweep per iteration, `gibbs_step`), from noise to `t_min`.

    Arguments:
        problem: the `MGDMProblem` (its `y` has batch `shape[0]`).
        times: the grid `(K,)`, float64, decreasing from 1 to `t_min` (`K >= 3`).
        shape: `(B, N, C)` of the signals.
        init: maps a `StepContext` to candidates `[(mu, rho), ...]`; with several, each signal
            keeps the one of lowest one-sample loss.
        inner_steps: Adam steps `M` at the iteration of ascending midpoint index `k`.
        lr: Adam learning rate of the inner VI.
        generator: source of all the randomness.
        dtype: dtype of the signals.
        midpoint: optional `(i, t, s_grid) -> s` choosing the midpoint of iteration `i` in
            `(0, s_grid]` (default: `s = s_grid`, the deterministic midpoint LAVPS needs).
        conditional: optional sampler of the Gibbs conditional replacing the inner VI (see
            `gibbs_step`).

    Returns:
        a `DriveResult`.
    """
    k_total = times.shape[0]
    if k_total < 3:
        raise ValueError(f"the grid needs at least 3 times, got {k_total}")
    lab = log_alpha_bar(problem.prior.sde, times)

    def randn():
        return torch.randn(shape, generator=generator, dtype=dtype, device=problem.y.device)

    z = randn()
    with torch.no_grad():
        z0 = problem.denoise(z, times[0])
    chosen = []
    for i in range(k_total - 2):
        k = k_total - 3 - i
        t, s, lab_s = times[i + 1], times[i + 2], lab[i + 2]
        if midpoint is not None:
            s = torch.as_tensor(midpoint(i, t, s), dtype=torch.float64)
            lab_s = log_alpha_bar(problem.prior.sde, s)
        z, z0, frac = gibbs_step(
            problem,
            z,
            z0,
            (lab[i], lab[i + 1], lab_s),
            (t, s),
            k,
            init=init,
            steps=int(inner_steps(k)),
            lr=lr,
            randn=randn,
            conditional=conditional,
        )
        chosen.append(frac)
    b = shape[0]
    return DriveResult(
        z0.detach(), problem.forward_signals / b, problem.backward_signals / b, chosen
    )


class DrivenSampler:
    """The engine interface of samplers run by `run_driver` (MGDM and its amortized variant)."""

    def run(
        self, y: torch.Tensor, operator: LinearOperator, n: int, *, generator=None
    ) -> MGDMOutput:
        """`n` samples per observation `y` `(B, N_out, C)`; returns an `MGDMOutput`."""
        return run_driver(self, y, operator, n, generator)

    def sample(
        self, y: torch.Tensor, operator: LinearOperator, n: int, *, rng=None
    ) -> torch.Tensor:
        """Posterior samples `(n, B, N, C)` in physical units (engine interface)."""
        return self.run(y, operator, n, generator=rng).sample


class MGDM(DrivenSampler):
    """The zero-shot MGDM sampler for any prior (`sde`, `eps`, `normalize`, `denormalize`).

    Arguments:
        prior: a `ScorePrior` or `GaussianPrior`.
        noise: the observation noise (its sigma weighs the likelihood: temperature 1).
        steps: `K`, times of the grid (`K - 2` outer iterations), `>= 3`.
        inner_steps: Adam steps `M` of the inner VI at every iteration, `>= 0`.
        lr: Adam learning rate of the inner VI.
        t_min: last time of the grid (the sample is `D(z_s, t_min)`).
        midpoint: "deterministic" (`s` is the next grid point, as LAVPS needs) or "mix" (the
            original MGDM default: for the first `mix_fraction` of the iterations `s` is uniform
            between `t_min` and the next grid point, then deterministic).
        mix_fraction: see `midpoint`.
        max_batch: signals per pass (samples times observations); more are run in chunks.

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import HealpixSphere
        >>> from manifold_aps.operators import GaussianNoise, Mask
        >>> from manifold_aps.priors import GaussianPrior
        >>> d = HealpixSphere(2)
        >>> A = Mask(d, torch.arange(48) % 3 == 0)
        >>> out = MGDM(GaussianPrior(d), GaussianNoise(0.1), steps=5, inner_steps=2).run(
        ...     A(torch.ones(2, 48, 1)), A, 4)
        >>> out.sample.shape, out.nfe, out.backward
        (torch.Size([4, 2, 48, 1]), 10, 6)
    """

    def __init__(
        self,
        prior,
        noise: GaussianNoise,
        *,
        steps: int = 10,
        inner_steps: int = 3,
        lr: float = 0.01,
        t_min: float = 1e-3,
        midpoint: str = "deterministic",
        mix_fraction: float = 0.7,
        max_batch: int = 4096,
    ):
        check_grid(steps, t_min)
        if not isinstance(inner_steps, int) or inner_steps < 0:
            raise ValueError(f"inner_steps must be an integer >= 0, got {inner_steps!r}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if midpoint not in MIDPOINTS:
            raise ValueError(f"midpoint must be one of {list(MIDPOINTS)}, got {midpoint!r}")
        if not 0 <= mix_fraction <= 1:
            raise ValueError(f"mix_fraction must lie in [0, 1], got {mix_fraction}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.prior, self.noise = prior, noise
        self.steps, self.inner_steps, self.lr, self.t_min, self.max_batch = (
            steps,
            inner_steps,
            lr,
            t_min,
            max_batch,
        )
        self.midpoint, self.mix_fraction = midpoint, mix_fraction

    def timesteps(self) -> torch.Tensor:
        """The grid `(K,)`, float64, from 1 down to `t_min`."""
        return time_grid(self.steps - 1, self.t_min)

    def cost(self) -> tuple[int, int]:
        """`(forward, backward)` denoiser passes per sample: `1 + (K-2)(M+1)` and `(K-2) M`."""
        iters = self.steps - 2
        return 1 + iters * (self.inner_steps + 1), iters * self.inner_steps

    def _init(self, ctx: StepContext) -> list[Candidate]:
        return zero_shot_init(ctx)

    def _inner_steps(self, k: int) -> int:
        return self.inner_steps

    def _midpoint_rule(self, generator):
        if self.midpoint == "deterministic":
            return None
        last = self.mix_fraction * (self.steps - 2)

        def rule(i, t, s):
            if i >= last:
                return s
            u = torch.rand((), generator=generator, dtype=torch.float64)
            return self.t_min + u * (s - self.t_min)

        return rule


def check_grid(steps: int, t_min: float) -> None:
    """Raise a clear ValueError for a bad grid."""
    if not isinstance(steps, int) or steps < 3:
        raise ValueError(f"steps (grid times K) must be an integer >= 3, got {steps!r}")
    if not 0 < t_min < 1:
        raise ValueError(f"t_min must lie in (0, 1), got {t_min}")


def prior_dtype(prior, y: torch.Tensor) -> torch.dtype:
    """The prior's parameter dtype, or `y`'s when it has none (a `GaussianPrior`)."""
    param = next(iter(prior.parameters()), None) if isinstance(prior, torch.nn.Module) else None
    return param.dtype if param is not None else y.dtype


def run_driver(sampler, y: torch.Tensor, operator: LinearOperator, n: int, generator) -> MGDMOutput:
    """Run `mgdm_drive` for `n` samples of each observation with `sampler`'s settings.

    The settings are `sampler`'s `_init`, `_inner_steps`, `_midpoint_rule`, `lr`, `timesteps()`,
    `prior`, `noise` and `max_batch`.

    The copies are batched sample-major (`n` copies of the batch of `y`) in chunks of at most
    `max_batch` signals (one by one when the operator cannot be repeated).

    Arguments:
        sampler: an `MGDM` or an `AmortizedVI`.
        y: observations `(B, N_out, C)` in physical units.
        operator: their operator.
        n: samples per observation.
        generator: source of all the randomness.

    Returns:
        an `MGDMOutput` (samples `(n, B, N, C)` in physical units, per-sample costs).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    check_observations(y, operator)
    dtype = prior_dtype(sampler.prior, y)
    y = y.to(dtype)
    b, _, c = y.shape
    nodes = operator.domain.num_nodes
    times = sampler.timesteps()
    out, nfe, backward, chosen = [], 0.0, 0.0, None
    for copies, rep in copy_chunks(operator, n, b, sampler.max_batch):
        problem = MGDMProblem(sampler.prior, sampler.noise, y.repeat(copies, 1, 1), rep)
        res = mgdm_drive(
            problem,
            times,
            (copies * b, nodes, c),
            init=sampler._init,
            inner_steps=sampler._inner_steps,
            lr=sampler.lr,
            generator=generator,
            dtype=dtype,
            midpoint=sampler._midpoint_rule(generator),
        )
        out.append(sampler.prior.denormalize(res.z0).reshape(copies, b, nodes, c))
        nfe, backward = res.nfe, res.backward  # per signal: the same in every chunk
        frac = torch.tensor(res.chosen, dtype=torch.float64) * copies
        chosen = frac if chosen is None else chosen + frac
    chosen = (chosen / n).tolist()
    return MGDMOutput(torch.cat(out).detach(), round(nfe), times, round(backward), chosen)
