"""Names of dimensions and coordinates used across `climate/` (the only place they are spelled)."""

__all__ = ["ALIASES", "LATITUDE", "LEVEL", "LONGITUDE", "REALIZATION", "SAMPLE", "TIME"]

LATITUDE = "latitude"
LONGITUDE = "longitude"
TIME = "time"
LEVEL = "level"
REALIZATION = "number"
SAMPLE = "sample"

# Spellings met in ERA5 files (CDS netCDF, cfgrib GRIB, WeatherBench zarr) -> our names.
ALIASES = {
    "lat": LATITUDE,
    "lon": LONGITUDE,
    "valid_time": TIME,
    "isobaricInhPa": LEVEL,
    "pressure_level": LEVEL,
    "plev": LEVEL,
    "member": REALIZATION,
    "ensemble_member": REALIZATION,
}
