"""`ScoreNet`: a U-Net over a domain's coarsening hierarchy, predicting the diffusion noise."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from manifold_aps.geometry import Coarsening, Domain
from manifold_aps.geometry.domain import sparse_to_torch
from manifold_aps.nn.graph import DomainTensors
from manifold_aps.nn.layers import ResBlock, TimeEmbedding

__all__ = ["MIN_LEVEL_NODES", "ScoreNet", "ScoreNetConfig", "network_hierarchy"]

MIN_LEVEL_NODES = 2
"""Fewest nodes of a level of a network's hierarchy: a diffusion convolution averages each node's
neighbours (`diffusion_matrix`), and a lone node has none."""


def network_hierarchy(domain: Domain, levels: int, network: str) -> list[Coarsening]:
    """The `levels - 1` coarsenings (`Domain.hierarchy`) under a network of `levels` levels.

    Arguments:
        domain: the finest domain.
        levels: levels of the network, the finest included (1: no coarsening).
        network: the network's name, for messages.

    Returns:
        `levels - 1` `Coarsening`s, finest first.

    Raises:
        ValueError: the domain cannot be coarsened `levels - 1` times, or a level would have fewer
            than `MIN_LEVEL_NODES` nodes; the message gives the level sizes and the most levels
            the domain allows.
    """
    if levels <= 1:
        return []
    try:
        steps = domain.hierarchy(levels - 1)
    except ValueError as err:
        raise ValueError(
            f"{network} with {levels} levels needs {levels - 1} coarsenings of {domain!r}, "
            f"which it does not allow ({err}); use fewer levels"
        ) from None
    sizes = [domain.num_nodes] + [step.domain.num_nodes for step in steps]
    allowed = next((i for i, n in enumerate(sizes) if n < MIN_LEVEL_NODES), levels)
    if allowed < levels:
        raise ValueError(
            f"{network} with {levels} levels needs at least {MIN_LEVEL_NODES} nodes "
            f"on every level, but the hierarchy of {domain!r} has {sizes} nodes"
            + (f"; use at most {allowed} levels" if allowed else "")
        )
    return steps


@dataclass(frozen=True, kw_only=True)
class ScoreNetConfig:
    """Architecture of a `ScoreNet`.

    Attributes:
        channels: feature channels per level, finest first; its length is the number of levels.
        time_dim: size of the time embedding.
        hops: hops of each diffusion convolution.
        num_modes: Laplace-Beltrami modes of the spectral filters at each level.
        num_positional: eigenvectors used as positional encoding (0 for none: then the network is
            as symmetric as the domain).
        spectral: use spectral filters.
    """

    channels: tuple[int, ...] = (16, 32, 64)
    time_dim: int = 64
    hops: int = 2
    num_modes: int = 64
    num_positional: int = 8
    spectral: bool = True

    def __post_init__(self):
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be positive integers, got {self.channels}")
        if self.hops < 1 or self.num_modes < 1 or self.num_positional < 0 or self.time_dim < 2:
            raise ValueError(f"invalid ScoreNetConfig: {self}")

    def to_dict(self) -> dict:
        """Plain types, for checkpoints."""
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d


class ScoreNet(nn.Module):
    r"""Noise predictor :math:`\hat\epsilon_\theta(x_t, t)` for signals `(B, N, C)` on any domain.

    A U-Net over `domain.hierarchy(levels - 1)`: at each level a `ResBlock` (diffusion
    convolutions + a time-dependent spectral filter in the level's eigenbasis), mass-weighted
    pooling to the next level, and on the way up unpooling and a skip connection. The input is
    the signal concatenated with an intrinsic positional encoding (low eigenvectors). The last
    layer starts at zero, so an untrained network predicts no noise.

    Arguments:
        domain: the finest domain.
        in_channels: signal channels `C`.
        config: a `ScoreNetConfig`.

    Raises:
        ValueError: a domain too small for the configuration: fewer than `num_positional + 1` nodes,
            or a hierarchy of `len(channels)` levels it does not allow (see `network_hierarchy`).

    Example:
        >>> from manifold_aps.geometry import HealpixSphere
        >>> net = ScoreNet(HealpixSphere(4), 1, ScoreNetConfig(channels=(8, 16), num_modes=16))
        >>> net(torch.zeros(2, 192, 1), torch.rand(2)).shape
        torch.Size([2, 192, 1])
    """

    def __init__(self, domain: Domain, in_channels: int = 1, config: ScoreNetConfig | None = None):
        super().__init__()
        self.config = config or ScoreNetConfig()
        cfg = self.config
        self.in_channels = in_channels
        levels = len(cfg.channels)
        # the positional encoding is eigenvectors 1..P of the finest level (eigenvector 0 is
        # constant)
        min_nodes = max(cfg.num_positional + 1, MIN_LEVEL_NODES)
        if domain.num_nodes < min_nodes:
            raise ValueError(
                f"ScoreNet ({levels} levels, num_positional={cfg.num_positional}) "
                f"needs a domain of at least {min_nodes} nodes: num_positional + 1 on the finest "
                "level (its positional encoding is eigenvectors "
                f"1..{cfg.num_positional}) and {MIN_LEVEL_NODES} on each coarser one; "
                f"{domain!r} has {domain.num_nodes}; "
                f"use a finer domain or num_positional <= {domain.num_nodes - 1}"
            )
        steps = network_hierarchy(domain, levels, f"ScoreNet(channels={cfg.channels})")
        domains = [domain] + [step.domain for step in steps]
        self.graphs = nn.ModuleList(
            [
                DomainTensors(d, cfg.num_modes, cfg.num_positional if i == 0 else 0)
                for i, d in enumerate(domains)
            ]
        )
        for i, step in enumerate(steps):
            self.register_buffer(
                f"pool{i}",
                sparse_to_torch(step.pool, torch.float32).to_sparse_csr(),
                persistent=False,
            )
            self.register_buffer(
                f"unpool{i}",
                sparse_to_torch(step.unpool, torch.float32).to_sparse_csr(),
                persistent=False,
            )
        # pooling matrices stay float32 (averages; exactness is not needed); cast per call otherwise
        self.time = TimeEmbedding(cfg.time_dim)
        width = cfg.channels
        self.lift = nn.Linear(in_channels + cfg.num_positional, width[0])
        self.down = nn.ModuleList(
            [
                ResBlock(width[max(i - 1, 0)], width[i], cfg.time_dim, cfg.hops, cfg.spectral)
                for i in range(levels)
            ]
        )
        self.mid = ResBlock(width[-1], width[-1], cfg.time_dim, cfg.hops, cfg.spectral)
        self.up = nn.ModuleList(
            [
                ResBlock(
                    width[i] * 2,
                    width[max(i - 1, 0)] if i > 0 else width[0],
                    cfg.time_dim,
                    cfg.hops,
                    cfg.spectral,
                )
                for i in range(levels)
            ]
        )
        self.out_norm = nn.LayerNorm(width[0])
        self.out = nn.Linear(width[0], in_channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _apply_sparse(matrix: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        b, n, c = h.shape
        flat = h.transpose(0, 1).reshape(n, b * c)
        out = torch.sparse.mm(matrix.to(h.dtype), flat)
        return out.reshape(-1, b, c).transpose(0, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """`x` `(B, N, C)` at diffusion times `t` `(B,)` -> predicted noise `(B, N, C)`."""
        if x.dim() != 3 or x.shape[1] != self.graphs[0].num_nodes or x.shape[2] != self.in_channels:
            raise ValueError(
                f"x must have shape (B, N={self.graphs[0].num_nodes}, C={self.in_channels}), "
                f"got {tuple(x.shape)}"
            )
        temb = self.time(t.to(x.dtype).expand(x.shape[0]))
        pe = self.graphs[0].positional.to(x.dtype)
        h = self.lift(torch.cat([x, pe[None].expand(x.shape[0], -1, -1)], dim=-1))
        skips = []
        levels = len(self.down)
        for i, block in enumerate(self.down):
            h = block(h, temb, self.graphs[i])
            skips.append(h)
            if i < levels - 1:
                h = self._apply_sparse(getattr(self, f"pool{i}"), h)
        h = self.mid(h, temb, self.graphs[-1])
        for i in reversed(range(levels)):
            h = self.up[i](torch.cat([h, skips[i]], dim=-1), temb, self.graphs[i])
            if i > 0:
                h = self._apply_sparse(getattr(self, f"unpool{i - 1}"), h)
        return self.out(torch.nn.functional.silu(self.out_norm(h)))
