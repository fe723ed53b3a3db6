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


def _first_indices(indices: np.ndarray, limit: int = 5) -> str:
    """The first `limit` of `indices` as text, with "..." when there are more."""
    head = ", ".join(str(int(i)) for i in indices[:limit])
    return f"[{head}{', ...' if len(indices) > limit else ''}]"


def _check_finite_vertices(vertices: np.ndarray, source: str) -> None:
    """Raise `ValueError` naming the vertices `(V, 3)` that have a NaN or infinite coordinate."""
    bad = np.flatnonzero(~np.all(np.isfinite(vertices), axis=1))
    if bad.size:
        raise ValueError(
            f"{source}: {bad.size} vertex/vertices have NaN or infinite coordinates, first indices "
            f"{_first_indices(bad)} (0-based, in file order), "
            f"e.g. vertex {bad[0]} = {vertices[bad[0]].tolist()}"
        )


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
    _check_finite_vertices(vertices, source)
    nv = len(vertices)
    outside = np.flatnonzero(np.any((faces < 0) | (faces >= nv), axis=1))
    if outside.size:
        raise ValueError(
            f"{source}: {outside.size} face(s) refer to vertices outside 0..{nv - 1}, "
            f"e.g. face {outside[0]} = {faces[outside[0]].tolist()}"
        )
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
            f"{source}: {unused.size} vertex/vertices belong to no face, first indices "
            f"{_first_indices(unused)} (0-based, in file order); "
            "remove them (vertex indices must match the file)"
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


# ------------------------------------------------------------------------------- mesh files
# Each reader returns the file's own arrays, vertices `(V, 3)` float64 and faces `(F, 3)` int64
# (0-based), with nothing merged, dropped or reordered: vertex `i` is the file's `i`-th vertex.
# What does not parse exactly is refused, naming the line that broke.


