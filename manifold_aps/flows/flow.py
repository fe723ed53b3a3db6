r"""`ConditionalFlow`: a normalizing flow :math:`q_\phi(x \mid c)` for signals on a domain."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from manifold_aps.flows.layers import (
    ActNorm,
    AffineCoupling,
    AnchorAffine,
    CoarseCoupling,
    ConditionalAffine,
    FlowCondition,
    SpectralCoupling,
    SpectralScale,
    StiefelChannelMix,
)
from manifold_aps.flows.spline import SplineCoupling
from manifold_aps.geometry import Domain
from manifold_aps.nn import DomainTensors
from manifold_aps.nn.unet import network_hierarchy

__all__ = ["ConditionalFlow", "FlowConfig"]

COUPLINGS = ("graph", "spectral")
# Signal values per chunk when many samples are drawn without autograd (32 MB in float32: 128
# samples of a 1-degree global grid); bigger batches run out of cache and are slower per sample.
SAMPLE_CHUNK_ELEMENTS = 2**23
TRANSFORMS = ("affine", "spline")


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Architecture of a `ConditionalFlow`.

    Attributes:
        couplings: number of affine coupling layers (node partitions alternate).
        width: hidden channels of the conditioners.
        depth: residual blocks per conditioner.
        num_modes: Laplace-Beltrami modes of the spectral layers and filters.
        spectral_every: a `SpectralScale` after every this many couplings (0 for none).
        coupling: "graph" (`AffineCoupling`: graph-network conditioners on the untouched nodes'
            values, one network pass per sample) or "spectral" (`SpectralCoupling`: the untouched
            nodes enter through their `num_modes` lowest Laplace-Beltrami coefficients and the
            graph network runs once per condition; several times faster per sample).
        transform: elementwise map of the graph couplings: "affine" (`AffineCoupling`) or "spline"
            (`SplineCoupling`: monotonic rational-quadratic splines, `bins` bins on [-4, 4] in
            standardised units, the identity outside).
        bins: spline bins (with `transform="spline"`).
        actnorm: an `ActNorm` after every coupling.
        levels: multiscale: coupling `i` runs its conditioner on level `i % levels` of the
            domain's coarsening hierarchy (`Domain.hierarchy`; level 0 is the domain itself,
            `CoarseCoupling` above it), with `coupling="graph"` and affine transforms.
    """

    couplings: int = 4
    width: int = 32
    depth: int = 2
    num_modes: int = 64
    spectral_every: int = 1
    coupling: str = "graph"
    transform: str = "affine"
    bins: int = 8
    actnorm: bool = False
    levels: int = 1

    def __post_init__(self):
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {list(COUPLINGS)}, got {self.coupling!r}")
        if self.transform not in TRANSFORMS or self.bins < 2:
            raise ValueError(
                f"transform must be one of {list(TRANSFORMS)} and bins >= 2, "
                f"got {self.transform!r}, {self.bins}"
            )
        if self.levels < 1 or (
            self.levels > 1 and (self.coupling != "graph" or self.transform != "affine")
        ):
            raise ValueError(
                'levels must be >= 1, and levels > 1 needs coupling="graph", transform="affine"; '
                f"got {self.levels}"
            )
        if self.transform == "spline" and self.coupling != "graph":
            raise ValueError('transform="spline" needs coupling="graph"')
        if self.couplings < 0 or self.width < 1 or self.depth < 1 or self.num_modes < 1:
            raise ValueError("couplings must be >= 0 and width, depth, num_modes >= 1")

    def to_dict(self) -> dict:
        """Plain types, for checkpoints.

        `coupling`, `transform`, `bins`, `actnorm`, `levels` are left out at their defaults, so
        that runs written before the options existed still resume (their settings compare equal).
        """
        d = asdict(self)
        for key, default in (
            ("coupling", "graph"),
            ("transform", "affine"),
            ("bins", 8),
            ("actnorm", False),
            ("levels", 1),
        ):
            if d[key] == default:
                del d[key]
        return d


def _composed_hierarchy(domain: Domain, levels: int) -> list:
    """`levels` coarsenings of `domain`, each composed down from the domain itself.

    Level k pools the domain's nodes straight to the k-th coarse domain.
    """
    from manifold_aps.geometry import Coarsening

    out = []
    for step in network_hierarchy(domain, levels + 1, "ConditionalFlow"):
        if out:
            prev = out[-1]
            step = Coarsening(
                step.domain, (step.pool @ prev.pool).tocsr(), (prev.unpool @ step.unpool).tocsr()
            )
        out.append(step)
    return out


