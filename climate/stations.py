"""Synthetic station networks on a latitude-longitude grid, for `climate.station_mask`.

Where no real station list is at hand, `synthetic_stations` draws a seeded, made-up one: it
says what it is (the stations are named ``synthetic-00000``, ...), so that its scores are not
mistaken for those of a real network.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from climate.schema import LATITUDE, LONGITUDE
from manifold_aps.geometry import SphereGrid

__all__ = ["synthetic_stations"]


def synthetic_stations(like, fraction: float, seed: int = 0) -> pd.DataFrame:
    """A made-up station network: one station at a random point inside a share of the cells.

    The cells are drawn without replacement with probability proportional to their area (the
    grid's own, `SphereGrid.mass`, polar rows included); each station lies at a uniform random
    offset of up to 0.3 grid spacings from its cell's centre, so that `climate.station_mask` maps
    it back to that cell.

    Args:
        like: a DataArray or Dataset with `latitude`/`longitude` coordinates (degrees), at
            least 2 of each, evenly spaced.
        fraction: the share of the cells that get a station, in (0, 1].
        seed: seed of the draw.

    Returns:
        a DataFrame with columns `station` (``synthetic-<k>``), `lat` and `lon` (degrees,
        rounded to 4 decimals), one row per station, `max(1, round(fraction * cells))` rows.

    Raises:
        ValueError: `fraction` outside (0, 1], or a grid with fewer than 2 latitudes or
            longitudes.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    lat, lon = np.asarray(like[LATITUDE].values), np.asarray(like[LONGITUDE].values)
    if lat.size < 2 or lon.size < 2:
        raise ValueError(
            f"synthetic_stations needs at least 2 latitudes and 2 longitudes, "
            f"got {lat.size} x {lon.size}"
        )
    rng = np.random.default_rng(seed)
    area = SphereGrid(lat, lon).mass.numpy()
    count = max(1, round(fraction * area.size))
    cells = rng.choice(area.size, size=count, replace=False, p=area / area.sum())
    i, j = np.divmod(cells, lon.size)
    dlat, dlon = abs(lat[1] - lat[0]), abs(lon[1] - lon[0])
    return pd.DataFrame(
        {
            "station": [f"synthetic-{k:05d}" for k in range(cells.size)],
            "lat": np.clip(lat[i] + rng.uniform(-0.3, 0.3, cells.size) * dlat, -90, 90).round(4),
            "lon": (lon[j] + rng.uniform(-0.3, 0.3, cells.size) * dlon).round(4),
        }
    )
