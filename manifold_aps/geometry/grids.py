"""Rectilinear grids: regular latitude-longitude grids on the sphere and planar grids."""

from __future__ import annotations

import numpy as np

from manifold_aps.geometry.domain import Coarsening, Domain, partition_pooling
from manifold_aps.geometry.sphere import SphericalDomain

__all__ = ["PlanarGrid", "SphereGrid", "cell_bounds"]


def _grid_pairs(nrow: int, ncol: int, periodic_cols: bool):
    """Index pairs of horizontal (along a row) and vertical (between rows) neighbours."""
    idx = np.arange(nrow * ncol).reshape(nrow, ncol)
    right = np.roll(idx, -1, axis=1) if periodic_cols and ncol > 2 else idx[:, 1:]
    left = idx if periodic_cols and ncol > 2 else idx[:, :-1]
    return (left, right), (idx[:-1, :], idx[1:, :])


def _block_assignment(nrow: int, ncol: int) -> tuple[np.ndarray, int, int]:
    """Coarse cell of each fine cell for 2x2 blocks (a last odd row/column forms its own block)."""
    nrow_c, ncol_c = (nrow + 1) // 2, (ncol + 1) // 2
    i, j = np.meshgrid(np.arange(nrow) // 2, np.arange(ncol) // 2, indexing="ij")
    return (i * ncol_c + j).ravel(), nrow_c, ncol_c


def _coarse_bounds(bounds: np.ndarray) -> np.ndarray:
    """Bounds of 2-cell blocks: every other fine bound, plus the last one."""
    return np.append(bounds[::2], bounds[-1]) if len(bounds) % 2 == 0 else bounds[::2]


def _check_monotonic(values: np.ndarray, name: str) -> int:
    """Return +1 (increasing) or -1 (decreasing); raise if `values` is neither strictly."""
    if values.ndim != 1 or values.size < 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be a finite 1-D array, got shape {values.shape}")
    if values.size == 1:
        return 1
    d = np.diff(values)
    if np.all(d > 0):
        return 1
    if np.all(d < 0):
        return -1
    raise ValueError(f"{name} must be strictly monotonic, got {values[:6].tolist()}...")


def cell_bounds(centres: np.ndarray, lo: float = -np.inf, hi: float = np.inf) -> np.ndarray:
    """Cell edges `(n+1,)` halfway between monotonic `centres` `(n,)`, clipped to [lo, hi].

    The outer edges are half a spacing beyond the end centres (a centre on `lo` or `hi`, such as
    a pole, is itself an edge). The result runs in the same direction as `centres`.
    """
    _check_monotonic(centres, "centres")
    if centres.size < 2:
        raise ValueError("need at least two centres to infer cell bounds; pass bounds explicitly")
    mid = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - 0.5 * (centres[1] - centres[0])
    last = centres[-1] + 0.5 * (centres[-1] - centres[-2])
    bounds = np.concatenate([[first], mid, [last]])
    return np.clip(bounds, lo, hi)


class SphereGrid(SphericalDomain):
    r"""A regular latitude-longitude grid on the unit sphere, regional or global.

    Nodes are cell centres in the order of the data, `node = i_lat * nlon + j_lon` (a field
    `(nlat, nlon)` reshaped in C order). Latitude may increase or decrease and may include the
    poles; longitudes increase (0..360 or -180..180, or a regional window). A grid whose cells
    span 360 degrees is periodic in longitude.

    Geometry: finite volumes. The mass of a cell is its exact area
    :math:`\Delta\lambda\,(\sin\varphi_{hi} - \sin\varphi_{lo})`; the conductance between two
    neighbouring cells is the length of their shared edge over the distance between centres
    (along a parallel at the cell's mid-latitude for east-west neighbours, along a meridian for
    north-south ones). A pole point owns a thin wedge cell per longitude.

    Arguments:
        lat_deg: latitudes of the cell centres, shape `(nlat,)`, degrees.
        lon_deg: longitudes of the cell centres, shape `(nlon,)`, degrees.
        lat_bounds_deg: optional cell edges `(nlat+1,)`, same direction as `lat_deg`.
        lon_bounds_deg: optional cell edges `(nlon+1,)`, increasing.

    Example:
        >>> import numpy as np
        >>> g = SphereGrid(np.arange(90, -91, -30.0), np.arange(0, 360, 30.0))
        >>> g.shape, round(g.total_area / (4 * np.pi), 12)
        ((7, 12), 1.0)
    """

    def __init__(self, lat_deg, lon_deg, *, lat_bounds_deg=None, lon_bounds_deg=None):
        lat = np.asarray(lat_deg, dtype=np.float64)
        lon = np.asarray(lon_deg, dtype=np.float64)
        _check_monotonic(lat, "lat_deg")
        if np.any(np.abs(lat) > 90):
            raise ValueError(f"lat_deg must lie in [-90, 90], got range [{lat.min()}, {lat.max()}]")
        if lon.ndim != 1 or lon.size < 1 or not np.all(np.isfinite(lon)):
            raise ValueError(f"lon_deg must be a finite 1-D array, got shape {lon.shape}")
        step = np.diff(lon) % 360.0
        if np.any(step <= 0) or np.any(step >= 180):
            raise ValueError(
                "lon_deg must increase (crossing 360 or 180 is fine), "
                f"got {lon[:6].tolist()}...; reverse the longitude axis first"
            )
        lon_unwrapped = lon[0] + np.concatenate([[0.0], np.cumsum(step)])
        if lat_bounds_deg is None:
            lat_b = cell_bounds(lat, -90.0, 90.0)
        else:
            lat_b = np.asarray(lat_bounds_deg, dtype=np.float64)
            if lat_b.shape != (lat.size + 1,):
                raise ValueError(
                    f"lat_bounds_deg must have shape ({lat.size + 1},), got {lat_b.shape}"
                )
        if lon_bounds_deg is None:
            if lon.size > 1 and np.allclose(step, step[0]) and np.isclose(step[0] * lon.size, 360):
                lon_b = lon_unwrapped[0] - step[0] / 2 + step[0] * np.arange(lon.size + 1)
            else:
                lon_b = cell_bounds(lon_unwrapped)
        else:
            lon_b = np.asarray(lon_bounds_deg, dtype=np.float64)
            if lon_b.shape != (lon.size + 1,):
                raise ValueError(
                    f"lon_bounds_deg must have shape ({lon.size + 1},), got {lon_b.shape}"
                )
        if np.any(np.diff(lon_b) <= 0) or lon_b[-1] - lon_b[0] > 360 + 1e-9:
            raise ValueError("lon_bounds_deg must increase and span at most 360 degrees")
        self.lat_deg, self.lon_deg = lat, lon
        self.lat_bounds_deg, self.lon_bounds_deg = lat_b, lon_b
        self.periodic = bool(np.isclose(lon_b[-1] - lon_b[0], 360.0))
        nlat, nlon = lat.size, lon.size

        phi = np.deg2rad(lat)
        lam = np.deg2rad(lon_unwrapped)
        phi_lo = np.deg2rad(np.minimum(lat_b[:-1], lat_b[1:]))
        phi_hi = np.deg2rad(np.maximum(lat_b[:-1], lat_b[1:]))
        dlam_cell = np.deg2rad(np.diff(lon_b))
        mass = np.outer(np.sin(phi_hi) - np.sin(phi_lo), dlam_cell).ravel()
        pos = np.stack(
            [
                np.outer(np.cos(phi), np.cos(lam)),
                np.outer(np.cos(phi), np.sin(lam)),
                np.outer(np.sin(phi), np.ones(nlon)),
            ],
            axis=-1,
        ).reshape(-1, 3)

        (ew_a, ew_b), (ns_a, ns_b) = _grid_pairs(nlat, nlon, self.periodic)
        # East-west: shared meridian edge (phi_hi - phi_lo) over the parallel distance at mid-lat.
        dlam_centres = (
            np.diff(np.append(lam, lam[0] + 2 * np.pi)) if self.periodic else np.diff(lam)
        )
        dlam_centres = dlam_centres[: ew_a.shape[1]]
        cos_mid = np.cos(0.5 * (phi_lo + phi_hi))
        ew_w = np.outer((phi_hi - phi_lo) / cos_mid, 1.0 / dlam_centres)
        # North-south: shared parallel edge cos(phi_b) dlam over the meridian distance of centres.
        phi_b = np.deg2rad(lat_b[1:-1])
        ns_w = np.outer(np.cos(phi_b) / np.abs(np.diff(phi)), dlam_cell)
        edge_index = np.stack(
            [
                np.concatenate([ew_a.ravel(), ns_a.ravel()]),
                np.concatenate([ew_b.ravel(), ns_b.ravel()]),
            ]
        )
        weights = np.concatenate([ew_w.ravel(), ns_w.ravel()])
        super().__init__(pos, mass, edge_index, weights, name=f"latlon{nlat}x{nlon}")

    @property
    def shape(self) -> tuple[int, int]:
        """`(nlat, nlon)`."""
        return self.lat_deg.size, self.lon_deg.size

    def extra_repr(self) -> str:
        """Grid size, latitude and longitude ranges and periodicity, for `repr`."""
        nlat, nlon = self.shape
        return (
            f"nlat={nlat}, nlon={nlon}, lat=[{self.lat_deg[0]:g}..{self.lat_deg[-1]:g}], "
            f"lon=[{self.lon_deg[0]:g}..{self.lon_deg[-1]:g}], periodic={self.periodic}"
        )

    def _fingerprint_parts(self) -> list[bytes]:
        return super()._fingerprint_parts() + [
            np.round(self.lat_bounds_deg, 8).tobytes(),
            np.round(self.lon_bounds_deg, 8).tobytes(),
        ]

    def coarsen(self) -> Coarsening:
        """Pool 2x2 blocks of cells into the exact union cells (a last odd row/column alone)."""
        nlat, nlon = self.shape
        if nlat < 2 and nlon < 2:
            raise ValueError("cannot coarsen a 1x1 grid")
        assignment, nlat_c, nlon_c = _block_assignment(nlat, nlon)
        lat_b = _coarse_bounds(self.lat_bounds_deg)
        lon_b = _coarse_bounds(self.lon_bounds_deg)
        coarse = SphereGrid(
            0.5 * (lat_b[1:] + lat_b[:-1]),
            0.5 * (lon_b[1:] + lon_b[:-1]),
            lat_bounds_deg=lat_b,
            lon_bounds_deg=lon_b,
        )
        pool, unpool = partition_pooling(assignment, self.mass.numpy(), coarse.num_nodes)
        return Coarsening(coarse, pool, unpool)


class PlanarGrid(Domain):
    r"""A rectangular grid of `ny x nx` cells in the plane: the Euclidean case.

    Nodes are cell centres `(x, y, 0)` in C order (`node = i_y * nx + j_x`); the mass is the cell
    area and the stiffness is the 5-point finite-volume Laplacian with natural (Neumann)
    boundaries, whose eigenvalues are
    :math:`\tfrac{4}{h_x^2}\sin^2\tfrac{\pi p}{2 n_x} + \tfrac{4}{h_y^2}\sin^2\tfrac{\pi q}{2 n_y}`.

    Arguments:
        ny, nx: number of cells along y and x.
        spacing: cell size `(hy, hx)` or one number for both.

    Example:
        >>> PlanarGrid(8, 8).num_nodes
        64
    """

    def __init__(self, ny: int, nx: int, *, spacing: float | tuple[float, float] = 1.0):
        if ny < 1 or nx < 1 or ny * nx < 2:
            raise ValueError(f"PlanarGrid needs at least 2 cells, got ny={ny}, nx={nx}")
        hy, hx = (spacing, spacing) if np.isscalar(spacing) else spacing
        if hy <= 0 or hx <= 0:
            raise ValueError(f"spacing must be positive, got {(hy, hx)}")
        self.ny, self.nx, self.spacing = int(ny), int(nx), (float(hy), float(hx))
        y, x = np.meshgrid((np.arange(ny) + 0.5) * hy, (np.arange(nx) + 0.5) * hx, indexing="ij")
        pos = np.stack([x.ravel(), y.ravel(), np.zeros(ny * nx)], axis=1)
        (ew_a, ew_b), (ns_a, ns_b) = _grid_pairs(self.ny, self.nx, periodic_cols=False)
        edge_index = np.stack(
            [
                np.concatenate([ew_a.ravel(), ns_a.ravel()]),
                np.concatenate([ew_b.ravel(), ns_b.ravel()]),
            ]
        )
        weights = np.concatenate([np.full(ew_a.size, hy / hx), np.full(ns_a.size, hx / hy)])
        super().__init__(
            pos, np.full(ny * nx, hx * hy), edge_index, weights, name=f"plane{ny}x{nx}"
        )

    @property
    def shape(self) -> tuple[int, int]:
        """`(ny, nx)`."""
        return self.ny, self.nx

    def extra_repr(self) -> str:
        """Grid size and spacing, for `repr`."""
        return f"ny={self.ny}, nx={self.nx}, spacing={self.spacing}"

    def coarsen(self) -> Coarsening:
        """Pool 2x2 blocks; both sizes must be even so the coarse grid stays uniform."""
        if self.ny % 2 or self.nx % 2:
            raise ValueError(f"PlanarGrid.coarsen needs even sizes, got {self.shape}")
        assignment, ny_c, nx_c = _block_assignment(self.ny, self.nx)
        coarse = PlanarGrid(ny_c, nx_c, spacing=(2 * self.spacing[0], 2 * self.spacing[1]))
        pool, unpool = partition_pooling(assignment, self.mass.numpy(), coarse.num_nodes)
        return Coarsening(coarse, pool, unpool)
