r"""Samplers of a diffusion prior: reverse SDE (Euler-Maruyama) and probability-flow ODE (Heun).

A prior here is anything with `sde` and `score(z_t, t)` (a `ScorePrior`, or a `GaussianPrior`
whose score is exact). Samples are in the prior's diffusion space; `ScorePrior.denormalize` maps
them to physical units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SamplerOutput", "probability_flow_sample", "reverse_sde_sample", "time_grid"]


@dataclass
class SamplerOutput:
    """What every sampler returns.

    Attributes:
        sample: final states `(B, N, C)`.
        nfe: number of score evaluations per sample.
        timesteps: the time grid, from 1 down to `t_min`.
    """

    sample: torch.Tensor
    nfe: int
    timesteps: torch.Tensor


def time_grid(steps: int, t_min: float = 1e-3, dtype=torch.float64, device=None) -> torch.Tensor:
    """`steps + 1` times from 1 down to `t_min`, uniform."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, t_min, steps + 1, dtype=dtype, device=device)


def _drift(prior, z, t):
    beta = prior.sde.beta_t(t)
    return -0.5 * beta * z, beta


@torch.no_grad()
def reverse_sde_sample(
    prior,
    shape,
    *,
    steps: int = 500,
    t_min: float = 1e-3,
    generator=None,
    device=None,
    dtype=torch.float32,
    progress: str | None = None,
) -> SamplerOutput:
    r"""Euler-Maruyama on the reverse-time SDE :math:`dz = [f - g^2 s_\theta]dt + g\,d\bar W`.

    Starts from :math:`N(0, I)` at `t = 1`; the last step returns the Tweedie denoised mean
    :math:`(z + \sigma^2 s)/\alpha` at `t_min` (no noise added there). `progress`: a tqdm bar of
    the steps with this description (None: none).
    """
    ts = time_grid(steps, t_min, dtype, device)
    z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    step_range = range(steps)
    if progress is not None:
        from tqdm.auto import tqdm

        step_range = tqdm(step_range, desc=progress, dynamic_ncols=True)
    for i in step_range:
        t, dt = ts[i], ts[i] - ts[i + 1]
        f, beta = _drift(prior, z, t)
        score = prior.score(z, t)
        z = (
            z
            - (f - beta * score) * dt
            + torch.sqrt(beta * dt)
            * torch.randn(shape, generator=generator, dtype=dtype, device=device)
        )
    t = ts[-1]
    z = (z + prior.sde.sigma_t(t) ** 2 * prior.score(z, t)) / prior.sde.scale_t(t)
    return SamplerOutput(z, steps + 1, ts)


def probability_flow_drift(prior, z, t):
    r"""The ODE drift :math:`\tilde f = -\tfrac12\beta(t)(z + s_\theta(z, t))`."""
    f, beta = _drift(prior, z, t)
    return f - 0.5 * beta * prior.score(z, t)


@torch.no_grad()
def probability_flow_sample(
    prior,
    shape,
    *,
    steps: int = 100,
    t_min: float = 1e-3,
    generator=None,
    device=None,
    dtype=torch.float32,
) -> SamplerOutput:
    """Heun's method (2nd order) on the probability-flow ODE from `t = 1` to `t_min`."""
    ts = time_grid(steps, t_min, dtype, device)
    z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    for i in range(steps):
        t0, t1 = ts[i], ts[i + 1]
        d0 = probability_flow_drift(prior, z, t0)
        z_euler = z + (t1 - t0) * d0
        d1 = probability_flow_drift(prior, z_euler, t1)
        z = z + (t1 - t0) * 0.5 * (d0 + d1)
    return SamplerOutput(z, 2 * steps, ts)
