"""Mesh files and domain sizes (issue 14): a mesh loads exactly as its file writes it.

No vertex is silently dropped, merged or misparsed, and empty files and domains too small for a
network's hierarchy are refused with one-line errors, also from the command line (exit code 2).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from manifold_aps.flows import FlowConfig
from manifold_aps.flows.flow import ConditionalFlow
from manifold_aps.geometry import Domain, TriangleMesh
from manifold_aps.nn import ScoreNet, ScoreNetConfig

# A regular octahedron: 6 vertices, 8 outward triangles.
OCTAHEDRON_VERTICES = np.array(
    [[0, 0, 1], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=float
)
OCTAHEDRON_FACES = np.array(
    [[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1], [5, 2, 1], [5, 3, 2], [5, 4, 3], [5, 1, 4]]
)


def _write_off(path, vertices, faces, counts=None):
    nv, nf = counts or (len(vertices), len(faces))
    lines = ["OFF", f"{nv} {nf} 0"]
    lines += [" ".join(f"{x:.17g}" for x in v) for v in vertices]
    lines += [f"{len(f)} " + " ".join(map(str, f)) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_obj(path, vertices, faces):
    """With texture coordinates per corner (as at UV seams) and 1-based `i/t` references."""
    lines = [f"v {v[0]:.17g} {v[1]:.17g} {v[2]:.17g}" for v in vertices]
    lines += [f"vt {u:.3f} 0.5" for u in np.linspace(0, 1, 3)]
    lines += ["f " + " ".join(f"{i + 1}/{c + 1}" for c, i in enumerate(f)) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_ply(path, vertices, faces, counts=None):
    nv, nf = counts or (len(vertices), len(faces))
    header = [
        "ply",
        "format ascii 1.0",
        f"element vertex {nv}",
        "property float x",
        "property float y",
        "property float z",
        f"element face {nf}",
        "property list uchar int vertex_indices",
        "end_header",
    ]
    lines = header + [" ".join(f"{x:.9g}" for x in v) for v in vertices]
    lines += [f"{len(f)} " + " ".join(map(str, f)) for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


WRITERS = {"off": _write_off, "obj": _write_obj, "ply": _write_ply}


def _refused(path, match):
    """`TriangleMesh.from_file(path)` raises a one-line `ValueError` matching `match`."""
    with pytest.raises(ValueError, match=match) as err:
        TriangleMesh.from_file(path)
    assert "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize("ext", list(WRITERS))
def test_nan_vertex_is_refused_not_removed(tmp_path, ext):
    """A NaN vertex is refused, not removed.

    Before: processing dropped the vertex and its faces, and the mesh with a hole was accepted.
    """
    vertices = OCTAHEDRON_VERTICES.copy()
    vertices[3, 1] = np.nan
    path = WRITERS[ext](tmp_path / f"nan.{ext}", vertices, OCTAHEDRON_FACES)
    _refused(path, r"1 vertex/vertices have NaN or infinite coordinates, first indices \[3\]")


@pytest.mark.parametrize("ext", list(WRITERS))
def test_unused_vertex_is_refused_with_its_file_index(tmp_path, ext):
    """An unused vertex is refused with its file index.

    Before: the stray vertex was removed, so vertex i of the mesh was not vertex i of the file.
    """
    clean = TriangleMesh.from_file(
        WRITERS[ext](tmp_path / f"clean.{ext}", OCTAHEDRON_VERTICES, OCTAHEDRON_FACES)
    )
    assert np.array_equal(clean.faces, OCTAHEDRON_FACES)
    assert np.array_equal(clean.vertices, OCTAHEDRON_VERTICES)
    vertices = np.insert(
        OCTAHEDRON_VERTICES, 2, [[3.0, 3.0, 3.0]], axis=0
    )  # new vertex 2, in no face
    faces = np.where(OCTAHEDRON_FACES >= 2, OCTAHEDRON_FACES + 1, OCTAHEDRON_FACES)
    path = WRITERS[ext](tmp_path / f"stray.{ext}", vertices, faces)
    _refused(path, r"1 vertex/vertices belong to no face, first indices \[2\]")


@pytest.mark.parametrize(
    "counts",
    [(7, 8), (5, 8), (6, 9), (6, 7)],
    ids=["more-vertices", "fewer-vertices", "more-faces", "fewer-faces"],
)
def test_off_header_counts_must_match_the_data(tmp_path, counts):
    """An OFF file whose header counts disagree with its data is refused.

    Before: trimesh read the header's counts of lines, a wrong mesh (fewer faces: a hole) or a
    misaligned one.
    """
    path = _write_off(tmp_path / "counts.off", OCTAHEDRON_VERTICES, OCTAHEDRON_FACES, counts=counts)
    message = _refused(path, rf"line 2\) declares {counts[0]} vertices and {counts[1]} faces")
    assert "14 vertex/face lines follow instead of" in message


@pytest.mark.parametrize(
    "counts", [(6, 7), (6, 9), (5, 8)], ids=["fewer-faces", "more-faces", "fewer-vertices"]
)
def test_ply_header_counts_must_match_the_data(tmp_path, counts):
    path = _write_ply(tmp_path / "counts.ply", OCTAHEDRON_VERTICES, OCTAHEDRON_FACES, counts=counts)
    _refused(
        path,
        rf"PLY header declares {counts[0]} vertices and {counts[1]} faces "
        rf"\({sum(counts)} data lines",
    )


def test_binary_ply_with_wrong_face_count_is_refused(tmp_path):
    mesh = trimesh.Trimesh(OCTAHEDRON_VERTICES, OCTAHEDRON_FACES, process=False)
    data = trimesh.exchange.ply.export_ply(mesh, encoding="binary")
    path = tmp_path / "binary.ply"
    path.write_bytes(data.replace(b"element face 8\n", b"element face 7\n"))
    _refused(
        path,
        r"declares 6 vertices and 7 faces, which as triangles take \d+ bytes, but the data has",
    )


@pytest.mark.parametrize("ext", list(WRITERS))
def test_non_triangle_faces_are_refused(tmp_path, ext):
    """Before: trimesh split the quad into two triangles."""
    vertices = np.vstack([OCTAHEDRON_VERTICES, [[2, 0, 0], [2, 1, 0]]])
    faces = [*OCTAHEDRON_FACES.tolist(), [1, 6, 7, 2]]
    path = WRITERS[ext](tmp_path / f"quad.{ext}", vertices, faces)
    _refused(path, "face 8 has 4 vertices; only triangles are supported")


@pytest.mark.parametrize("ext", ["off", "obj"])
def test_face_naming_a_missing_vertex_is_refused_with_its_line(tmp_path, ext):
    """Before: an IndexError from trimesh for OBJ (a traceback in the CLI)."""
    faces = OCTAHEDRON_FACES.copy()
    faces[7, 2] = 6  # one past the last vertex
    path = WRITERS[ext](tmp_path / f"missing.{ext}", OCTAHEDRON_VERTICES, faces)
    line = {"off": 16, "obj": 17}[ext]  # OFF: 2 header + 6 vertex lines; OBJ: 6 v + 3 vt lines
    _refused(path, rf"line {line}: face 7 .*refers to a vertex outside")


@pytest.mark.parametrize(
    "name, text",
    [
        ("empty.off", ""),
        ("empty.obj", ""),
        ("empty.ply", ""),
        ("comments.obj", "# no data\n"),
        ("header.off", "OFF\n"),
    ],
)
def test_empty_mesh_file_holds_no_vertices(tmp_path, name, text):
    """Before: "not enough values to unpack" (OFF), "no triangles found" or "Not a ply file!"."""
    path = tmp_path / name
    path.write_text(text)
    assert _refused(path, "holds no vertices/faces").startswith(str(path))


def _box() -> TriangleMesh:
    box = trimesh.creation.box()
    return TriangleMesh(box.vertices, box.faces, name="box")


def _tetrahedron() -> TriangleMesh:
    return TriangleMesh(
        OCTAHEDRON_VERTICES[[0, 1, 2, 5]],
        [[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]],
        name="tetra",
    )


@pytest.mark.parametrize("make", [_tetrahedron, _box], ids=["tetrahedron", "box"])
def test_score_net_refuses_a_domain_smaller_than_its_positional_encoding(make):
    """Before: built, then "mat1 and mat2 shapes cannot be multiplied" at the first forward pass."""
    mesh = make()
    config = ScoreNetConfig(channels=(8, 16, 32), num_modes=8, num_positional=8)
    with pytest.raises(
        ValueError,
        match=rf"needs a domain of at least 9 nodes.* has {mesh.num_nodes}; .*"
        rf"num_positional <= {mesh.num_nodes - 1}",
    ):
        ScoreNet(mesh, 1, config)
    fits = ScoreNet(
        mesh,
        1,
        ScoreNetConfig(channels=(8, 16, 32), num_modes=8, num_positional=mesh.num_nodes - 1),
    )
    assert fits(torch.zeros(2, mesh.num_nodes, 1), torch.rand(2)).shape == (2, mesh.num_nodes, 1)


def test_networks_refuse_a_hierarchy_level_with_a_lone_node():
    """A generic 12-node domain coarsens to 3 nodes, then 1. Before: "has isolated nodes"."""
    ico = trimesh.creation.icosphere(0)
    mesh = TriangleMesh(ico.vertices, ico.faces)
    generic = Domain(
        ico.vertices,
        mesh.mass.numpy(),
        mesh.edge_index.numpy(),
        mesh.edge_weight.numpy(),
        name="ico",
    )
    match = (
        r"with 3 levels needs at least 2 nodes on every level, .* has \[12, 3, 1\] nodes; "
        r"use at most 2 levels"
    )
    with pytest.raises(ValueError, match=match):
        ScoreNet(generic, 1, ScoreNetConfig(channels=(8, 8, 8), num_modes=8, num_positional=0))
    with pytest.raises(ValueError, match=match):
        ConditionalFlow(generic, 1, 2, 3, FlowConfig(couplings=3, width=8, num_modes=8, levels=3))


def test_spectral_flow_runs_on_a_domain_with_fewer_nodes_than_modes():
    """Before: "mat1 and mat2 shapes cannot be multiplied" (16 modes asked, 8 nodes)."""
    box = _box()
    flow = ConditionalFlow(
        box, 1, 2, 3, FlowConfig(couplings=2, width=8, num_modes=16, coupling="spectral")
    )
    cond = flow.condition(torch.randn(2, box.num_nodes, 2), torch.randn(2, 3))
    x, log_q = flow.sample_and_log_prob(cond, 3, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 2, box.num_nodes, 1) and torch.isfinite(log_q).all()


def _bad_meshes():
    """Writers of the bad files the CLI cases put in place of bunny.off."""
    nan = OCTAHEDRON_VERTICES.copy()
    nan[3, 1] = np.nan
    box = trimesh.creation.box()
    return {
        "nan": lambda p: _write_off(p, nan, OCTAHEDRON_FACES),
        "empty": lambda p: p.write_text(""),
        "header": lambda p: _write_off(p, OCTAHEDRON_VERTICES, OCTAHEDRON_FACES, counts=(6, 7)),
        "tiny": lambda p: _write_off(p, box.vertices, box.faces),
    }


CLI_CASES = {
    "nan": "bunny.off: 1 vertex/vertices have NaN or infinite coordinates",
    "empty": "bunny.off holds no vertices/faces",
    "header": r"bunny.off: the header \(line 2\) declares 6 vertices and 7 faces",
    "tiny": "ScoreNet .* needs a domain of at least 9 nodes",
}


@pytest.mark.parametrize(
    "case", [c if c == "nan" else pytest.param(c, marks=pytest.mark.slow) for c in CLI_CASES]
)
def test_cli_train_prior_refuses_a_bad_mesh_file_with_exit_2(tmp_path, case):
    """`manifold-aps train-prior --dataset mesh-bunny` on a bad bunny.off is refused.

    One line, exit 2, no output.
    """
    (tmp_path / "meshes").mkdir()
    _bad_meshes()[case](tmp_path / "meshes" / "bunny.off")
    out = tmp_path / "run"
    env = {**os.environ, "MANIFOLD_APS_DATA": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "manifold_aps.cli",
            "train-prior",
            "--dataset",
            "mesh-bunny",
            "--out",
            str(out),
            "--steps",
            "2",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("manifold-aps train-prior: error: ")
    assert re.search(CLI_CASES[case], lines[0]), lines[0]
    assert not out.exists()
