"""Triangle meshes: cotangent Laplacian, lumped or Voronoi mass, validation, loading, decimation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from manifold_aps.geometry.domain import Coarsening, Domain, cluster_coarsening, partition_pooling

__all__ = ["MASS_RULES", "TriangleMesh", "cotangent_weights", "triangle_mass"]


def _corner_cotangents(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Cotangent of the angle at each corner, shape `(F, 3)` (corner c is at faces[:, c])."""
    cots = np.empty(faces.shape, dtype=np.float64)
    for c in range(3):
        p = vertices[faces[:, c]]
        a = vertices[faces[:, (c + 1) % 3]] - p
        b = vertices[faces[:, (c + 2) % 3]] - p
        cross = np.linalg.norm(np.cross(a, b), axis=1)
        cots[:, c] = np.einsum("ij,ij->i", a, b) / cross
    return cots


def cotangent_weights(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Cotangent conductances :math:`w_{jk} = \tfrac12(\cot\alpha + \cot\beta)` of a triangle mesh.

    Arguments:
        vertices: shape `(V, 3)`.
        faces: shape `(F, 3)`, vertex indices.

    Returns:
        edge_index `(2, E)` with each undirected edge once, and weights `(E,)`.
    """
    cots = _corner_cotangents(vertices, faces)
    n = vertices.shape[0]
    rows, cols, vals = [], [], []
    for c in range(3):
        j, k = faces[:, (c + 1) % 3], faces[:, (c + 2) % 3]
        rows.append(np.minimum(j, k))
        cols.append(np.maximum(j, k))
        vals.append(0.5 * cots[:, c])
    w = sp.coo_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()  # duplicates (the two faces of an edge) are summed
    coo = w.tocoo()
    return np.vstack([coo.row, coo.col]), coo.data


def _face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a = vertices[faces[:, 1]] - vertices[faces[:, 0]]
    b = vertices[faces[:, 2]] - vertices[faces[:, 0]]
    return 0.5 * np.linalg.norm(np.cross(a, b), axis=1)


def _barycentric_mass(vertices, faces):
    area = _face_areas(vertices, faces)
    return np.bincount(faces.ravel(), weights=np.repeat(area / 3.0, 3), minlength=len(vertices))


def _voronoi_mass(vertices, faces):
    """Mixed Voronoi areas (Meyer, Desbrun, Schroeder & Barr 2003), which sum to the mesh area."""
    area = _face_areas(vertices, faces)
    cots = _corner_cotangents(vertices, faces)
    corner_area = np.empty(faces.shape)
    obtuse = cots < 0  # cot < 0 <=> angle > 90 degrees
    for c in range(3):
        i, j, k = faces[:, c], faces[:, (c + 1) % 3], faces[:, (c + 2) % 3]
        e_ij = np.sum((vertices[j] - vertices[i]) ** 2, axis=1)
        e_ik = np.sum((vertices[k] - vertices[i]) ** 2, axis=1)
        # Voronoi region of i in a non-obtuse triangle: (|ij|^2 cot k + |ik|^2 cot j) / 8
        voronoi = (e_ij * cots[:, (c + 2) % 3] + e_ik * cots[:, (c + 1) % 3]) / 8.0
        corner_area[:, c] = np.where(
            obtuse.any(axis=1), np.where(obtuse[:, c], area / 2.0, area / 4.0), voronoi
        )
    return np.bincount(faces.ravel(), weights=corner_area.ravel(), minlength=len(vertices))


def triangle_mass(vertices: np.ndarray, faces: np.ndarray, rule: str) -> np.ndarray:
    """Lumped vertex areas, shape `(V,)`, by a rule of `MASS_RULES`."""
    if rule not in MASS_RULES:
        raise ValueError(f"mass must be one of {sorted(MASS_RULES)}, got {rule!r}")
    return MASS_RULES[rule](vertices, faces)


MASS_RULES = {"barycentric": _barycentric_mass, "voronoi": _voronoi_mass}


def validate_triangles(vertices: np.ndarray, faces: np.ndarray, source: str) -> None:
    """Raise `ValueError` for input that has no well-defined cotangent Laplacian.

    Checks: shapes and index range, finite coordinates, degenerate faces (repeated vertices or
    zero area), unreferenced vertices, non-manifold edges (more than two faces), non-manifold
    vertices (faces around a vertex that do not form one fan) and disconnected pieces.
    """
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"{source}: vertices must have shape (V, 3), got {vertices.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"{source}: faces must have shape (F, 3) with F > 0, got {faces.shape}")
    if not np.all(np.isfinite(vertices)):
        raise ValueError(f"{source}: vertex coordinates contain NaN or infinity")
    nv = len(vertices)
    if faces.min() < 0 or faces.max() >= nv:
        raise ValueError(f"{source}: faces refer to vertices outside 0..{nv - 1}")
    repeated = (
        (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    )
    area = _face_areas(vertices, faces)
    scale = np.ptp(vertices, axis=0).max() ** 2
    degenerate = np.flatnonzero(repeated | (area <= 1e-14 * scale))
    if degenerate.size:
        raise ValueError(
            f"{source}: {degenerate.size} degenerate face(s) (repeated vertices or zero area), "
            f"e.g. face {degenerate[0]} = {faces[degenerate[0]].tolist()}"
        )
    unused = np.setdiff1d(np.arange(nv), faces.ravel())
    if unused.size:
        raise ValueError(
            f"{source}: {unused.size} vertex/vertices belong to no face, e.g. vertex {unused[0]}"
        )
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    if np.any(counts > 2):
        bad = uniq[np.argmax(counts)]
        raise ValueError(
            f"{source}: non-manifold mesh, {int(np.sum(counts > 2))} edge(s) are shared by more "
            f"than two faces, e.g. edge {bad.tolist()} by {counts.max()} faces"
        )
    _check_vertex_fans(faces, nv, source)
    n_comp, _ = csgraph.connected_components(
        sp.coo_matrix((np.ones(len(uniq)), (uniq[:, 0], uniq[:, 1])), shape=(nv, nv)),
        directed=False,
    )
    if n_comp > 1:
        raise ValueError(
            f"{source}: mesh is disconnected ({n_comp} pieces); split it or keep the largest "
            "piece (trimesh: mesh.split(only_watertight=False))"
        )


def _check_vertex_fans(faces: np.ndarray, nv: int, source: str) -> None:
    """The faces around each vertex must form one fan, connected through shared edges."""
    f = len(faces)
    # Corner 3*face + c is the vertex faces[face, c]. Across an edge (a, b) shared by faces f1 and
    # f2, the corners at a are linked, and so are the corners at b.
    face_of_edge = np.repeat(np.arange(f), 3)
    a = faces.ravel()
    b = faces[:, [1, 2, 0]].ravel()
    key = np.minimum(a, b) * nv + np.maximum(a, b)
    order = np.argsort(key, kind="stable")
    same = key[order][1:] == key[order][:-1]
    f1, f2 = face_of_edge[order][:-1][same], face_of_edge[order][1:][same]
    ends = np.concatenate([a[order][:-1][same], b[order][:-1][same]])
    f1, f2 = np.concatenate([f1, f1]), np.concatenate([f2, f2])
    c1 = 3 * f1 + np.argmax(faces[f1] == ends[:, None], axis=1)
    c2 = 3 * f2 + np.argmax(faces[f2] == ends[:, None], axis=1)
    graph = sp.coo_matrix((np.ones(len(c1)), (c1, c2)), shape=(3 * f, 3 * f))
    _, labels = csgraph.connected_components(graph, directed=False)
    fans = np.unique(np.stack([faces.ravel(), labels], axis=1), axis=0)
    fans_per_vertex = np.bincount(fans[:, 0], minlength=nv)
    bad = np.flatnonzero(fans_per_vertex > 1)
    if bad.size:
        raise ValueError(
            f"{source}: non-manifold mesh, {bad.size} vertex/vertices join separate fans of "
            f"faces (a 'bow-tie'), e.g. vertex {bad[0]}"
        )


class TriangleMesh(Domain):
    r"""A closed or bounded 2-manifold triangle mesh with the cotangent Laplace-Beltrami operator.

    :math:`L = M^{-1} S` with :math:`S_{jk} = -\tfrac12(\cot\alpha_{jk} + \cot\beta_{jk})` and
    `M` the lumped vertex areas ("barycentric": a third of each incident triangle; "voronoi":
    the mixed Voronoi cells of Meyer et al. 2003). Both sum to the mesh area.

    Arguments:
        vertices: shape `(V, 3)`.
        faces: shape `(F, 3)`, vertex indices.
        mass: "barycentric" (default) or "voronoi".
        name: where the mesh came from (used in messages and fingerprints).

    Raises:
        ValueError: degenerate, non-manifold or disconnected input (see `validate_triangles`).

    Example:
        >>> import trimesh
        >>> box = trimesh.creation.box()
        >>> m = TriangleMesh(box.vertices, box.faces)
        >>> round(m.total_area, 6)
        6.0
    """

    def __init__(self, vertices, faces, *, mass: str = "barycentric", name: str = "mesh"):
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces, dtype=np.int64)
        validate_triangles(vertices, faces, name)
        self.vertices = vertices
        self.faces = faces
        self.mass_rule = mass
        edge_index, weights = cotangent_weights(vertices, faces)
        super().__init__(
            vertices, triangle_mass(vertices, faces, mass), edge_index, weights, name=name
        )

    def extra_repr(self) -> str:
        return f"V={self.num_nodes}, F={len(self.faces)}, mass={self.mass_rule!r}, name={self.name!r}"

    def _fingerprint_parts(self) -> list[bytes]:
        return super()._fingerprint_parts() + [self.mass_rule.encode()]

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, mass: str = "barycentric") -> TriangleMesh:
        """Load an OFF, OBJ, PLY or STL file with trimesh, merging vertices split at UV seams."""
        import trimesh

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mesh file not found: {path}")
        mesh = trimesh.load(path, force="mesh", process=True)
        if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
            raise ValueError(f"{path}: no triangles found")
        mesh.merge_vertices(merge_tex=True, merge_norm=True)
        return cls(mesh.vertices, mesh.faces, mass=mass, name=path.name)

    def to_trimesh(self):
        """The mesh as a `trimesh.Trimesh` (no processing)."""
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)

    def coarsen(self) -> Coarsening:
        """Quadric-error decimation to about a quarter of the faces (fast-simplification via trimesh).

        Decimation can pinch a mesh (an edge shared by four faces); then nearby face counts are
        tried (25 % +- up to 5 %) until the result is a valid manifold, and if none is, the generic
        `cluster_coarsening` of the graph is used instead. Each fine vertex belongs to
        its nearest coarse vertex (Euclidean); a coarse vertex that no fine vertex is nearest to
        pools its own nearest fine vertex.
        """
        errors = []
        for frac in (0.25, 0.24, 0.26, 0.23, 0.27, 0.22, 0.28, 0.21, 0.29, 0.2, 0.3):
            coarse_mesh = self.to_trimesh().simplify_quadric_decimation(
                face_count=max(int(round(len(self.faces) * frac)), 4)
            )
            coarse_mesh.merge_vertices()
            coarse_mesh.remove_unreferenced_vertices()
            try:
                coarse = TriangleMesh(
                    coarse_mesh.vertices, coarse_mesh.faces, mass=self.mass_rule, name=f"{self.name}/coarse"
                )
            except ValueError as err:
                errors.append(str(err))
                continue
            return nearest_vertex_coarsening(self, coarse)
        return cluster_coarsening(self, max(self.num_nodes // 4, 1))


def nearest_vertex_coarsening(fine: Domain, coarse: Domain) -> Coarsening:
    """Coarsening by nearest-vertex clusters between two discretisations of one surface.

    Each fine node belongs to its nearest coarse node (Euclidean). A coarse node that no fine node
    is nearest to pools its own nearest fine node, so that no pooled value is undefined.
    """
    fine_pos, coarse_pos = fine.positions.numpy(), coarse.positions.numpy()
    assignment = cKDTree(coarse_pos).query(fine_pos)[1]
    pool, unpool = partition_pooling(
        assignment, fine.mass.numpy(), coarse.num_nodes, allow_empty=True
    )
    empty = np.flatnonzero(np.bincount(assignment, minlength=coarse.num_nodes) == 0)
    if empty.size:
        nearest_fine = cKDTree(fine_pos).query(coarse_pos[empty])[1]
        pool = pool + sp.csr_matrix(
            (np.ones(empty.size), (empty, nearest_fine)), shape=pool.shape
        )
    return Coarsening(coarse, pool.tocsr(), unpool)
