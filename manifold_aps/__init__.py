"""manifold-aps: posterior sampling for inverse problems on spheres, meshes and climate grids.

The public API, importable from `manifold_aps` itself (`__all__`); the subpackages hold the
building blocks behind it.

* Domains: `Domain`, `SphericalDomain`, `HealpixSphere`, `IcosphereMesh`, `SphereGrid`,
  `PlanarGrid`, `TriangleMesh`, `Coarsening`; `domain_spec`, `domain_from_spec`,
  `DomainSpecError`.
* Forward operators and noise: `LinearOperator`, `Identity`, `Mask`, `Subsample`, `HeatBlur`,
  `Compose`, `GaussianNoise`; seeded mask generators `MaskGenerator`, `RandomMaskGenerator`,
  `BoxMaskGenerator`, `CapMaskGenerator`, `StationMaskGenerator`, `SwathMaskGenerator`,
  `MixtureMaskGenerator`.
* Priors: `GaussianPrior` (`fit_matern`, `MaternFit`), `MaternGMRF`, the diffusion `VPSDE` and
  the trained `ScorePrior` (`train_prior`, `load_prior`; `reverse_sde_sample`,
  `probability_flow_sample`, `SamplerOutput`).
* Posterior engines: exact `ExactGaussianPosterior` (`GaussianConditional`) and `GMRFPosterior`
  (`GMRFConditional`, `GMRFObservation`, `fit_gmrf`, `GMRFFit`); zero-shot `DPS` (`DPSOutput`),
  `DAPS` (`DAPSOutput`; its fitted inner covariance `InnerCovariance`, `fit_inner_covariance`)
  and `MGDM`; distilled `AmortizedFlowPosterior` (APS, `APSConfig`),
  `ImplicitGenerator` (`ImplicitConfig`) and `AmortizedVI` (`AmortizedVIConfig`); point estimates
  `NearestNeighbour` and `HarmonicInterpolation`.
* The engine registry `ENGINES` (`EngineSpec`, `engine_names`, `distilled_engines`,
  `engine_for_checkpoint`), `train_engine`, `load_engine`, `load_trained_engine`; any engine on
  observed values with NaN gaps: `reconstruct` (`Reconstruction`).
* Flows: `ConditionalFlow`, `FlowConfig`.
* Training: `Trainer`, `TrainConfig`, `TrainResult`, `load_checkpoint`, `CheckpointError`.
* Datasets: `build_prior_dataset`, `dataset_names`, `PriorDataset`, `TensorSource`,
  `GaussianSource`, `data_dir`, `wmap_masked_problem`.
* Scores: `weighted_mean`, `weighted_rmse`, `crps_ensemble`, `central_interval`,
  `interval_coverage`, `pit_coverage`, `spread_skill_ratio`, `rank_histogram`,
  `bootstrap_interval`, `posterior_scores`, `band_power_ratios`; on xarray
  fields `cell_area_weights`, `xr_rmse`, `xr_bias`, `xr_crps`, `xr_coverage`,
  `xr_spread_skill`.
* Sparse linear algebra: `SparseCholesky`, `NotPositiveDefiniteError`. Figures: `plot_signals`,
  `healpix_panel`, `place_suptitle`, `add_attribution`.

The names whose modules load the graph networks (`torch_geometric`, over a second to import:
the score prior, the flows and the distilled engines) are imported on first use, so that
`import manifold_aps` stays as quick as the Gaussian engines need.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from manifold_aps.datasets import (
    GaussianSource,
    PriorDataset,
    TensorSource,
    build_prior_dataset,
    data_dir,
    dataset_names,
    wmap_masked_problem,
)
from manifold_aps.evaluation import band_power_ratios, posterior_scores
from manifold_aps.geometry import (
    Coarsening,
    Domain,
    DomainSpecError,
    HealpixSphere,
    IcosphereMesh,
    PlanarGrid,
    SphereGrid,
    SphericalDomain,
    TriangleMesh,
    domain_from_spec,
    domain_spec,
)
from manifold_aps.metrics import (
    bootstrap_interval,
    cell_area_weights,
    central_interval,
    crps_ensemble,
    interval_coverage,
    pit_coverage,
    rank_histogram,
    spread_skill_ratio,
    weighted_mean,
    weighted_rmse,
    xr_bias,
    xr_coverage,
    xr_crps,
    xr_rmse,
    xr_spread_skill,
)
from manifold_aps.operators import (
    BoxMaskGenerator,
    CapMaskGenerator,
    Compose,
    GaussianNoise,
    HeatBlur,
    Identity,
    LinearOperator,
    Mask,
    MaskGenerator,
    MixtureMaskGenerator,
    RandomMaskGenerator,
    StationMaskGenerator,
    Subsample,
    SwathMaskGenerator,
)
from manifold_aps.plotting import add_attribution, healpix_panel, place_suptitle, plot_signals
from manifold_aps.posterior import (
    DPS,
    DPSOutput,
    ExactGaussianPosterior,
    GaussianConditional,
    GMRFConditional,
    GMRFFit,
    GMRFObservation,
    GMRFPosterior,
    HarmonicInterpolation,
    NearestNeighbour,
    fit_gmrf,
)
from manifold_aps.posterior.daps import DAPS, DAPSOutput
from manifold_aps.posterior.engines import (
    ENGINES,
    EngineSpec,
    distilled_engines,
    engine_for_checkpoint,
    engine_names,
    load_engine,
    load_trained_engine,
    train_engine,
)
from manifold_aps.posterior.inner_covariance import InnerCovariance, fit_inner_covariance
from manifold_aps.posterior.mgdm import MGDM
from manifold_aps.priors import VPSDE, GaussianPrior, MaternFit, MaternGMRF, fit_matern
from manifold_aps.priors.sampling import SamplerOutput, probability_flow_sample, reverse_sde_sample
from manifold_aps.reconstruct import Reconstruction, reconstruct
from manifold_aps.sparse_cholesky import NotPositiveDefiniteError, SparseCholesky
from manifold_aps.training import (
    CheckpointError,
    TrainConfig,
    Trainer,
    TrainResult,
    load_checkpoint,
)

if TYPE_CHECKING:  # the names of `_LAZY`, for type checkers and the import graph
    from manifold_aps.flows import ConditionalFlow, FlowConfig
    from manifold_aps.posterior.amortized_vi import AmortizedVI, AmortizedVIConfig
    from manifold_aps.posterior.aps import AmortizedFlowPosterior, APSConfig
    from manifold_aps.posterior.implicit import ImplicitConfig, ImplicitGenerator
    from manifold_aps.priors.score import ScorePrior
    from manifold_aps.priors.train import load_prior, train_prior

__version__ = "0.1.0"

# Public names imported on first use (their modules import torch_geometric), by module.
_LAZY = {
    "APSConfig": "manifold_aps.posterior.aps",
    "AmortizedFlowPosterior": "manifold_aps.posterior.aps",
    "AmortizedVI": "manifold_aps.posterior.amortized_vi",
    "AmortizedVIConfig": "manifold_aps.posterior.amortized_vi",
    "ConditionalFlow": "manifold_aps.flows",
    "FlowConfig": "manifold_aps.flows",
    "ImplicitConfig": "manifold_aps.posterior.implicit",
    "ImplicitGenerator": "manifold_aps.posterior.implicit",
    "ScorePrior": "manifold_aps.priors.score",
    "load_prior": "manifold_aps.priors.train",
    "train_prior": "manifold_aps.priors.train",
}

__all__ = [
    "APSConfig",
    "AmortizedFlowPosterior",
    "AmortizedVI",
    "AmortizedVIConfig",
    "BoxMaskGenerator",
    "CapMaskGenerator",
    "CheckpointError",
    "Coarsening",
    "Compose",
    "ConditionalFlow",
    "DAPS",
    "DAPSOutput",
    "DPS",
    "DPSOutput",
    "Domain",
    "DomainSpecError",
    "ENGINES",
    "EngineSpec",
    "ExactGaussianPosterior",
    "FlowConfig",
    "GMRFConditional",
    "GMRFFit",
    "GMRFObservation",
    "GMRFPosterior",
    "GaussianConditional",
    "GaussianNoise",
    "GaussianPrior",
    "GaussianSource",
    "HarmonicInterpolation",
    "HealpixSphere",
    "HeatBlur",
    "IcosphereMesh",
    "Identity",
    "ImplicitConfig",
    "ImplicitGenerator",
    "InnerCovariance",
    "LinearOperator",
    "MGDM",
    "Mask",
    "MaskGenerator",
    "MaternFit",
    "MaternGMRF",
    "MixtureMaskGenerator",
    "NearestNeighbour",
    "NotPositiveDefiniteError",
    "PlanarGrid",
    "PriorDataset",
    "RandomMaskGenerator",
    "Reconstruction",
    "SamplerOutput",
    "ScorePrior",
    "SparseCholesky",
    "SphereGrid",
    "SphericalDomain",
    "StationMaskGenerator",
    "Subsample",
    "SwathMaskGenerator",
    "TensorSource",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TriangleMesh",
    "VPSDE",
    "add_attribution",
    "band_power_ratios",
    "bootstrap_interval",
    "build_prior_dataset",
    "cell_area_weights",
    "central_interval",
    "crps_ensemble",
    "data_dir",
    "dataset_names",
    "distilled_engines",
    "domain_from_spec",
    "domain_spec",
    "engine_for_checkpoint",
    "engine_names",
    "fit_gmrf",
    "fit_inner_covariance",
    "fit_matern",
    "healpix_panel",
    "interval_coverage",
    "load_checkpoint",
    "load_engine",
    "load_prior",
    "load_trained_engine",
    "pit_coverage",
    "place_suptitle",
    "plot_signals",
    "posterior_scores",
    "probability_flow_sample",
    "rank_histogram",
    "reconstruct",
    "reverse_sde_sample",
    "spread_skill_ratio",
    "train_engine",
    "train_prior",
    "weighted_mean",
    "weighted_rmse",
    "wmap_masked_problem",
    "xr_bias",
    "xr_coverage",
    "xr_crps",
    "xr_rmse",
    "xr_spread_skill",
]


def __getattr__(name: str):
    """Import a name of `_LAZY` from its module on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    """The module's names, the lazily imported ones included."""
    return sorted({*globals(), *_LAZY})