def _text_lines(path: Path) -> list[tuple[int, list[str]]]:
    """The non-empty lines of a text file as `(line number, words)`, `#` comments removed."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: not a text mesh file ({err.reason} at byte {err.start})"
        ) from None
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if words:
            lines.append((number, words))
    return lines


def _parse_numbers(path: Path, number: int, words: list[str], kind: type, expected: str) -> list:
    """`words` converted by `kind` (int or float), or a `ValueError` naming the line."""
    try:
        return [kind(w) for w in words]
    except ValueError:
        raise ValueError(
            f"{path}, line {number}: expected {expected}, got {' '.join(words)[:80]!r}"
        ) from None


def _read_off(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an OFF file (or COFF: colours ignored).

    Its lines: `OFF`, the counts `V F [E]`, V vertex lines `x y z`, F face lines
    `3 i j k [colour]`. The counts must match the lines that follow exactly.
    """
    lines = _text_lines(path)
    if not lines:
        raise ValueError(f"{path} holds no vertices/faces (the file is empty)")
    number, words = lines[0]
    if words[0] not in ("OFF", "COFF"):
        raise ValueError(
            f"{path}, line {number}: expected the header 'OFF' or 'COFF', got {words[0][:40]!r}"
        )
    body = lines[1:]
    if len(words) > 1:  # "OFF 8 12 18" on one line
        counts_line, counts = number, words[1:]
    elif body:
        counts_line, counts = body.pop(0)
    else:
        raise ValueError(f"{path} holds no vertices/faces (only the header line)")
    if len(counts) not in (2, 3):
        raise ValueError(
            f"{path}, line {counts_line}: expected the counts 'vertices faces edges', "
            f"got {' '.join(counts)[:80]!r}"
        )
    nv, nf = _parse_numbers(path, counts_line, counts, int, "the counts 'vertices faces edges'")[:2]
    if nv <= 0 or nf <= 0:
        raise ValueError(
            f"{path} holds no vertices/faces "
            f"(line {counts_line} declares {nv} vertices and {nf} faces)"
        )
    header = f"the header (line {counts_line}) declares {nv} vertices and {nf} faces"
    if len(body) != nv + nf:
        extra = f" (the first extra one is line {body[nv + nf][0]})" if len(body) > nv + nf else ""
        raise ValueError(
            f"{path}: {header}, "
            f"but {len(body)} vertex/face lines follow instead of {nv + nf}{extra}"
        )
    vertex_sizes = (3,) if words[0] == "OFF" else (6, 7)  # COFF: x y z r g b [a]
    vertices = np.empty((nv, 3))
    for i, (number, words_i) in enumerate(body[:nv]):
        if len(words_i) not in vertex_sizes:
            raise ValueError(
                f"{path}, line {number}: vertex {i} has {len(words_i)} values, expected "
                f"{' or '.join(map(str, vertex_sizes))}; {header}"
            )
        vertices[i] = _parse_numbers(path, number, words_i[:3], float, f"vertex {i} 'x y z'")
    faces = np.empty((nf, 3), dtype=np.int64)
    for f, (number, words_f) in enumerate(body[nv:]):
        size = _parse_numbers(path, number, words_f[:1], int, f"face {f} '3 i j k'; {header}")[0]
        if size != 3:
            raise ValueError(
                f"{path}, line {number}: face {f} has {size} vertices; only triangles are supported"
            )
        if len(words_f) not in (4, 7, 8):  # 3 indices, then optionally an RGB or RGBA colour
            raise ValueError(
                f"{path}, line {number}: face {f} has {len(words_f)} values, "
                "expected '3 i j k [r g b [a]]'"
            )
        faces[f] = _parse_numbers(path, number, words_f[1:4], int, f"face {f} '3 i j k'")
        if faces[f].min() < 0 or faces[f].max() >= nv:
            raise ValueError(
                f"{path}, line {number}: face {f} = {faces[f].tolist()} "
                f"refers to a vertex outside 0..{nv - 1}"
            )
    return vertices, faces


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the `v x y z [w | r g b]` and `f i j k` lines of an OBJ file.

    Face indices may be `i`, `i/t`, `i//n`, `i/t/n` (1-based, negative counts back); texture
    coordinates, normals, groups and materials are ignored.
    """
    vertices, faces, face_lines = [], [], []
    for number, words in _text_lines(path):
        if words[0] == "v":
            if len(words) not in (4, 5, 7):
                raise ValueError(
                    f"{path}, line {number}: vertex {len(vertices)} has {len(words) - 1} values, "
                    "expected 'v x y z [w]' or 'v x y z r g b'"
                )
            vertices.append(
                _parse_numbers(path, number, words[1:4], float, f"vertex {len(vertices)} 'v x y z'")
            )
        elif words[0] == "f":
            if len(words) != 4:
                raise ValueError(
                    f"{path}, line {number}: face {len(faces)} has {len(words) - 1} vertices; "
                    "only triangles are supported"
                )
            refs = _parse_numbers(
                path,
                number,
                [w.split("/", 1)[0] for w in words[1:]],
                int,
                f"face {len(faces)} 'f i j k'",
            )
            faces.append([r - 1 if r > 0 else len(vertices) + r if r < 0 else -1 for r in refs])
            face_lines.append(number)
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    outside = np.flatnonzero(np.any((faces < 0) | (faces >= len(vertices)), axis=1))
    if outside.size:
        f = outside[0]
        raise ValueError(
            f"{path}, line {face_lines[f]}: face {f} refers to a vertex outside 1..{len(vertices)} "
            f"({outside.size} such face(s))"
        )
    return vertices, faces


_PLY_TYPE_BYTES = {
    "char": 1,
    "uchar": 1,
    "int8": 1,
    "uint8": 1,
    "short": 2,
    "ushort": 2,
    "int16": 2,
    "uint16": 2,
    "int": 4,
    "uint": 4,
    "int32": 4,
    "uint32": 4,
    "float": 4,
    "float32": 4,
    "double": 8,
    "float64": 8,
}


def _ply_header(path: Path) -> tuple[str | None, list[tuple[str, int, list[list[str]]]], int]:
    """The format, the elements `(name, count, properties)` and the byte size of a PLY header."""
    with path.open("rb") as fh:
        if fh.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file (its first line is not 'ply')")
        fmt, elements, number = None, [], 1
        while raw := fh.readline():
            number += 1
            line = raw.decode("ascii", errors="replace").strip()
            words = line.split()
            if not words or words[0] in ("comment", "obj_info"):
                continue
            if words[0] == "end_header":
                return fmt, elements, fh.tell()
            if words[0] == "format" and len(words) == 3:
                fmt = words[1]
            elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
                elements.append((words[1], int(words[2]), []))
            elif words[0] == "property" and elements and len(words) in (3, 5):
                elements[-1][2].append(words[1:])
            else:
                raise ValueError(f"{path}, line {number}: malformed PLY header line {line[:80]!r}")
    raise ValueError(f"{path}: the PLY header has no 'end_header' line")


def _ply_triangle_body_bytes(elements) -> int | None:
    """Bytes of a binary PLY body whose faces are all triangles (None: other lists' sizes vary)."""
    total = 0
    for name, count, properties in elements:
        stride = 0
        for prop in properties:
            if prop[0] != "list":
                stride += _PLY_TYPE_BYTES.get(prop[0], np.nan)
            elif name == "face" and prop[3] in ("vertex_indices", "vertex_index"):
                stride += _PLY_TYPE_BYTES.get(prop[1], np.nan) + 3 * _PLY_TYPE_BYTES.get(
                    prop[2], np.nan
                )
            else:
                return None
        total += count * stride
    return None if np.isnan(total) else int(total)


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a PLY file (ASCII or binary) by trimesh without processing.

    Before reading, it checks that the header's element counts match the data exactly and that
    every face is a triangle.
    """
    import trimesh

    fmt, elements, header_bytes = _ply_header(path)
    counts = {name: count for name, count, _ in elements}
    nv, nf = counts.get("vertex", 0), counts.get("face", 0)
    if nv == 0 or nf == 0:
        raise ValueError(
            f"{path} holds no vertices/faces (its header declares {nv} vertices and {nf} faces)"
        )
    header = f"the PLY header declares {nv} vertices and {nf} faces"
    if fmt == "ascii":
        body = path.read_bytes()[header_bytes:].decode("ascii", errors="replace")
        rows = [line.split() for line in body.splitlines() if line.strip()]
        if len(rows) != sum(counts.values()):
            raise ValueError(
                f"{path}: {header} ({sum(counts.values())} data lines in all), "
                f"but the file has {len(rows)}"
            )
        start = 0
        for name, count, properties in elements:
            if name == "face" and properties[:1] and properties[0][0] == "list":
                sizes = [row[0] for row in rows[start : start + count]]
                bad = next((f for f, size in enumerate(sizes) if size != "3"), None)
                if bad is not None:
                    raise ValueError(
                        f"{path}: face {bad} has {sizes[bad]} vertices; "
                        "only triangles are supported"
                    )
            start += count
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        expected = _ply_triangle_body_bytes(elements)
        found = path.stat().st_size - header_bytes
        if expected is not None and found != expected:
            raise ValueError(
                f"{path}: {header}, which as triangles take {expected} bytes, "
                f"but the data has {found} (wrong counts or non-triangle faces)"
            )
    else:
        raise ValueError(
            f"{path}: PLY format must be ascii, binary_little_endian or binary_big_endian, "
            f"got {fmt!r}"
        )
    try:
        mesh = trimesh.load(path, force="mesh", process=False, maintain_order=True)
    except (ValueError, LookupError, TypeError) as err:  # what trimesh raises on malformed data
        raise ValueError(
            f"{path}: cannot read the PLY data ({type(err).__name__}: {err})"
        ) from None
    if len(mesh.vertices) != nv or len(mesh.faces) != nf:
        raise ValueError(
            f"{path}: {header}, "
            f"but {len(mesh.vertices)} vertices and {len(mesh.faces)} triangles were "
            "read (only triangle faces are supported)"
        )
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64)


def _read_stl(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an STL file (trimesh, no processing).

    STL stores each triangle's corners separately, so coincident corners are merged, after
    checking that every coordinate is finite.
    """
    import trimesh

    try:
        mesh = trimesh.load(path, force="mesh", process=False)
    except (ValueError, LookupError, TypeError) as err:  # what trimesh raises on malformed data
        raise ValueError(
            f"{path}: cannot read the STL data ({type(err).__name__}: {err})"
        ) from None
    if len(mesh.vertices) and len(mesh.faces):
        _check_finite_vertices(np.asarray(mesh.vertices), str(path))
        mesh.merge_vertices()
    return np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3), np.asarray(
        mesh.faces, dtype=np.int64
    ).reshape(-1, 3)


