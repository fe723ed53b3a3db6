"""Climate data on the sphere: ERA5 reading, field <-> signal conversion, maps."""

# pyproj must load its bundled libcurl before the netCDF4 library loads its own; in the other
# order the interpreter aborts at exit once cartopy is used ("double free or corruption").
import pyproj  # noqa: F401, I001

from climate.era5 import FieldLayout, from_signal, grid_domain, open_era5, to_signal
from climate.plot import configure_cartopy_offline, plot_panels

__all__ = [
    "FieldLayout",
    "configure_cartopy_offline",
    "from_signal",
    "grid_domain",
    "open_era5",
    "plot_panels",
    "to_signal",
]
