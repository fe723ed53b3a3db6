"""manifold-aps: posterior sampling for inverse problems on spheres, meshes and climate grids.

The public API in one place: domains (`manifold_aps.geometry`), forward operators and noise
(`manifold_aps.operators`), priors (`manifold_aps.priors`), posterior engines
(`manifold_aps.posterior`) and scores (`manifold_aps.metrics`).
"""

from manifold_aps.geometry import (
    Domain,
    HealpixSphere,
    IcosphereMesh,
    PlanarGrid,
    SphereGrid,
    TriangleMesh,
)
from manifold_aps.metrics import crps_ensemble, interval_coverage, spread_skill_ratio, weighted_rmse
from manifold_aps.operators import (
    BoxMaskGenerator,
    CapMaskGenerator,
    Compose,
    GaussianNoise,
    HeatBlur,
    Identity,
    LinearOperator,
    Mask,
    RandomMaskGenerator,
    StationMaskGenerator,
    Subsample,
    SwathMaskGenerator,
)
from manifold_aps.posterior import (
    ExactGaussianPosterior,
    GMRFPosterior,
    HarmonicInterpolation,
    NearestNeighbour,
    fit_gmrf,
)
from manifold_aps.priors import VPSDE, GaussianPrior, MaternGMRF, fit_matern

__version__ = "0.1.0"

__all__ = [
    "BoxMaskGenerator",
    "CapMaskGenerator",
    "Compose",
    "Domain",
    "ExactGaussianPosterior",
    "GMRFPosterior",
    "GaussianNoise",
    "GaussianPrior",
    "HealpixSphere",
    "HarmonicInterpolation",
    "HeatBlur",
    "Identity",
    "IcosphereMesh",
    "LinearOperator",
    "Mask",
    "MaternGMRF",
    "NearestNeighbour",
    "PlanarGrid",
    "RandomMaskGenerator",
    "SphereGrid",
    "StationMaskGenerator",
    "Subsample",
    "SwathMaskGenerator",
    "TriangleMesh",
    "VPSDE",
    "crps_ensemble",
    "fit_gmrf",
    "fit_matern",
    "interval_coverage",
    "spread_skill_ratio",
    "weighted_rmse",
]
