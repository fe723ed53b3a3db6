"""Names of dimensions and coordinates used across `climate/` (the only place they are spelled)."""

__all__ = [
    "ALIASES",
    "ALL_SAMPLES",
    "LATITUDE",
    "LEVEL",
    "LONGITUDE",
    "REALIZATION",
    "SAMPLE",
    "TIME",
    "VALUES",
]

LATITUDE = "latitude"
LONGITUDE = "longitude"
TIME = "time"
LEVEL = "level"
REALIZATION = "number"
SAMPLE = "sample"
# The one spatial dimension of an unstructured (HEALPix) field, as cfgrib names it: `latitude` and
# `longitude` are then coordinates along it.
VALUES = "values"
# Scalar coordinate (the number of samples) of the statistics over the samples, `<var>_mean` and
# `<var>_std`: CF 7.3 `cell_methods` names a dimension or scalar coordinate of the variable (or
# a standard name, or "area"), and `sample` is not a dimension of theirs.
ALL_SAMPLES = "all_samples"

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
