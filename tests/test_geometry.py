"""Geometry against closed forms: sphere spectra l(l+1), areas 4*pi, mesh areas, grids."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import trimesh
from conftest import require

from manifold_aps.geometry import (
    Domain,
    HealpixSphere,
    IcosphereMesh,
    PlanarGrid,
    SphereGrid,
    TriangleMesh,
    eigen,
)
from manifold_aps.geometry.eigen import cache_dir

SPHERE_EIGENVALUES = np.array(
    [degree * (degree + 1) for degree in range(5) for _ in range(2 * degree + 1)], float
)

SPHERES = {
    "healpix16": lambda: HealpixSphere(16),
    "healpix16-nest": lambda: HealpixSphere(16, nest=True),
    "icosphere4": lambda: IcosphereMesh(4),
    "latlon2deg-poles": lambda: SphereGrid(np.arange(90, -90.1, -2.0), np.arange(0, 360, 2.0)),
    "latlon2deg-centred": lambda: SphereGrid(np.arange(-89, 90, 2.0), np.arange(-180, 180, 2.0)),
}

MESHES = [
    "bunny.off",
    "bunny_oded.obj",
    "spot_triangulated.obj",
    "bumpy.off",
    "decimated-knight.off",
]


@pytest.mark.parametrize("name", list(SPHERES), ids=list(SPHERES))
def test_sphere_eigenvalues_are_l_l_plus_1(name):
    """The first 25 eigenvalues are l(l+1) with multiplicity 2l+1 within 2 % for l <= 4."""
    domain = SPHERES[name]()
    vals, vecs = domain.eigenbasis(25)
    vals = vals.numpy()
    assert abs(vals[0]) < 1e-8
    rel = np.abs(vals[1:] - SPHERE_EIGENVALUES[1:]) / SPHERE_EIGENVALUES[1:]
    assert rel.max() < 0.02, f"worst relative error {rel.max():.4f}"
    # mass-orthonormal eigenvectors
    gram = vecs.T @ (domain.mass[:, None] * vecs)
    assert torch.allclose(gram, torch.eye(25, dtype=gram.dtype), atol=1e-8)


@pytest.mark.parametrize("name", list(SPHERES), ids=list(SPHERES))
def test_sphere_mass_sums_to_4pi(name):
    domain = SPHERES[name]()
    assert abs(domain.total_area / (4 * np.pi) - 1) < 0.005
    assert torch.all(domain.mass > 0)


def test_regional_grid_cell_areas_are_exact():
    """A 1x1 degree cell's area is dlon * (sin(hi) - sin(lo)) on the unit sphere."""
    g = SphereGrid(np.array([50.5, 51.5]), np.array([0.5, 1.5, 2.5]))
    expected = np.deg2rad(1.0) * (
        np.sin(np.deg2rad([51.0, 52.0])) - np.sin(np.deg2rad([50.0, 51.0]))
    )
    assert np.allclose(g.mass.numpy().reshape(2, 3), expected[:, None])
    assert not g.periodic


def test_latitude_orientation_and_longitude_convention_do_not_change_geometry():
    lat = np.arange(-88.0, 89.0, 4.0)
    north_up = SphereGrid(lat[::-1], np.arange(0, 360, 4.0))
    south_up = SphereGrid(lat, np.arange(-180, 180, 4.0))
    a = np.sort(north_up.mass.numpy())
    b = np.sort(south_up.mass.numpy())
    assert np.allclose(a, b)
    va, _ = north_up.eigenbasis(10, cache=False)
    vb, _ = south_up.eigenbasis(10, cache=False)
    assert torch.allclose(va, vb, rtol=1e-8, atol=1e-10)


def test_grid_rejects_bad_coordinates():
    with pytest.raises(ValueError, match="strictly monotonic"):
        SphereGrid(np.array([0.0, 1.0, 0.5]), np.arange(0, 10.0))
    with pytest.raises(ValueError, match=r"lat_deg must lie in \[-90, 90\]"):
        SphereGrid(np.array([80.0, 95.0]), np.arange(0, 10.0))
    with pytest.raises(ValueError, match="lon_deg must increase"):
        SphereGrid(np.array([0.0, 1.0]), np.array([10.0, 9.0, 8.0]))


def test_planar_grid_eigenvalues_match_closed_form():
    ny, nx, hy, hx = 6, 8, 0.5, 2.0
    grid = PlanarGrid(ny, nx, spacing=(hy, hx))
    vals, _ = grid.eigenbasis(ny * nx)
    p, q = np.meshgrid(np.arange(nx), np.arange(ny))
    exact = np.sort(
        (
            4 / hx**2 * np.sin(np.pi * p / (2 * nx)) ** 2
            + 4 / hy**2 * np.sin(np.pi * q / (2 * ny)) ** 2
        ).ravel()
    )
    assert np.allclose(vals.numpy(), exact, atol=1e-10)


