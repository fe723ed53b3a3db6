r"""Monotonic rational-quadratic spline couplings (Durkan et al., Neural Spline Flows, 2019).

`rational_quadratic` is the elementwise transform: on `[-bound, bound]` a monotonic spline of `K`
rational-quadratic bins whose widths, heights and interior knot derivatives are given per
element; outside, the identity (the boundary derivatives are 1, so the map is C^1). It has a
closed-form inverse (a quadratic per element) and log-derivative. `SplineCoupling` uses it in
place of the affine map of `AffineCoupling`, with the same graph conditioner.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from manifold_aps.flows.conditioner import GraphConditioner
from manifold_aps.flows.layers import _PartitionLayer

__all__ = ["SplineCoupling", "rational_quadratic"]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3
_DERIVATIVE_SHIFT = math.log(math.e - 1.0)  # softplus(0 + shift) = 1: zero parameters = identity


def _knots(raw: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin sizes `(..., K)` (sum `2 bound`) and knot positions `(..., K + 1)` from raw values."""
    k = raw.shape[-1]
    size = MIN_BIN + (1 - MIN_BIN * k) * torch.softmax(raw, dim=-1)
    knots = F.pad(torch.cumsum(size, dim=-1), (1, 0)) * 2 * bound - bound
    knots[..., 0], knots[..., -1] = -bound, bound
    return knots[..., 1:] - knots[..., :-1], knots


def rational_quadratic(
    x, raw_widths, raw_heights, raw_derivatives, bound: float, inverse: bool = False
):
    r"""The monotonic rational-quadratic spline and :math:`\log|dy/dx|` (or its inverse).

    Arguments:
        x: inputs, any shape `S` (outputs when `inverse`).
        raw_widths: unnormalised bin widths `S + (K,)`.
        raw_heights: unnormalised bin heights `S + (K,)`.
        raw_derivatives: unnormalised derivatives at the `K - 1` interior knots `S + (K - 1,)`.
        bound: the spline acts on `[-bound, bound]`; the identity outside.
        inverse: map outputs back to inputs.

    Returns:
        `(y, logabsdet)` of the same shape as `x`; `logabsdet` is that of the map applied (for the
        inverse, :math:`\log|dx/dy|`). All-zero raw parameters give the identity.
    """
    inside = (x > -bound) & (x < bound)
    widths, xk = _knots(raw_widths, bound)
    heights, yk = _knots(raw_heights, bound)
    d = MIN_DERIVATIVE + (1 - MIN_DERIVATIVE) * F.softplus(raw_derivatives + _DERIVATIVE_SHIFT)
    d = F.pad(d, (1, 1), value=1.0)  # boundary derivatives 1: continuous with the identity tails
    xc = x.clamp(-bound, bound)
    grid = yk if inverse else xk
    idx = (torch.searchsorted(grid.contiguous(), xc[..., None].contiguous()) - 1).clamp(
        0, widths.shape[-1] - 1
    )

    def pick(t):
        return t.gather(-1, idx)[..., 0]

    w, h, x0, y0 = pick(widths), pick(heights), pick(xk[..., :-1]), pick(yk[..., :-1])
    d0, d1 = pick(d[..., :-1]), pick(d[..., 1:])
    s = h / w
    if inverse:
        dy = xc - y0
        a = h * (s - d0) + dy * (d1 + d0 - 2 * s)
        b = h * d0 - dy * (d1 + d0 - 2 * s)
        c = -s * dy
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        out = xi * w + x0
    else:
        xi = (xc - x0) / w
    mix = xi * (1 - xi)
    denom = s + (d1 + d0 - 2 * s) * mix
    deriv = s**2 * (d1 * xi**2 + 2 * s * mix + d0 * (1 - xi) ** 2) / denom**2
    logdet = torch.log(deriv)
    if not inverse:
        out = y0 + h * (s * xi**2 + d0 * mix) / denom
    else:
        logdet = -logdet
    y = torch.where(inside, out, x)
    return y, torch.where(inside, logdet, torch.zeros_like(logdet))


class SplineCoupling(_PartitionLayer):
    r"""Coupling over a node partition: a monotonic rational-quadratic spline per node and channel.

    Nodes in `part` go through `rational_quadratic` with `bins` bins on `[-bound, bound]` (the
    identity outside), its parameters from a graph network of :math:`[x\odot 1_a, 1_a]` plus the
    features (as `AffineCoupling`: the features' share of the first layer once per condition).
    Zero-initialised output: a fresh layer is the identity. More flexible than the affine coupling
    for skewed or multimodal conditionals; `FlowConfig(transform="spline")`.

    Arguments:
        part: boolean `(N,)`, the nodes transformed by this layer.
        channels, features, context_dim, width, depth: as `AffineCoupling`.
        bins: `K`.
        bound: half-width of the spline's interval (the flow works in standardised units).
    """

    def __init__(
        self,
        part: torch.Tensor,
        channels: int,
        features: int,
        context_dim: int,
        width: int = 32,
        depth: int = 2,
        bins: int = 8,
        bound: float = 4.0,
    ):
        if bins < 2 or not bound > 0:
            raise ValueError(f"bins must be >= 2 and bound > 0, got {bins}, {bound}")
        super().__init__(part)
        self.channels, self.bins, self.bound = channels, bins, float(bound)
        self.net = GraphConditioner(
            channels + 1, channels * (3 * bins - 1), context_dim, width, depth
        )
        self.lift_features = nn.Linear(features, width, bias=False)

    def _spline(self, x, cond, inverse: bool):
        static = self.lift_features(cond.features.to(x.dtype))
        raw = self.net(self.untouched_input(x), cond.tile(cond.context), cond.graph, static=static)
        raw = raw.reshape(*x.shape, 3 * self.bins - 1)
        k = self.bins
        y, logdet = rational_quadratic(
            x, raw[..., :k], raw[..., k : 2 * k], raw[..., 2 * k :], self.bound, inverse
        )
        on = self.part[None, :, None]
        return torch.where(on, y, x), (logdet * on.to(x.dtype)).sum((1, 2))

    def forward(self, x, cond):
        """`(y, log|det dy/dx|)` for `x` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        return self._spline(x, cond, inverse=False)

    def inverse(self, y, cond):
        """`(x, log|det dx/dy|)` for `y` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        return self._spline(y, cond, inverse=True)  # the untouched nodes are the same in x and y