class ConditionalFlow(nn.Module):
    r"""Conditional normalizing flow on signals `(B, N, C)` of a domain.

    Base measure: white noise with respect to area, :math:`z_n \sim N(0, \bar m / m_n)`, the
    discretisation of a unit white-noise field (a node of half the average area has twice the
    variance), so that refining the mesh does not change what the base means. The map is
    `ConditionalAffine` -> [`AffineCoupling`, `SpectralScale`, `StiefelChannelMix` (C > 1)] x K ->
    `ConditionalAffine` -> `AnchorAffine`; every learned layer starts as the identity, so a fresh
    flow is the anchor's mean-field Gaussian (or the base, without an anchor).

    `log_prob` is exact (inverse pass + log-determinants), `sample` is one forward pass.

    Arguments:
        domain: the domain.
        channels: `C`.
        features: per-node conditioning features `F`.
        context_dim: global context size `D`.
        config: a `FlowConfig`.
        seed: seed of the node partitions and channel mixings.
    """

    def __init__(
        self,
        domain: Domain,
        channels: int,
        features: int,
        context_dim: int,
        config: FlowConfig | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.config = config or FlowConfig()
        cfg = self.config
        self.domain = domain
        self.channels = channels
        self.graph = DomainTensors(domain, cfg.num_modes, num_positional=0)
        mass = domain.mass
        self.register_buffer("base_std", (mass.mean() / mass).sqrt().float(), persistent=False)
        g = torch.Generator().manual_seed(seed)
        layers: list[nn.Module] = [
            ConditionalAffine(channels, features, context_dim, cfg.width, cfg.depth)
        ]
        part = None
        coarse = [
            (
                step,
                DomainTensors(
                    step.domain, min(cfg.num_modes, step.domain.num_nodes - 1), num_positional=0
                ),
            )
            for step in _composed_hierarchy(domain, cfg.levels - 1)
        ]  # one graph per level, shared
        for i in range(cfg.couplings):
            if i % 2 == 0:
                part = torch.zeros(domain.num_nodes, dtype=torch.bool)
                part[torch.randperm(domain.num_nodes, generator=g)[: domain.num_nodes // 2]] = True
            side = part if i % 2 == 0 else ~part
            if cfg.coupling == "spectral":
                modes = min(
                    cfg.num_modes, domain.num_nodes
                )  # the modes self.graph has (clipped to N)
                layers.append(
                    SpectralCoupling(
                        side, channels, features, context_dim, modes, cfg.width, cfg.depth
                    )
                )
            elif i % cfg.levels:
                layers.append(
                    CoarseCoupling(
                        side,
                        channels,
                        features,
                        context_dim,
                        *coarse[i % cfg.levels - 1],
                        cfg.width,
                        cfg.depth,
                    )
                )
            elif cfg.transform == "spline":
                layers.append(
                    SplineCoupling(
                        side, channels, features, context_dim, cfg.width, cfg.depth, cfg.bins
                    )
                )
            else:
                layers.append(
                    AffineCoupling(side, channels, features, context_dim, cfg.width, cfg.depth)
                )
            if cfg.actnorm:
                layers.append(ActNorm(channels))
            if cfg.spectral_every and (i + 1) % cfg.spectral_every == 0:
                layers.append(SpectralScale(channels, context_dim))
            if channels > 1:
                layers.append(StiefelChannelMix(channels, g))
        layers.append(ConditionalAffine(channels, features, context_dim, cfg.width, cfg.depth))
        layers.append(AnchorAffine())
        self.layers = nn.ModuleList(layers)

    def condition(
        self, features, context, anchor_shift=None, anchor_log_scale=None, anchor_cholesky=None
    ) -> FlowCondition:
        """Bundle features `(B, N, F)`, context `(B, D)` and an optional anchor.

        The anchor: mean and log-scale `(B, N, C)`, Cholesky factors `(B, C, N, N)` of a posterior
        precision.
        """
        return FlowCondition(
            features, context, self.graph, anchor_shift, anchor_log_scale, 1, anchor_cholesky
        )

    def base_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the base at `z` `(B, N, C)`, shape `(B,)`."""
        std = self.base_std.to(z.dtype)[None, :, None]
        n = z.shape[1] * z.shape[2]
        return (-0.5 * (z / std).pow(2) - torch.log(std)).sum((1, 2)) - 0.5 * n * math.log(
            2 * math.pi
        )

    def transform(self, z: torch.Tensor, cond: FlowCondition) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Base -> signal: `x` `(B, N, C)` and :math:`\log|\det\partial x/\partial z|` `(B,)`."""
        logdet = z.new_zeros(z.shape[0])
        x = z
        for layer in self.layers:
            x, ld = layer(x, cond)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, x: torch.Tensor, cond: FlowCondition) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Signal -> base: returns `z` and :math:`\log|\det\partial z/\partial x|` `(B,)`."""
        logdet = x.new_zeros(x.shape[0])
        z = x
        for layer in reversed(self.layers):
            z, ld = layer.inverse(z, cond)
            logdet = logdet + ld
        return z, logdet

    def sample_and_log_prob(
        self, cond: FlowCondition, n: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r"""`n` samples per condition: `x` `(n, B, N, C)` and :math:`\log q(x \mid c)` `(n, B)`."""
        b = cond.features.shape[0] * cond.repeats
        shape = (n * b, self.domain.num_nodes, self.channels)
        dtype = cond.features.dtype
        z = torch.randn(shape, generator=generator, dtype=dtype, device=cond.features.device)
        z = z * self.base_std.to(dtype)[None, :, None]
        per_chunk = max(1, SAMPLE_CHUNK_ELEMENTS // (b * shape[1] * shape[2]))
        if torch.is_grad_enabled() or n <= per_chunk:
            x, logdet = self.transform(z, cond.repeat(n))
        else:
            # without autograd, in chunks of samples that stay in cache, each conditioner run once
            memo = dataclasses.replace(cond, memo={})
            parts = [
                self.transform(chunk, memo.repeat(chunk.shape[0] // b))
                for chunk in z.split(per_chunk * b)
            ]
            x, logdet = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        logq = self.base_log_prob(z) - logdet
        return x.reshape(n, b, *shape[1:]), logq.reshape(n, b)

    def log_prob(self, x: torch.Tensor, cond: FlowCondition) -> torch.Tensor:
        r"""Exact :math:`\log q(x \mid c)` for `x` `(S, B, N, C)`; shape `(S, B)`."""
        s, b = x.shape[:2]
        z, logdet = self.inverse(x.reshape(s * b, *x.shape[2:]), cond.repeat(s))
        return (self.base_log_prob(z) + logdet).reshape(s, b)