@pytest.mark.parametrize("name", MESHES)
def test_real_meshes_load_with_trimesh_area(data, name):
    path = require(data / "meshes" / name)
    mesh = TriangleMesh.from_file(path)
    reference = trimesh.load(path, force="mesh")
    assert mesh.total_area == pytest.approx(reference.area, rel=1e-10)
    assert mesh.num_components() == 1
    voronoi = TriangleMesh.from_file(path, mass="voronoi")
    assert voronoi.total_area == pytest.approx(reference.area, rel=1e-10)
    assert torch.all(voronoi.mass > 0)
    vals, _ = mesh.eigenbasis(6)
    assert abs(vals[0]) < 1e-6 * vals[1] and torch.all(vals[1:] > 0)


def test_obj_seams_are_merged(data):
    mesh = TriangleMesh.from_file(require(data / "meshes" / "spot_triangulated.obj"))
    assert mesh.num_nodes == 2930  # 3225 raw OBJ vertices, split at texture seams


def test_cotangent_laplacian_is_symmetric_and_kills_constants():
    mesh = TriangleMesh(trimesh.creation.icosphere(2).vertices, trimesh.creation.icosphere(2).faces)
    s = mesh.stiffness()
    assert abs(s - s.T).max() < 1e-12
    assert np.abs(s @ np.ones(mesh.num_nodes)).max() < 1e-10
    lap = mesh.laplacian()
    u, v = np.random.default_rng(0).normal(size=(2, mesh.num_nodes))
    m = mesh.mass.numpy()
    assert np.dot(m * (lap @ u), v) == pytest.approx(np.dot(m * u, lap @ v), rel=1e-10)


def _tetra():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], float)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    return v, f


def test_mesh_validation_errors():
    v, f = _tetra()
    TriangleMesh(v, f)  # a valid closed surface
    with pytest.raises(ValueError, match="degenerate face"):
        TriangleMesh(v, np.vstack([f, [[0, 1, 1]]]))
    with pytest.raises(ValueError, match="degenerate face"):
        flat = np.vstack([v, [[2, 0, 0]]])
        TriangleMesh(flat, np.vstack([f, [[0, 1, 4]]]))  # collinear: zero area
    with pytest.raises(ValueError, match="non-manifold mesh, 1 edge"):
        v5 = np.vstack([v, [[1, 1, 1]]])
        TriangleMesh(v5, np.vstack([f, [[0, 1, 4]]]))  # third face on edge (0, 1)
    with pytest.raises(ValueError, match="bow-tie"):
        bow_v = np.vstack([v, v[1:] + [0, 0, -2]])
        bow_f = np.vstack([f, [[0, 5, 4], [0, 4, 6], [0, 6, 5], [4, 5, 6]]])
        TriangleMesh(bow_v, bow_f)  # two tetrahedra sharing vertex 0
    with pytest.raises(ValueError, match="disconnected"):
        TriangleMesh(np.vstack([v, v + 5]), np.vstack([f, f + 4]))
    with pytest.raises(ValueError, match="belong to no face"):
        TriangleMesh(np.vstack([v, [[9, 9, 9]]]), f)
    with pytest.raises(ValueError, match="NaN"):
        TriangleMesh(np.where(np.arange(12).reshape(4, 3) == 0, np.nan, v), f)
    with pytest.raises(ValueError, match="mass must be one of"):
        TriangleMesh(v, f, mass="cotan")
    with pytest.raises(FileNotFoundError, match="mesh file not found"):
        TriangleMesh.from_file("/nonexistent/bunny.off")


COARSENABLE = {
    "healpix8": lambda: HealpixSphere(8),
    "healpix8-nest": lambda: HealpixSphere(8, nest=True),
    "icosphere3": lambda: IcosphereMesh(3),
    "latlon-uk": lambda: SphereGrid(np.arange(58, 49.9, -0.25), np.arange(-10, 2.01, 0.25)),
    "latlon-global": lambda: SphereGrid(np.arange(90, -90.1, -3.0), np.arange(0, 360, 3.0)),
    "plane": lambda: PlanarGrid(8, 12),
    "mesh": lambda: TriangleMesh(
        trimesh.creation.icosphere(3).vertices, trimesh.creation.icosphere(3).faces
    ),
}


