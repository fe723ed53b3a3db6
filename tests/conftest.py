"""Shared fixtures: real-data folder, seeded generators, float64, an isolated eigen cache."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MANIFOLD_APS_TEST_SEED", "0"))


def data_dir() -> Path:
    """`$MANIFOLD_APS_DATA`, default `../shared/data` beside the repository."""
    return Path(os.environ.get("MANIFOLD_APS_DATA", REPO.parent / "shared" / "data"))


def masked_gaussian_problem(nside: int, missing: float, sigma: float, fields: int = 2):
    """`(domain, prior, noise, operator, y, generator)`: Matérn prior draws seen through a mask.

    `fields` draws of a Matérn prior (variance 1, length scale 0.5, smoothness 1.5) on HEALPix
    `nside`, a random mask hiding `missing` of each, noise std `sigma`; the generator (seed 0)
    made the draws and the noise and goes on from there.
    """
    from manifold_aps.geometry import HealpixSphere
    from manifold_aps.operators import GaussianNoise, Mask, RandomMaskGenerator
    from manifold_aps.priors import GaussianPrior

    domain = HealpixSphere(nside)
    prior = GaussianPrior(domain, variance=1.0, length_scale=0.5, smoothness=1.5)
    g = torch.Generator().manual_seed(0)
    x = prior.sample(fields, rng=g)
    mask = RandomMaskGenerator(domain, missing=missing).step(fields, seed=0)["mask"]
    op = Mask(domain, mask)
    noise = GaussianNoise(sigma)
    return domain, prior, noise, op, noise(op(x), op.range_mask, rng=g), g


def pytest_configure(config):
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.environ.setdefault("MANIFOLD_APS_CACHE", str(REPO / ".cache"))


def run_cli(*args, cwd) -> subprocess.CompletedProcess:
    """`manifold-aps ARGS` run in `cwd` as a user runs it: its exit code, stdout and stderr.

    By default in this process: the command's `main` (what the installed `manifold-aps` script
    and `python -m manifold_aps.cli` call), which saves an interpreter start and its imports
    (~4 s a call, ~50 calls in the suite). What a fresh interpreter would differ in is set up
    and restored around the call: the working directory, torch's thread count (one, as below),
    stdout/stderr (captured), and the warning filters (Python's defaults: each warning once per
    place, on stderr; deprecations hidden); an uncaught exception is exit 1 with its traceback on
    stderr, as the interpreter prints it. `MANIFOLD_APS_TEST_SUBPROCESS=1` runs every call in a
    subprocess instead (`python -m manifold_aps.cli ARGS`, one torch thread): the same tests, as
    the process a user starts.
    """
    argv = [str(a) for a in args]
    if os.environ.get("MANIFOLD_APS_TEST_SUBPROCESS") == "1":
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        return subprocess.run(
            [sys.executable, "-m", "manifold_aps.cli", *argv],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    from manifold_aps.cli import main

    out, err = io.StringIO(), io.StringIO()
    here, threads = os.getcwd(), torch.get_num_threads()
    try:
        os.chdir(cwd)
        torch.set_num_threads(1)
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            warnings.catch_warnings(),
        ):
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
                warnings.filterwarnings("ignore", category=quiet)
            warnings.showwarning = _warning_on_stderr
            try:
                code = main(argv)
            except SystemExit as stop:  # argparse: a usage error (2), --help (0)
                code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
                if isinstance(stop.code, str):
                    print(stop.code, file=sys.stderr)
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(
        ["manifold-aps", *argv], code, out.getvalue(), err.getvalue()
    )


def _warning_on_stderr(message, category, filename, lineno, file=None, line=None):
    """`warnings.showwarning` as a fresh interpreter has it, writing to the current stderr."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def refused(res, *words: str) -> str:
    """The one error line of a refused CLI run (exit 2, no traceback), checked to name `words`."""
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def data():
    """The real-data folder; skips the test with the reason when it is absent."""
    folder = data_dir()
    if not folder.is_dir():
        pytest.skip(f"real data not found at {folder} (set MANIFOLD_APS_DATA)")
    return folder


def require(path: Path) -> Path:
    """Skip unless `path` exists."""
    if not path.exists():
        pytest.skip(f"{path} not found (set MANIFOLD_APS_DATA)")
    return path


@pytest.fixture
def natural_earth(monkeypatch):
    """Point CARTOPY_DATA_DIR at the real Natural Earth folder (with the land polygons)."""
    folder = data_dir() / "natural_earth"
    require(folder / "shapefiles" / "natural_earth" / "physical" / "ne_110m_land.shp")
    monkeypatch.setenv("CARTOPY_DATA_DIR", str(folder))
    return folder


@pytest.fixture
def rng():
    """A seeded torch generator (override the seed with MANIFOLD_APS_TEST_SEED)."""
    return torch.Generator().manual_seed(SEED)


@pytest.fixture
def np_rng():
    """A seeded numpy generator."""
    return np.random.default_rng(SEED)


@pytest.fixture(autouse=True)
def _doctest_seed(doctest_namespace):
    torch.manual_seed(SEED)
    doctest_namespace["torch"] = torch


# Tiny command-line trainings on a small global field, shared by the own-data tests.
TINY_PRIOR = [
    "--steps",
    "2",
    "--batch-size",
    "2",
    "--channels",
    "8",
    "--modes",
    "8",
    "--validate-every",
    "0",
    "--checkpoint-every",
    "2",
    "--quiet",
]
TINY_APS = [
    "--steps",
    "2",
    "--batch-size",
    "2",
    "--couplings",
    "1",
    "--width",
    "8",
    "--modes",
    "8",
    "--cg-iterations",
    "2",
    # the anchor from the training signals: seconds, where 128 prior samples take ~20 s at 768
    # pixels (test_own_data_cli's mesh run keeps the prior-sample path, with 8 of them)
    "--anchor",
    "signals",
    "--quiet",
]
LAT, LON = np.arange(90.0, -91.0, -15.0), np.arange(0.0, 360.0, 15.0)  # global 13 x 24


def _field(steps: int, seed: int, name: str = "z") -> xr.Dataset:
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(LAT)[:, None]
    base = 5500 + 200 * np.cos(lat) ** 2 + 30 * np.sin(np.deg2rad(LON))[None, :] * np.cos(lat)
    values = base[None] + rng.normal(0, 5, (steps, LAT.size, LON.size))
    times = np.datetime64("2020-01-01T00") + np.arange(steps) * np.timedelta64(6, "h")
    da = xr.DataArray(
        values[:, None],
        dims=("time", "level", "latitude", "longitude"),
        name=name,
        coords={
            "time": times.astype("datetime64[ns]"),
            "level": [500],
            "latitude": LAT,
            "longitude": LON,
        },
        attrs={"units": "m"},
    )
    return da.to_dataset()


@pytest.fixture(scope="session")
def grid_runs(tmp_path_factory):
    """A tiny prior (with EMA weights) and APS flow trained from the CLI on `_field(12, 0)`.

    Shared by the own-data, export and HEALPix tests (one training for the session); tests copy
    what they change and never write into it, except export's copies beside the runs.
    """
    root = tmp_path_factory.mktemp("grid")
    _field(12, 0).to_netcdf(root / "z500.nc")
    res = run_cli(
        "train-prior",
        "--input",
        "z500.nc",
        "--var",
        "z",
        "--select",
        "level=500",
        "--out",
        "prior",
        *TINY_PRIOR,
        "--ema",
        "0.9",
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("distill", "--prior", "prior/checkpoint.pt", "--out", "aps", *TINY_APS, cwd=root)
    assert res.returncode == 0, res.stderr
    return root