_MESH_READERS = {".off": _read_off, ".obj": _read_obj, ".ply": _read_ply, ".stl": _read_stl}


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
        """Vertex and face counts, mass rule and name, for `repr`."""
        return (
            f"V={self.num_nodes}, F={len(self.faces)}, mass={self.mass_rule!r}, name={self.name!r}"
        )

    def _fingerprint_parts(self) -> list[bytes]:
        return super()._fingerprint_parts() + [self.mass_rule.encode()]

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, mass: str = "barycentric") -> TriangleMesh:
        """Load an OFF, OBJ, PLY or STL file exactly as written.

        Vertex `i` of the mesh is the file's `i`-th vertex: nothing is merged, dropped or
        reordered (except in STL, which stores each triangle's corners separately: coincident
        corners are merged). OBJ texture coordinates and normals are ignored, so an OBJ split at
        UV seams keeps its `v` vertices.

        Arguments:
            path: the file; its extension (.off, .obj, .ply, .stl) chooses the reader.
            mass: as for `TriangleMesh`.

        Raises:
            FileNotFoundError: no such file.
            ValueError: another extension; a file that does not parse exactly (header counts that
                differ from the data that follows, non-triangle faces, faces naming missing
                vertices), naming the line; an empty file; a mesh `validate_triangles` refuses
                (NaN coordinates, vertices in no face, ...).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"mesh file not found: {path}")
        reader = _MESH_READERS.get(path.suffix.lower())
        if reader is None:
            raise ValueError(
                f"{path}: a mesh file must end in one of {sorted(_MESH_READERS)}, "
                f"got {path.suffix!r}"
            )
        if path.stat().st_size == 0:
            raise ValueError(f"{path} holds no vertices/faces (the file is empty)")
        vertices, faces = reader(path)
        if len(vertices) == 0 or len(faces) == 0:
            raise ValueError(
                f"{path} holds no vertices/faces ({len(vertices)} vertices, {len(faces)} triangles)"
            )
        return cls(vertices, faces, mass=mass, name=path.name)

    def to_trimesh(self):
        """The mesh as a `trimesh.Trimesh` (no processing)."""
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)

    def coarsen(self) -> Coarsening:
        """Quadric-error decimation to about a quarter of the faces (fast-simplification, trimesh).

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
                    coarse_mesh.vertices,
                    coarse_mesh.faces,
                    mass=self.mass_rule,
                    name=f"{self.name}/coarse",
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
        pool = pool + sp.csr_matrix((np.ones(empty.size), (empty, nearest_fine)), shape=pool.shape)
    return Coarsening(coarse, pool.tocsr(), unpool)