@pytest.mark.parametrize("name", list(COARSENABLE), ids=list(COARSENABLE))
def test_coarsening_conserves_area_and_averages(name):
    domain = COARSENABLE[name]()
    step = domain.coarsen()
    coarse = step.domain
    assert 2.5 < domain.num_nodes / coarse.num_nodes < 5.5
    assert step.pool.shape == (coarse.num_nodes, domain.num_nodes)
    assert step.unpool.shape == (domain.num_nodes, coarse.num_nodes)
    assert np.allclose(np.asarray(step.pool.sum(axis=1)).ravel(), 1.0)  # averages
    assert np.allclose(np.asarray(step.unpool.sum(axis=1)).ravel(), 1.0)
    assert coarse.total_area == pytest.approx(domain.total_area, rel=0.02)
    x = torch.randn(2, domain.num_nodes, 3, dtype=torch.float64)
    assert step.pool_signal(x).shape == (2, coarse.num_nodes, 3)
    assert torch.allclose(
        step.pool_signal(torch.ones_like(x)),
        torch.ones(2, coarse.num_nodes, 3, dtype=torch.float64),
    )


def test_structured_coarsening_is_exact_union_of_cells():
    g = SphereGrid(np.arange(90, -90.1, -3.0), np.arange(0, 360, 3.0))
    step = g.coarsen()
    # the coarse mass equals the sum of its fine cells' masses
    sums = sp.csr_matrix(step.unpool.T) @ g.mass.numpy()
    assert np.allclose(sums, step.domain.mass.numpy(), rtol=1e-12)
    h = HealpixSphere(8)
    assert h.coarsen().domain.nside == 4
    assert len(h.hierarchy(3)) == 3 and h.hierarchy(3)[-1].domain.nside == 1


def test_fingerprint_is_stable_and_distinguishes_domains():
    assert HealpixSphere(8).fingerprint == HealpixSphere(8).fingerprint
    assert HealpixSphere(8).fingerprint != HealpixSphere(8, nest=True).fingerprint
    assert HealpixSphere(8).fingerprint != HealpixSphere(4).fingerprint
    assert PlanarGrid(4, 4).fingerprint != PlanarGrid(4, 4, spacing=2.0).fingerprint


def test_eigenbasis_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path))
    d = HealpixSphere(4)
    vals, vecs = d.eigenbasis(12)
    files = list(cache_dir().glob(f"{d.fingerprint}_k12_*.npz"))
    assert len(files) == 1
    # a fresh object of the same geometry reads the file (the solver is not called again);
    # tampered and other-k files are covered in test_eigen_cache.py
    monkeypatch.setattr(
        eigen, "solve_eigenbasis", lambda *a: pytest.fail("solver called despite the cache")
    )
    vals2, vecs2 = HealpixSphere(4).eigenbasis(12)
    assert torch.equal(vals2, vals) and torch.equal(vecs2, vecs)


def test_inner_product_and_signal_checks():
    d = HealpixSphere(2)
    u = torch.ones(3, d.num_nodes, 2, dtype=torch.float64)
    assert torch.allclose(d.inner(u, u), torch.full((3,), 2 * 4 * np.pi, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(\*, N=48, C\)"):
        d.inner(torch.ones(3, 47, 1), torch.ones(3, 47, 1))


def test_domain_rejects_bad_arrays():
    pos = np.zeros((3, 3))
    with pytest.raises(ValueError, match="mass must be positive"):
        Domain(pos, np.array([1.0, 0.0, 1.0]), np.array([[0], [1]]), np.array([1.0]))
    with pytest.raises(ValueError, match="outside"):
        Domain(pos, np.ones(3), np.array([[0], [5]]), np.array([1.0]))


def test_geodesic_distances():
    d = HealpixSphere(8)
    dist = d.geodesic_distance(0)
    pos = d.positions.numpy()
    assert np.allclose(dist, np.arccos(np.clip(pos @ pos[0], -1, 1)))
    mesh = TriangleMesh(trimesh.creation.icosphere(3).vertices, trimesh.creation.icosphere(3).faces)
    graph = mesh.geodesic_distance(0)
    chord = np.linalg.norm(mesh.positions.numpy() - mesh.positions.numpy()[0], axis=1)
    assert np.all(graph >= chord - 1e-12)  # a path along edges is never shorter than the chord


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    from manifold_aps.checkpoint import atomic_path

    target = tmp_path / "result.npy"
    with atomic_path(target) as tmp:
        np.save(tmp, np.arange(3))
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            np.save(tmp, np.arange(5))
            raise RuntimeError("interrupted")
    assert np.load(target).tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npy"]  # no temp file left
