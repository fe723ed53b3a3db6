"""The demo as a user runs it: end to end in a subprocess, its options through `run_cli`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from conftest import REPO, run_cli


def _subprocess_cli(*args, cwd):
    """`python -m manifold_aps.cli ARGS`: the process a user starts (the end-to-end test)."""
    return subprocess.run(
        [sys.executable, "-m", "manifold_aps.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_demo_cli_end_to_end(tmp_path):
    out = tmp_path / "out"
    res = _subprocess_cli(
        "demo", "--times", "3", "--samples", "8", "--output-dir", str(out), cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert "exact Gaussian" in res.stdout and "aps" in res.stdout
    scores = json.loads((out / "scores.json").read_text())
    # the posterior mean beats nearest-neighbour filling and the climatology on hidden cells
    assert (
        scores["rmse_posterior_mean"]
        < scores["rmse_nearest_neighbour"]
        < scores["rmse_climatology"]
    )
    assert 0.5 < scores["coverage_90_analytic"] <= 1.0
    assert (out / "map.png").stat().st_size > 10_000
    # the shipped APS flow, through its self-describing checkpoint, on the same hidden cells
    learned = scores["learned"]
    assert learned["engine"] == "aps" and learned["checkpoint"] == "aps-t2m-uk.pt"
    assert 0 < learned["rmse_posterior_mean"] < scores["rmse_climatology"]
    assert 0 < learned["coverage_90_analytic"] <= 1 and learned["spread_skill"] > 0
    assert (out / "map_aps.png").stat().st_size > 10_000
    with xr.open_dataset(out / "imputed_aps.nc", engine="h5netcdf") as aps:
        kept = aps["observed"].values == 1
        np.testing.assert_array_equal(aps["t2m_mean"].values[kept], aps["t2m"].values[kept])
        assert "aps-t2m-uk.pt" in aps.attrs["history"]
    ds = xr.open_dataset(out / "imputed.nc", engine="h5netcdf")
    observed = ds["observed"].values == 1
    assert 0.25 < observed.mean() < 0.35
    truth = ds["t2m"].values
    # observed values are the input values bit for bit, in the mean and in every sample
    np.testing.assert_array_equal(ds["t2m_mean"].values[observed], truth[observed])
    for s in range(ds.sizes["sample"]):
        np.testing.assert_array_equal(ds["t2m_samples"].values[s][observed], truth[observed])
    assert np.all(ds["t2m_std"].values[observed] == 0)
    assert np.all(ds["t2m_std"].values[~observed] > 0)
    assert ds["t2m_mean"].attrs["units"] == "K"
    assert "ancillary_variables" in ds["t2m_mean"].attrs
    assert "manifold-aps demo" in ds.attrs["history"]


# the other mask kinds with -m slow (~20 s each on 2 cores; the random one runs above)
@pytest.mark.parametrize(
    "mask",
    [
        pytest.param("stations", marks=pytest.mark.slow),
        pytest.param("swath", marks=pytest.mark.slow),
        pytest.param("box", marks=pytest.mark.slow),
    ],
)
def test_demo_other_masks(tmp_path, mask):
    res = run_cli(
        "demo",
        "--mask",
        mask,
        "--times",
        "1",
        "--samples",
        "4",
        "--no-plot",
        "--output-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "scores.json").read_text())["rmse_posterior_mean"] > 0


def test_the_shipped_model_is_scored_only_on_hours_it_never_saw(tmp_path):
    """With half the hours as training, test hours fall in the shipped model's training period."""
    res = run_cli(
        "demo",
        "--train-fraction",
        "0.5",
        "--times",
        "1",
        "--samples",
        "2",
        "--no-plot",
        "--output-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["learned"] is None
    assert "2019-03-01T00:2019-03-24T05" in scores["learned_skipped"]
    assert "learned engine skipped" in res.stdout
    assert not (tmp_path / "imputed_aps.nc").exists()


def test_the_shipped_model_is_small_and_reproducible_from_the_makefile():
    from climate.demo import default_learned_model_path

    path = default_learned_model_path()
    assert path.stat().st_size < 5_000_000
    state = __import__("torch").load(path, weights_only=True)
    assert state["optimizer"] is None and state["kind"] == "aps-flow"
    args = state["data"]["source"]["args"]
    makefile = (REPO / "Makefile").read_text()
    assert f"--fit-period {args['fit_period']}" in makefile
    assert f"--steps {state['step']}" in makefile


def test_demo_bad_input_is_a_clear_error(tmp_path):
    res = run_cli("demo", "--var", "z500", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2
    assert "z500" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("demo", "--missing", "1.0", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "missing must lie" in res.stderr


def test_help_explains_the_demo():
    res = run_cli("demo", "--help", cwd=REPO)
    assert res.returncode == 0
    assert "example:" in res.stdout and "--mask" in res.stdout
