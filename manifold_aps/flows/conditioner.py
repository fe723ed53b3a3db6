"""Conditioner networks of the flows and the conditioning features built from `(y, A)`."""

from __future__ import annotations

import torch
from torch import nn

from manifold_aps.nn import DomainTensors
from manifold_aps.nn.layers import ResBlock

__all__ = ["GraphConditioner"]


def add_per_condition(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`h` `(R * B0, ...)` plus a per-condition `t` `(B0, ...)`, broadcast without copying `t`."""
    b0 = t.shape[0]
    return (h.reshape(-1, b0, *h.shape[1:]) + t[None]).reshape(h.shape)


class GraphConditioner(nn.Module):
    """A small geometry-aware network `(B, N, F_in)` -> `(B, N, F_out)` for flow layers.

    Residual blocks of diffusion convolutions and spectral filters (no normalisation layers, so the
    output can scale with the input, as posterior means do), modulated by a global context vector
    (e.g. the observed fraction). The last layer starts at zero: a fresh flow layer is the identity.

    Arguments:
        in_features, out_features: feature counts.
        context_dim: size of the global context vector.
        width: hidden channels.
        depth: residual blocks.
        hops: diffusion hops per convolution.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        context_dim: int,
        width: int = 32,
        depth: int = 2,
        hops: int = 2,
    ):
        super().__init__()
        self.lift = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(
            [
                ResBlock(width, width, context_dim, hops=hops, spectral=True, norm=False)
                for _ in range(depth)
            ]
        )
        self.out = nn.Linear(width, out_features)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(
        self,
        h: torch.Tensor,
        context: torch.Tensor,
        graph: DomainTensors,
        static: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The conditioner's output `(B, N, F_out)` for `h` `(B, N, F_in)` and `context` `(B, D)`.

        `static` `(B0, N, width)` is a per-condition term added after the first layer (`B` a
        multiple of `B0`, sample-major).
        """
        h = self.lift(h)
        if static is not None:
            h = add_per_condition(h, static)
        for block in self.blocks:
            h = block(h, context, graph)
        return self.out(torch.nn.functional.silu(h))
