"""Forward operators, noise models and seeded random mask generators."""

from manifold_aps.operators.heat import HeatBlur
from manifold_aps.operators.linear import Compose, Identity, LinearOperator, Mask, Subsample
from manifold_aps.operators.masks import (
    BoxMaskGenerator,
    CapMaskGenerator,
    MaskGenerator,
    MixtureMaskGenerator,
    RandomMaskGenerator,
    StationMaskGenerator,
    SwathMaskGenerator,
)
from manifold_aps.operators.noise import GaussianNoise

__all__ = [
    "BoxMaskGenerator",
    "CapMaskGenerator",
    "Compose",
    "GaussianNoise",
    "HeatBlur",
    "Identity",
    "LinearOperator",
    "Mask",
    "MaskGenerator",
    "MixtureMaskGenerator",
    "RandomMaskGenerator",
    "StationMaskGenerator",
    "Subsample",
    "SwathMaskGenerator",
]
