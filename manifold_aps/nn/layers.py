"""Geometry-aware layers on signals `(B, N, C)`: diffusion conv, spectral filter, time embedding."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import spmm

from manifold_aps.nn.graph import DomainTensors

__all__ = ["DiffusionConv", "NodeLayerNorm", "ResBlock", "SpectralFilter", "TimeEmbedding"]


class TimeEmbedding(nn.Module):
    r"""Sinusoidal features of the diffusion time followed by an MLP: `t` `(B,)` -> `(B, dim)`.

    Frequencies are geometric between 1 and 1000 (times :math:`2\pi`), as in transformer position
    encodings applied to `1000 t`.
    """

    def __init__(self, dim: int = 64):
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim must be even, got {dim}")
        half = dim // 2
        self.register_buffer(
            "freqs", torch.exp(torch.linspace(0, math.log(1000.0), half)), persistent=False
        )
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """The embedding `(B, dim)` of diffusion times `t` `(B,)`."""
        arg = 2 * math.pi * t[:, None].to(self.freqs.dtype) * self.freqs
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1))


class NodeLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each node: no statistics across nodes or batch elements."""


class DiffusionConv(MessagePassing):
    r"""K-hop diffusion convolution on a domain's graph (torch-geometric message passing).

    :math:`\mathrm{out} = \sum_{k=0}^{K} (P^k h)\,\Theta_k + b` with the random-walk operator
    `P` of `DomainTensors` (neighbours weighted by conductance). Messages are aggregated by a fused
    sparse product (`message_and_aggregate`), which is what makes it fast on the CPU. Because `P`
    depends only on the geometry, the layer commutes with the domain's symmetries (rotations of
    the sphere) up to discretisation error.

    Arguments:
        in_channels, out_channels: channel counts.
        hops: `K`.
    """

    def __init__(self, in_channels: int, out_channels: int, hops: int = 2):
        super().__init__(aggr="add", node_dim=-2)
        self.hops = hops
        self.lin = nn.Linear(in_channels * (hops + 1), out_channels)

    def forward(self, h: torch.Tensor, graph: DomainTensors) -> torch.Tensor:
        """`h` `(B, N, C_in)` -> `(B, N, C_out)`.

        Works in node-major memory (`(N, B, C)`, which the sparse product needs) and returns a
        `(B, N, C_out)` view of it, so a chain of these layers never transposes data; the hop terms
        go through slices of one weight matrix instead of a concatenation.
        """
        b, n, c = h.shape
        node_major = h.transpose(0, 1)  # free if h is already a view of node-major memory
        flat = node_major.reshape(n, b * c)
        adj = graph.diffusion_as(h.dtype)
        weight = self.lin.weight
        out = torch.nn.functional.linear(flat.view(n, b, c), weight[:, :c], self.lin.bias)
        for k in range(1, self.hops + 1):
            flat = self.propagate(adj, x=flat)
            out = out + torch.nn.functional.linear(
                flat.view(n, b, c), weight[:, k * c : (k + 1) * c]
            )
        return out.transpose(0, 1)

    def message(self, x_j: torch.Tensor) -> torch.Tensor:  # pragma: no cover - fused path used
        """The message of a neighbour: its value `x_j` itself (unused: the fused path runs)."""
        return x_j

    def message_and_aggregate(self, adj_t, x: torch.Tensor) -> torch.Tensor:
        """One diffusion hop: the sparse product `adj_t @ x`, `x` node-major `(N, B*C)`."""
        return spmm(adj_t, x, reduce="sum")


class SpectralFilter(nn.Module):
    r"""Global filter in the Laplace-Beltrami eigenbasis with a time-dependent response.

    :math:`\mathrm{out} = \Phi\,\big(r(\lambda_k, t) \odot \Phi^T M h\big)` per channel, with the
    response `r` an MLP of :math:`\log(1+\lambda_k)` and the time embedding. The response depends on
    the eigenvalue only, so on the sphere it acts alike on every spherical harmonic of one degree
    and commutes with rotations (up to the discretisation of the eigenbasis).

    Arguments:
        channels: `C`.
        time_dim: size of the time embedding.
        hidden: width of the response MLP.
    """

    def __init__(self, channels: int, time_dim: int, hidden: int = 32):
        super().__init__()
        self.response = nn.Sequential(
            nn.Linear(1 + time_dim, hidden), nn.SiLU(), nn.Linear(hidden, channels)
        )

    def forward(self, h: torch.Tensor, temb: torch.Tensor, graph: DomainTensors) -> torch.Tensor:
        """`h` `(B, N, C)`, `temb` `(B, T)` -> `(B, N, C)`."""
        coef = torch.einsum("kn,bnc->bkc", graph.analysis.to(h.dtype), h)
        lam = torch.log1p(graph.eigenvalues.to(h.dtype))
        k = lam.shape[0]
        feats = torch.cat(
            [lam[None, :, None].expand(h.shape[0], k, 1), temb[:, None, :].expand(-1, k, -1)],
            dim=-1,
        )
        return torch.einsum("nk,bkc->bnc", graph.basis.to(h.dtype), coef * self.response(feats))


class ResBlock(nn.Module):
    """Residual block: norm, act, diffusion conv, + time shift, norm, act, conv [+ spectral].

    Arguments:
        in_channels, out_channels: channel counts.
        time_dim: size of the time embedding.
        hops: hops of each `DiffusionConv`.
        spectral: add a `SpectralFilter` branch.
        norm: normalise each node's channels (LayerNorm); off keeps the block's response to the
            input's amplitude, which conditioners of linear-Gaussian problems need.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        hops: int = 2,
        spectral: bool = True,
        norm: bool = True,
    ):
        super().__init__()
        self.norm1 = NodeLayerNorm(in_channels) if norm else nn.Identity()
        self.conv1 = DiffusionConv(in_channels, out_channels, hops)
        self.time = nn.Linear(time_dim, out_channels)
        self.norm2 = NodeLayerNorm(out_channels) if norm else nn.Identity()
        self.conv2 = DiffusionConv(out_channels, out_channels, hops)
        self.spectral = SpectralFilter(out_channels, time_dim) if spectral else None
        self.skip = (
            nn.Linear(in_channels, out_channels) if in_channels != out_channels else nn.Identity()
        )
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, graph: DomainTensors) -> torch.Tensor:
        """The block's output `(B, N, C_out)` for `x` `(B, N, C_in)` and `temb` `(B, T)`."""
        h = self.conv1(self.act(self.norm1(x)), graph) + self.time(temb)[:, None, :]
        h2 = self.act(self.norm2(h))
        out = self.conv2(h2, graph)
        if self.spectral is not None:
            out = out + self.spectral(h2, temb, graph)
        return out + self.skip(x)
