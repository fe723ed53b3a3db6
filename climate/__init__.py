"""Climate data on the sphere: ERA5 reading, masks, imputation to CF datasets, scores and maps.

The public API, importable from `climate` itself (`__all__`):

* Reading and grids: `open_era5`, `FieldLayout`, `to_signal`, `from_signal`, `grid_domain`,
  `latlon_to_healpix`, `latlon_to_healpix_matrix`, `healpix_to_latlon_matrix`,
  `default_sample_path` (the ERA5 sample shipped with the package).
* Masks (True = observed): `missing_mask`, `random_mask`, `station_mask` (with
  `synthetic_stations` where no real network is at hand), `swath_mask`, `box_mask`,
  `land_mask`, `sea_mask`, `parse_mask_spec`, `align_mask`, `crop_region`, `mask_operator`.
* Models and imputation: `GaussianImputer`, `ScoreImputer`, `ImputationModel`,
  `FieldStandardizer`, `load_model`, `impute`, `write_imputation`, `imputation_scores`.
* Plots: `plot_imputation`, `plot_panels`, `configure_cartopy_offline`.
* The `manifold-aps impute` workflow: `ImputeRequest`, `run_impute`, `Period`, `parse_period`,
  `coarsen_grid`, `upsample_blocks`; the demo `run_demo` (`DemoScores`); the ``grid-file``
  dataset of a user's own gridded file, `grid_file_dataset`.
"""

# pyproj must load its bundled libcurl before the netCDF4 library loads its own; in the other
# order the interpreter aborts at exit once cartopy is used ("double free or corruption").
import pyproj  # noqa: F401

from climate.datasets import grid_file_dataset
from climate.demo import DemoScores, default_sample_path, run_demo
from climate.era5 import FieldLayout, from_signal, grid_domain, open_era5, to_signal
from climate.impute import impute, write_imputation
from climate.masks import (
    align_mask,
    box_mask,
    crop_region,
    land_mask,
    mask_operator,
    missing_mask,
    parse_mask_spec,
    random_mask,
    sea_mask,
    station_mask,
    swath_mask,
)
from climate.model import (
    FieldStandardizer,
    GaussianImputer,
    ImputationModel,
    ScoreImputer,
    load_model,
)
from climate.plot import configure_cartopy_offline, plot_imputation, plot_panels
from climate.regrid import healpix_to_latlon_matrix, latlon_to_healpix, latlon_to_healpix_matrix
from climate.scores import imputation_scores
from climate.stations import synthetic_stations
from climate.workflow import (
    ImputeRequest,
    Period,
    coarsen_grid,
    parse_period,
    run_impute,
    upsample_blocks,
)

__all__ = [
    "DemoScores",
    "FieldLayout",
    "FieldStandardizer",
    "GaussianImputer",
    "ImputationModel",
    "ImputeRequest",
    "Period",
    "ScoreImputer",
    "align_mask",
    "box_mask",
    "coarsen_grid",
    "configure_cartopy_offline",
    "crop_region",
    "default_sample_path",
    "from_signal",
    "grid_domain",
    "grid_file_dataset",
    "healpix_to_latlon_matrix",
    "imputation_scores",
    "impute",
    "land_mask",
    "latlon_to_healpix",
    "latlon_to_healpix_matrix",
    "load_model",
    "mask_operator",
    "missing_mask",
    "open_era5",
    "parse_mask_spec",
    "parse_period",
    "plot_imputation",
    "plot_panels",
    "random_mask",
    "run_demo",
    "run_impute",
    "sea_mask",
    "station_mask",
    "swath_mask",
    "synthetic_stations",
    "to_signal",
    "upsample_blocks",
    "write_imputation",
]
