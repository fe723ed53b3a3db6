"""Geometry-aware neural network layers and the `ScoreNet` U-Net."""

from manifold_aps.nn.graph import DomainTensors, diffusion_matrix
from manifold_aps.nn.layers import (
    DiffusionConv,
    NodeLayerNorm,
    ResBlock,
    SpectralFilter,
    TimeEmbedding,
)
from manifold_aps.nn.unet import ScoreNet, ScoreNetConfig

__all__ = [
    "DiffusionConv",
    "DomainTensors",
    "NodeLayerNorm",
    "ResBlock",
    "ScoreNet",
    "ScoreNetConfig",
    "SpectralFilter",
    "TimeEmbedding",
    "diffusion_matrix",
]
