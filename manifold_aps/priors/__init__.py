"""Priors: the exact Gaussian (Matérn) prior and the VP-SDE diffusion."""

from manifold_aps.priors.gaussian import GaussianPrior, MaternFit, fit_matern
from manifold_aps.priors.gmrf import MaternGMRF
from manifold_aps.priors.sde import VPSDE

__all__ = ["GaussianPrior", "MaternFit", "MaternGMRF", "VPSDE", "fit_matern"]
