r"""The variance-preserving diffusion (VP-SDE) of Song et al. (2021).

Its marginals are :math:`x_t = \alpha_t x_0 + \sigma_t \epsilon`.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SCHEDULES", "VPSDE"]

SCHEDULES = ("linear", "cosine")


class VPSDE:
    r"""Variance-preserving SDE :math:`dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dW`.

    `t` in [0, 1] is dimensionless diffusion time: `t = 0` is the data, `t = 1` is close to
    `N(0, I)`.
    The marginal is :math:`x_t = \alpha_t x_0 + \sigma_t\epsilon` with :math:`\sigma_t^2 = 1 -
    \alpha_t^2`. The "linear" schedule has :math:`\beta(t) = \beta_0 + t(\beta_1 - \beta_0)` and
    :math:`\log\alpha_t = -\tfrac14 t^2(\beta_1-\beta_0) - \tfrac12 t\beta_0`; the "cosine" schedule
    (Nichol & Dhariwal 2021) has :math:`\alpha_t = \cos(\tfrac{\pi}{2}\tfrac{t+s}{1+s}) /
    \cos(\tfrac{\pi}{2}\tfrac{s}{1+s})` with `s = 0.008`, clipped so that :math:`\alpha_1 > 0`.

    Arguments:
        beta_min, beta_max: the linear schedule's :math:`\beta_0, \beta_1`.
        schedule: "linear" or "cosine".

    Example:
        >>> sde = VPSDE()
        >>> t = torch.tensor([0.0, 1.0])
        >>> [round(v, 4) for v in sde.scale_t(t).tolist()]
        [1.0, 0.0066]
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, schedule: str = "linear"):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
        if not 0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max, self.schedule = float(beta_min), float(beta_max), schedule

    def __repr__(self) -> str:
        return (
            f"VPSDE(beta_min={self.beta_min}, beta_max={self.beta_max}, schedule={self.schedule!r})"
        )

    def config(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, "schedule": self.schedule}

    def log_scale_t(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\alpha_t`, same shape as `t`."""
        t = torch.as_tensor(t)
        if self.schedule == "linear":
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
        s = 0.008
        f = torch.cos(0.5 * math.pi * (t + s) / (1 + s)).clamp_min(1e-4)
        return torch.log(f) - math.log(math.cos(0.5 * math.pi * s / (1 + s)))

    def scale_t(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\alpha_t`, the signal scale at time `t`."""
        return torch.exp(self.log_scale_t(t))

    def sigma_t(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\sigma_t = \sqrt{1 - \alpha_t^2}`, the noise level at time `t`."""
        return (-torch.expm1(2 * self.log_scale_t(t))).clamp_min(0).sqrt()

    def beta_t(self, t: torch.Tensor) -> torch.Tensor:
        r""":math:`\beta(t) = -2\,d\log\alpha_t/dt`."""
        t = torch.as_tensor(t)
        if self.schedule == "linear":
            return self.beta_min + t * (self.beta_max - self.beta_min)
        with torch.enable_grad():
            tt = t.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_scale_t(tt).sum(), tt)
        return -2 * g
