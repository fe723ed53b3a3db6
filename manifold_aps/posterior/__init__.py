"""Posterior engines; the exact Gaussian posterior is the yardstick for all the others."""

from manifold_aps.posterior.classical import HarmonicInterpolation, NearestNeighbour
from manifold_aps.posterior.dps import DPS, DPSOutput
from manifold_aps.posterior.gaussian import ExactGaussianPosterior, GaussianConditional, operator_matrix

__all__ = [
    "DPS",
    "DPSOutput",
    "ExactGaussianPosterior",
    "GaussianConditional",
    "HarmonicInterpolation",
    "NearestNeighbour",
    "operator_matrix",
]
