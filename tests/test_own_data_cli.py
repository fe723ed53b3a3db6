"""Your own data from the command line (issue 16): a gridded file and a mesh with signals.

They go train-prior -> distill (no --dataset: the prior knows its data) -> impute, as a user
runs them, on files this test writes; bad input is one line, exit 2, nothing written.
"""

import shutil

import numpy as np
import pytest
import torch
import trimesh
import xarray as xr
from conftest import TINY_APS, TINY_PRIOR, _field, refused, run_cli


def test_a_gridded_file_trains_distils_and_imputes(grid_runs, tmp_path):
    ckpt = torch.load(grid_runs / "prior" / "checkpoint.pt", weights_only=True)
    data = ckpt["data"]
    assert data["variable"] == "z" and data["units"] == "m"
    assert (
        data["source"]["args"]["select"] == ["level=500"]
        and data["source"]["args"]["path"] == "z500.nc"
    )
    assert "random longitude rotations" in data["description"]  # a global, evenly spaced grid
    assert ckpt["domain_spec"]["type"] == "SphereGrid"
    engine = torch.load(grid_runs / "aps" / "checkpoint.pt", weights_only=True)
    assert engine["prior"]["kind"] == "score-prior" and engine["data"]["source"] == data["source"]
    day = _field(2, 5).isel(level=0)
    hidden = np.random.default_rng(1).random(day.z.shape) < 0.7
    day["z"] = day.z.where(~hidden)
    day.to_netcdf(tmp_path / "day.nc")
    res = run_cli(
        "impute",
        "--input",
        "day.nc",
        "--var",
        "z",
        "--engine",
        "aps",
        "--checkpoint",
        grid_runs / "aps" / "checkpoint.pt",
        "--samples",
        "3",
        "--output",
        "out.nc",
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    with xr.open_dataset(tmp_path / "out.nc") as out:
        np.testing.assert_array_equal(out.z_mean.values[~hidden], day.z.values[~hidden])
        assert np.isfinite(out.z_mean.values).all() and (out.z_std.values[hidden] > 0).all()


def test_a_changed_training_file_is_refused_by_distill(grid_runs, tmp_path):
    _field(12, 1).to_netcdf(tmp_path / "z500.nc")  # same name, other values
    (tmp_path / "prior").mkdir()
    (tmp_path / "prior" / "checkpoint.pt").write_bytes(
        (grid_runs / "prior" / "checkpoint.pt").read_bytes()
    )
    res = run_cli(
        "distill", "--prior", "prior/checkpoint.pt", "--out", "aps", *TINY_APS, cwd=tmp_path
    )
    refused(res, "z500.nc is not the file the prior was trained on")
    assert not (tmp_path / "aps").exists()


def test_a_missing_variable_and_an_unfixed_level_are_one_line(grid_runs, tmp_path):
    refused(
        run_cli(
            "train-prior",
            "--input",
            grid_runs / "z500.nc",
            "--var",
            "t",
            "--out",
            "p",
            *TINY_PRIOR,
            cwd=tmp_path,
        ),
        "'t' not in the Dataset",
        "['z']",
    )
    refused(
        run_cli(
            "train-prior",
            "--input",
            grid_runs / "z500.nc",
            "--var",
            "z",
            "--out",
            "p",
            *TINY_PRIOR,
            cwd=tmp_path,
        ),
        "['level']",
        "--select",
    )
    refused(
        run_cli(
            "train-prior",
            "--input",
            grid_runs / "z500.nc",
            "--dataset",
            "era5-uk",
            "--out",
            "p",
            *TINY_PRIOR,
            cwd=tmp_path,
        ),
        "exactly one of",
    )
    assert not (tmp_path / "p").exists()


def _mesh_files(root, *, permute: bool):
    mesh = trimesh.creation.icosphere(subdivisions=2)
    mesh.vertices *= [1.0, 0.8, 0.6]
    mesh.export(root / "blob.obj")
    v = len(mesh.vertices)
    rng = np.random.default_rng(0)
    signals = np.sin(3 * mesh.vertices[:, 0])[None] + 0.1 * rng.standard_normal((10, v))
    order = rng.permutation(v) if permute else np.arange(v)
    np.savez(
        root / "signals.npz",
        signals=signals[:, order],
        positions=np.asarray(mesh.vertices)[order],
        units="mV",
    )
    return mesh, signals


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
    """A prior and an APS engine trained on signals whose rows are not in the vertices' order."""
    root = tmp_path_factory.mktemp("mesh")
    mesh, signals = _mesh_files(root, permute=True)
    res = run_cli(
        "train-prior",
        "--mesh",
        "blob.obj",
        "--signals",
        "signals.npz",
        "--out",
        "prior",
        *TINY_PRIOR,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    res = run_cli(
        "distill",
        "--prior",
        "prior/checkpoint.pt",
        "--out",
        "aps",
        *TINY_APS,
        *("--anchor", "prior-samples", "--anchor-samples", "8"),  # the reverse-SDE anchor path
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    recorded = torch.load(root / "aps" / "checkpoint.pt", weights_only=True)["model_config"]
    assert (recorded["anchor"], recorded["anchor_samples"]) == ("prior-samples", 8)
    return root, mesh, signals


def test_a_mesh_with_signals_in_another_vertex_order_trains_and_distils(mesh_runs):
    root, mesh, signals = mesh_runs
    from manifold_aps.datasets import dataset_from_source
    from manifold_aps.posterior.engines import load_engine

    engine, ds, _ = load_engine(root / "aps" / "checkpoint.pt")
    assert ds.units == "mV" and ds.domain.num_nodes == len(mesh.vertices)
    source = ds.extra["source"]
    rebuilt = dataset_from_source(
        {
            **source,
            "args": {
                **source["args"],
                "mesh": str(root / "blob.obj"),
                "signals": str(root / "signals.npz"),
            },
        }
    )
    train = torch.cat([rebuilt.source.train, rebuilt.source.val])
    np.testing.assert_allclose(
        train[..., 0].numpy(), signals, rtol=1e-6
    )  # rows matched back to the vertices


def test_reconstruct_keeps_the_file_order_with_every_engine(mesh_runs, tmp_path):
    root, mesh, signals = mesh_runs
    from manifold_aps.geometry import TriangleMesh
    from manifold_aps.reconstruct import reconstruct

    rng = np.random.default_rng(4)
    order = rng.permutation(len(mesh.vertices))  # the test file lists vertices in another order
    test = signals[:2].copy()
    test[rng.random(test.shape) < 0.7] = np.nan
    np.savez(
        tmp_path / "test.npz", signals=test[:, order], positions=np.asarray(mesh.vertices)[order]
    )
    res = run_cli(
        "reconstruct",
        "--mesh",
        root / "blob.obj",
        "--signals",
        "test.npz",
        "--output",
        "g.npz",
        "--ply",
        "g.ply",
        "--plot",
        "g.png",
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    out = np.load(tmp_path / "g.npz")
    direct = reconstruct(
        TriangleMesh.from_file(root / "blob.obj"), test, engine="gaussian", samples=16, seed=0
    )
    np.testing.assert_allclose(out["mean"], direct.mean[:, order], rtol=1e-10)
    np.testing.assert_allclose(out["std"], direct.std[:, order], rtol=1e-10)
    seen = np.isfinite(test[:, order])
    np.testing.assert_array_equal(out["mean"][seen], test[:, order][seen])
    assert out["samples"].shape == (16, 2, len(mesh.vertices)) and (out["std"][~seen] > 0).all()
    assert "property double mean" in (tmp_path / "g.ply").read_text()[:1000]
    assert (tmp_path / "g.png").stat().st_size > 10_000
    prior = root / "prior" / "checkpoint.pt"
    for i, (engine, ckpt, extra) in enumerate(
        (
            ("aps", root / "aps" / "checkpoint.pt", []),
            ("dps", prior, ["--dps-steps", "3"]),
            ("daps", prior, ["--daps-steps", "4"]),
            # its inner covariance fitted on the training signals, read again from signals.npz
            ("daps", prior, ["--daps-steps", "4", "--daps-covariance", "laplacian"]),
            ("harmonic", None, []),
        )
    ):
        args = ["--checkpoint", ckpt] if ckpt else []
        res = run_cli(
            "reconstruct",
            "--mesh",
            root / "blob.obj",
            "--signals",
            "test.npz",
            "--engine",
            engine,
            *args,
            *extra,
            "--samples",
            "3",
            "--output",
            f"{i}-{engine}.npz",
            "--quiet",
            cwd=tmp_path,
        )
        assert res.returncode == 0, (engine, res.stderr)
        out = np.load(tmp_path / f"{i}-{engine}.npz")
        np.testing.assert_array_equal(out["mean"][seen], test[:, order][seen])
        assert np.isfinite(out["mean"]).all()


def test_daps_covariance_refuses_a_prior_whose_training_files_are_gone(mesh_runs, tmp_path):
    """The fit reads the training files again; a prior moved away from them: one line, exit 2."""
    root, mesh, signals = mesh_runs
    (tmp_path / "moved").mkdir()
    shutil.copy(root / "prior" / "checkpoint.pt", tmp_path / "moved" / "checkpoint.pt")
    test = np.where(np.arange(len(mesh.vertices)) % 3 == 0, 1.0, np.nan)[None]
    np.savez(tmp_path / "t.npz", signals=test, positions=np.asarray(mesh.vertices))
    args = ["--signals", "t.npz", "--engine", "daps", "--checkpoint", "moved/checkpoint.pt"]
    line = refused(
        run_cli(
            "reconstruct",
            "--mesh",
            root / "blob.obj",
            *args,
            "--daps-covariance",
            "eof",
            "--output",
            "o.npz",
            cwd=tmp_path,
        ),
        "--daps-covariance eof",
        "cannot be read again",
    )
    assert "not found" in line and not (tmp_path / "o.npz").exists()


def test_reconstruct_refuses_another_mesh_and_its_own_input(mesh_runs, tmp_path):
    root, mesh, signals = mesh_runs
    other = trimesh.creation.icosphere(subdivisions=2)
    other.export(tmp_path / "sphere.obj")
    np.savez(
        tmp_path / "t.npz",
        signals=np.where(np.arange(len(other.vertices)) % 3 == 0, 1.0, np.nan)[None],
    )
    line = refused(
        run_cli(
            "reconstruct",
            "--mesh",
            "sphere.obj",
            "--signals",
            "t.npz",
            "--engine",
            "aps",
            "--checkpoint",
            root / "aps" / "checkpoint.pt",
            "--output",
            "o.npz",
            cwd=tmp_path,
        ),
        "name='blob.obj'",
        "name='sphere.obj'",
        "another mesh or grid",
    )
    before = (tmp_path / "t.npz").read_bytes()
    refused(
        run_cli(
            "reconstruct",
            "--mesh",
            "sphere.obj",
            "--signals",
            "t.npz",
            "--output",
            "t.npz",
            cwd=tmp_path,
        ),
        "t.npz is an input",
    )
    assert (tmp_path / "t.npz").read_bytes() == before and not (tmp_path / "o.npz").exists(), line
    refused(
        run_cli(
            "reconstruct",
            "--mesh",
            "sphere.obj",
            "--signals",
            "t.npz",
            "--mask",
            "random:2",
            "--output",
            "o.npz",
            cwd=tmp_path,
        ),
        "random:F",
    )


def test_signals_that_do_not_fit_the_mesh_are_one_line(tmp_path):
    mesh, signals = _mesh_files(tmp_path, permute=False)
    np.savez(tmp_path / "short.npz", signals=signals[:, :-1])
    refused(
        run_cli(
            "train-prior",
            "--mesh",
            "blob.obj",
            "--signals",
            "short.npz",
            "--out",
            "p",
            *TINY_PRIOR,
            cwd=tmp_path,
        ),
        "shape (S, V=162)",
        "(10, 161)",
    )
    moved = np.asarray(mesh.vertices) + [0.0, 0.0, 0.05]
    np.savez(tmp_path / "moved.npz", signals=signals, positions=moved)
    refused(
        run_cli(
            "train-prior",
            "--mesh",
            "blob.obj",
            "--signals",
            "moved.npz",
            "--out",
            "p",
            *TINY_PRIOR,
            cwd=tmp_path,
        ),
        "are not the mesh's vertices",
    )
    refused(
        run_cli("train-prior", "--mesh", "blob.obj", "--out", "p", *TINY_PRIOR, cwd=tmp_path),
        "--signals",
    )
    assert not (tmp_path / "p").exists()


def test_a_healpix_map_with_a_mask_in_another_ordering_is_reconstructed(tmp_path):
    import healpy as hp

    from manifold_aps.geometry import HealpixSphere
    from manifold_aps.reconstruct import reconstruct

    nside = 8
    rng = np.random.default_rng(0)
    ring = hp.alm2map(
        hp.synalm(1.0 / (1 + np.arange(24.0)) ** 2, lmax=23, new=True), nside
    )  # RING order
    nested = hp.reorder(ring, r2n=True)
    nested[rng.random(nested.size) < 0.05] = hp.UNSEEN  # unobserved pixels in the map itself
    keep = (np.abs(hp.pix2ang(nside, np.arange(ring.size))[0] - np.pi / 2) > 0.3).astype(
        float
    )  # a "galaxy" cut, RING
    hp.write_map(str(tmp_path / "map.fits"), nested, nest=True, column_units="mK", dtype=np.float64)
    hp.write_map(str(tmp_path / "mask.fits"), keep, nest=False, dtype=np.float64)
    res = run_cli(
        "reconstruct",
        "--healpix",
        "map.fits",
        "--mask",
        "mask.fits",
        "--output",
        "rec.fits",
        "--plot",
        "rec.png",
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    mean, std, seen = hp.read_map(str(tmp_path / "rec.fits"), field=(0, 1, 2), nest=True)
    observed = (nested != hp.UNSEEN) & (hp.reorder(keep, r2n=True) > 0.5)
    np.testing.assert_array_equal(seen > 0.5, observed)
    np.testing.assert_allclose(mean[observed], nested[observed])
    direct = reconstruct(HealpixSphere(nside, nest=True), np.where(observed, nested, np.nan)[None])
    np.testing.assert_allclose(mean, direct.mean[0], rtol=1e-6, atol=1e-9)  # FITS stores float64
    np.testing.assert_allclose(std, direct.std[0], rtol=1e-6, atol=1e-9)
    assert (std[~observed] > 0).all() and (tmp_path / "rec.png").stat().st_size > 10_000
    hp.write_map(str(tmp_path / "mask4.fits"), np.ones(hp.nside2npix(4)), dtype=np.float64)
    refused(
        run_cli(
            "reconstruct",
            "--healpix",
            "map.fits",
            "--mask",
            "mask4.fits",
            "--output",
            "x.fits",
            cwd=tmp_path,
        ),
        "mask of nside 4",
        "has nside 8",
    )
    assert not (tmp_path / "x.fits").exists()
