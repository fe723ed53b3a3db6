"""Climate data on the sphere: ERA5 reading, masks, imputation to CF datasets, scores and maps."""

# pyproj must load its bundled libcurl before the netCDF4 library loads its own; in the other
# order the interpreter aborts at exit once cartopy is used ("double free or corruption").
import pyproj  # noqa: F401

from climate.era5 import FieldLayout, from_signal, grid_domain, open_era5, to_signal
from climate.impute import impute, write_imputation
from climate.masks import (
    box_mask,
    crop_region,
    land_mask,
    mask_operator,
    missing_mask,
    random_mask,
    sea_mask,
    station_mask,
    swath_mask,
)
from climate.model import FieldStandardizer, GaussianImputer, ImputationModel, load_model
from climate.plot import configure_cartopy_offline, plot_imputation, plot_panels
from climate.regrid import latlon_to_healpix
from climate.scores import imputation_scores

__all__ = [
    "FieldLayout",
    "FieldStandardizer",
    "GaussianImputer",
    "ImputationModel",
    "box_mask",
    "configure_cartopy_offline",
    "crop_region",
    "from_signal",
    "grid_domain",
    "imputation_scores",
    "impute",
    "land_mask",
    "latlon_to_healpix",
    "load_model",
    "mask_operator",
    "missing_mask",
    "open_era5",
    "plot_imputation",
    "plot_panels",
    "random_mask",
    "sea_mask",
    "station_mask",
    "swath_mask",
    "to_signal",
    "write_imputation",
]
