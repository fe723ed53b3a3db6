"""Posterior engines; the exact Gaussian posterior is the yardstick for all the others."""

from manifold_aps.posterior.classical import HarmonicInterpolation, NearestNeighbour
from manifold_aps.posterior.daps import DAPS, DAPSOutput
from manifold_aps.posterior.dps import DPS, DPSOutput
from manifold_aps.posterior.gaussian import (
    ExactGaussianPosterior,
    GaussianConditional,
    operator_matrix,
)
from manifold_aps.posterior.gmrf import GMRFConditional, GMRFObservation, GMRFPosterior
from manifold_aps.posterior.gmrf_fit import GMRFFit, fit_gmrf
from manifold_aps.posterior.inner_covariance import InnerCovariance, fit_inner_covariance

__all__ = [
    "DAPS",
    "DAPSOutput",
    "DPS",
    "DPSOutput",
    "ExactGaussianPosterior",
    "GMRFConditional",
    "GMRFFit",
    "GMRFObservation",
    "GMRFPosterior",
    "GaussianConditional",
    "HarmonicInterpolation",
    "InnerCovariance",
    "NearestNeighbour",
    "fit_gmrf",
    "fit_inner_covariance",
    "operator_matrix",
]
