"""Conditional normalizing flows on domains (couplings, spectral scaling, Stiefel channel mix)."""

from manifold_aps.flows.conditioner import GraphConditioner
from manifold_aps.flows.flow import ConditionalFlow, FlowConfig
from manifold_aps.flows.layers import (
    ActNorm,
    AffineCoupling,
    CoarseCoupling,
    ConditionalAffine,
    FlowCondition,
    SpectralCoupling,
    SpectralScale,
    StiefelChannelMix,
    bounded_log_scale,
)
from manifold_aps.flows.spline import SplineCoupling, rational_quadratic

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "CoarseCoupling",
    "ConditionalAffine",
    "ConditionalFlow",
    "FlowCondition",
    "FlowConfig",
    "GraphConditioner",
    "SpectralCoupling",
    "SpectralScale",
    "SplineCoupling",
    "StiefelChannelMix",
    "bounded_log_scale",
    "rational_quadratic",
]
