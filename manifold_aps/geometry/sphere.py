"""Discretisations of the unit sphere: HEALPix pixels and subdivided icosahedra."""

from __future__ import annotations

import numpy as np
from scipy.spatial import ConvexHull, SphericalVoronoi

from manifold_aps.geometry.domain import Coarsening, Domain, partition_pooling
from manifold_aps.geometry.mesh import cotangent_weights, nearest_vertex_coarsening

__all__ = ["HealpixSphere", "IcosphereMesh", "SphericalDomain", "sphere_triangulation"]


def sphere_triangulation(points: np.ndarray) -> np.ndarray:
    """Faces `(F, 3)` of the spherical Delaunay triangulation of unit vectors `(N, 3)`.

    The convex hull of points on a sphere is their spherical Delaunay triangulation, so the
    cotangent weights of its edges are non-negative.
    """
    return ConvexHull(points).simplices.astype(np.int64)


class SphericalDomain(Domain):
    """A domain whose nodes lie on the unit sphere: exact great-circle distances, lat/lon."""

    def geodesic_distance(self, sources) -> np.ndarray:
        """Great-circle distance (radians) from the nearest of `sources`, shape `(N,)`."""
        pos = self.positions.numpy()
        cos = np.clip(pos @ pos[np.atleast_1d(sources)].T, -1.0, 1.0)
        return np.arccos(cos.max(axis=1))

    def lat_lon_rad(self) -> tuple[np.ndarray, np.ndarray]:
        """Latitude in [-pi/2, pi/2] and longitude in (-pi, pi] of each node, shapes `(N,)`."""
        x, y, z = self.positions.numpy().T
        return np.arcsin(np.clip(z, -1.0, 1.0)), np.arctan2(y, x)


class HealpixSphere(SphericalDomain):
    r"""HEALPix pixelisation of the unit sphere (Gorski et al. 2005), via healpy.

    Nodes are the `12 nside^2` pixel centres in RING (default) or NESTED order. Every pixel has the
    exact area :math:`4\pi / N`, which is the mass. The stiffness uses the cotangent weights of the
    spherical Delaunay triangulation of the pixel centres.

    Arguments:
        nside: HEALPix resolution, a power of two.
        nest: NESTED ordering if True, else RING.

    Example:
        >>> d = HealpixSphere(4)
        >>> d.num_nodes, round(d.total_area, 10) == round(4 * 3.141592653589793, 10)
        (192, True)
    """

    def __init__(self, nside: int, *, nest: bool = False):
        import healpy as hp

        if not isinstance(nside, (int, np.integer)) or nside < 1 or nside & (nside - 1):
            raise ValueError(f"nside must be a positive power of two, got {nside!r}")
        self.nside = int(nside)
        self.nest = bool(nest)
        npix = hp.nside2npix(self.nside)
        pos = np.stack(hp.pix2vec(self.nside, np.arange(npix), nest=self.nest), axis=1)
        edge_index, weights = cotangent_weights(pos, sphere_triangulation(pos))
        mass = np.full(npix, 4.0 * np.pi / npix)
        super().__init__(pos, mass, edge_index, weights, name=f"healpix{self.nside}")

    def extra_repr(self) -> str:
        """Resolution, pixel count and ordering, for `repr`."""
        return f"nside={self.nside}, npix={self.num_nodes}, nest={self.nest}"

    def coarsen(self) -> Coarsening:
        """The HEALPix grid of `nside // 2`; each coarse pixel is the union of its 4 children."""
        import healpy as hp

        if self.nside < 2:
            raise ValueError("cannot coarsen HEALPix below nside=1")
        coarse = HealpixSphere(self.nside // 2, nest=self.nest)
        pix = np.arange(self.num_nodes)
        nested = pix if self.nest else hp.ring2nest(self.nside, pix)
        parent = nested // 4
        if not self.nest:
            parent = hp.nest2ring(coarse.nside, parent)
        pool, unpool = partition_pooling(parent, self.mass.numpy(), coarse.num_nodes)
        return Coarsening(coarse, pool, unpool)


class IcosphereMesh(SphericalDomain):
    r"""A subdivided icosahedron projected onto the unit sphere (trimesh), `10 * 4^level + 2` nodes.

    Stiffness: cotangent weights of the (Delaunay) triangulation. Mass: the areas of the spherical
    Voronoi cells of the vertices (scipy), which sum to exactly :math:`4\pi`.

    Arguments:
        level: number of subdivisions of the icosahedron (0 gives 12 vertices).

    Example:
        >>> IcosphereMesh(2).num_nodes
        162
    """

    def __init__(self, level: int):
        import trimesh

        if not isinstance(level, (int, np.integer)) or not 0 <= level <= 8:
            raise ValueError(f"level must be an integer in 0..8, got {level!r}")
        self.level = int(level)
        ico = trimesh.creation.icosphere(subdivisions=self.level, radius=1.0)
        pos = np.asarray(ico.vertices, dtype=np.float64)
        pos /= np.linalg.norm(pos, axis=1, keepdims=True)
        self.faces = np.asarray(ico.faces, dtype=np.int64)
        edge_index, weights = cotangent_weights(pos, self.faces)
        mass = SphericalVoronoi(pos, radius=1.0).calculate_areas()
        super().__init__(pos, mass, edge_index, weights, name=f"icosphere{self.level}")

    def extra_repr(self) -> str:
        """Subdivision level and node count, for `repr`."""
        return f"level={self.level}, num_nodes={self.num_nodes}"

    def coarsen(self) -> Coarsening:
        """The icosphere one level down; nodes pool to their nearest coarse vertex."""
        if self.level < 1:
            raise ValueError("cannot coarsen an icosphere below level 0")
        return nearest_vertex_coarsening(self, IcosphereMesh(self.level - 1))
