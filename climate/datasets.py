"""The ERA5 training datasets of the project's priors, registered with `manifold_aps.datasets`.

`manifold_aps.build_prior_dataset("era5-uk")` and ``"era5-global"`` reach these builders through
the ``manifold_aps.datasets`` entry points of this package (`pyproject.toml`): the core package
never imports `climate`.

* ``era5-uk``: ERA5 t2m over the UK at 0.25° (the shipped sample). Train: 1-18 March 2019,
  validation: 19-21 March, test: 25-31 March.
* ``era5-global``: ERA5 t2m, global 1° (24 steps, 25-31 March 2026), regridded to HEALPix
  (nside 16); augmented by rotations about the polar axis by whole degrees (an exact roll of
  the lat-lon field before regridding). Train: steps 0-15, validation 16-17, test 18-23.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from climate.demo import default_sample_path
from climate.era5 import grid_domain, open_era5, to_signal
from climate.regrid import latlon_to_healpix_matrix
from manifold_aps.datasets import PriorDataset, TensorSource, require_file
from manifold_aps.geometry import HealpixSphere
from manifold_aps.geometry.domain import sparse_to_torch

__all__ = ["era5_global", "era5_uk"]


def era5_uk(root: Path) -> PriorDataset:
    """``era5-uk``: the shipped UK sample (33 x 49 cells, K); `root` is not used (the file ships)."""
    da = open_era5(default_sample_path(), "t2m")["t2m"].load()
    day = da["time"].dt.day
    train, _ = to_signal(da.where(day <= 18, drop=True), dtype=torch.float32)
    val, _ = to_signal(da.where((day >= 19) & (day <= 21), drop=True), dtype=torch.float32)
    test, _ = to_signal(da.where(day >= 25, drop=True), dtype=torch.float32)
    return PriorDataset(
        "era5-uk", grid_domain(da), TensorSource(train, val), test, "K",
        "ERA5 t2m UK 0.25°, hourly; train 1-18 Mar 2019, val 19-21, test 25-31",
        extra={"variable": "t2m"},
    )


def era5_global(root: Path, nside: int = 16) -> PriorDataset:
    """``era5-global``: the global 1° file of `root`/era5 on HEALPix `nside` (K), rolled in longitude."""
    da = open_era5(require_file(root / "era5" / "era5_global_1deg_2026-03-25_to_31_24steps.nc"), "t2m")["t2m"].load()
    grid = grid_domain(da)
    matrix = sparse_to_torch(latlon_to_healpix_matrix(grid, nside), torch.float32)
    fields = torch.from_numpy(da.values.astype(np.float32))  # (T, nlat, nlon)
    nlon = fields.shape[-1]

    def regrid(x):  # (n, nlat, nlon) -> (n, Npix, 1)
        flat = x.reshape(x.shape[0], -1).T
        return torch.sparse.mm(matrix, flat).T[:, :, None]

    train_ll = fields[:16]

    class _Rolled(TensorSource):
        def batch(self, generator, n):
            idx = torch.randint(0, train_ll.shape[0], (n,), generator=generator)
            shifts = torch.randint(0, nlon, (n,), generator=generator)
            x = torch.stack([torch.roll(train_ll[i], int(s), dims=-1) for i, s in zip(idx, shifts)])
            return regrid(x)

    source = _Rolled(regrid(train_ll), regrid(fields[16:18]))
    return PriorDataset(
        "era5-global", HealpixSphere(nside), source, regrid(fields[18:]), "K",
        f"ERA5 t2m global 1° regridded to HEALPix nside {nside}; train steps 0-15 (rolled in longitude), val 16-17, test 18-23",
    )
