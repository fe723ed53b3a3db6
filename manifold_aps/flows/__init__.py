"""Conditional normalizing flows on domains (couplings, spectral scaling, Stiefel channel mixing)."""

from manifold_aps.flows.conditioner import GraphConditioner
from manifold_aps.flows.flow import ConditionalFlow, FlowConfig
from manifold_aps.flows.layers import (
    AffineCoupling,
    ConditionalAffine,
    FlowCondition,
    SpectralCoupling,
    SpectralScale,
    StiefelChannelMix,
    bounded_log_scale,
)

__all__ = [
    "AffineCoupling",
    "ConditionalAffine",
    "ConditionalFlow",
    "FlowCondition",
    "FlowConfig",
    "GraphConditioner",
    "SpectralCoupling",
    "SpectralScale",
    "StiefelChannelMix",
    "bounded_log_scale",
]
