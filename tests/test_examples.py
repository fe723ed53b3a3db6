"""The example scripts run end to end with `--quick`, from a subprocess as a user runs them.

Each writes its files to a temporary folder and a `scores.json`; the scores must be finite and
beat a trivial estimate (the training mean field, the zero signal, the blurred observation), a
bound a broken engine would fail.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
from conftest import REPO

from manifold_aps.datasets import data_dir

EXAMPLES = REPO / "examples"


def _needs(*relative: str) -> None:
    """Skip unless the shared data folder holds every file in `relative`."""
    root = data_dir()
    for rel in relative:
        if not (root / rel).is_file():
            pytest.skip(
                f"{root / rel} not found: the example needs the shared data (set MANIFOLD_APS_DATA)"
            )


def _run(script: str, out: Path, *args: str):
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    scores = json.loads((out / "scores.json").read_text())
    return res.stdout, scores


def _finite(row: dict) -> None:
    for key, value in row.items():
        if isinstance(value, float):
            assert math.isfinite(value), (key, row)


def test_quickstart(tmp_path):
    _needs("era5/era5_global_1deg_2026-03-25_to_31_24steps.nc")
    stdout, s = _run("quickstart.py", tmp_path)
    _finite(s)
    assert "RMSE of the posterior mean" in stdout
    assert s["rmse_mean"] < 0.9 * min(s["rmse_training_mean_field"], s["rmse_nearest_neighbour"])
    assert s["crps"] < s["rmse_mean"]
    assert 0.5 < s["coverage_90"] <= 1.0
    assert (tmp_path / "quickstart.png").stat().st_size > 10_000


def test_mesh_reconstruction(tmp_path):
    _needs("meshes/bunny.off", "meshes/spot_triangulated.obj")
    _, rows = _run("mesh_reconstruction.py", tmp_path)
    assert {(r["mesh"], r["problem"]) for r in rows} == {
        (m, p) for m in ("bunny", "spot") for p in ("inpainting", "deblurring")
    }
    for r in rows:
        _finite(r)
        assert r["rmse_mean"] < r["rmse_zero"], r
        assert 0.3 < r["coverage_90"] <= 1.0, r
        assert Path(r["png"]).stat().st_size > 10_000
    for r in rows:
        if r["problem"] == "deblurring":
            assert r["rmse_mean"] < 0.9 * r["rmse_observation"], r
        else:
            assert r["rmse_mean"] < 1.2 * min(r["rmse_nearest_neighbour"], r["rmse_harmonic"]), r


def test_mesh_reconstruction_refuses_one_checkpoint_for_two_meshes():
    res = subprocess.run(
        [sys.executable, str(EXAMPLES / "mesh_reconstruction.py"), "--engine", "engine.pt"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert res.returncode == 2 and "--mesh bunny" in res.stderr


def test_era5_imputation(tmp_path):
    _needs("era5/era5_global_1deg_2026-03-25_to_31_24steps.nc")
    stdout, rows = _run("era5_imputation.py", tmp_path)
    assert "RMSE mean" in stdout
    assert {(r["domain"], r["mask"]) for r in rows} == {
        (d, m) for d in ("uk", "global") for m in ("random", "stations", "swaths")
    }
    for r in rows:
        _finite(r)
        assert r["rmse_mean"] < 0.8 * r["rmse_training_mean_field"], r
        assert r["crps"] < r["rmse_mean"], r
        assert Path(r["png"]).stat().st_size > 10_000
        if r["mask"] != "swaths":  # swaths cover about 30 % on average, not exactly
            assert abs(r["hidden_fraction"] - 0.7) < 0.02, r
        with xr.open_dataset(r["netcdf"], engine="h5netcdf") as ds:
            assert {"t2m_mean", "t2m_std", "t2m_samples", "observed"} <= set(ds.data_vars)
            assert ds.t2m_samples.sizes["sample"] == 4
    for domain in ("uk", "global"):
        stations = (tmp_path / f"synthetic_stations_{domain}.csv").read_text().splitlines()
        assert stations[0] == "station,lat,lon" and len(stations) > 100
