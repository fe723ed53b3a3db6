"""`impute` on a dask.distributed cluster (issue 15): the single-process output, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import REPO
from distributed import Client, LocalCluster, get_task_stream

from climate import open_era5
from climate.demo import default_sample_path
from climate.impute import impute
from climate.model import GaussianImputer

EXE = [sys.executable, "-m", "manifold_aps.cli", "impute"]
TRAIN = slice("2019-03-01T00", "2019-03-02T23")  # 48 complete hours
IMPUTED = slice("2019-03-03T00", "2019-03-03T09")  # 10 hours: blocks of 4, 4, 2
CHUNK = 4


@pytest.fixture(scope="module")
def field():
    """UK t2m, March 2019 (the shipped ERA5 sample)."""
    return open_era5(default_sample_path(), "t2m")["t2m"].load()


@pytest.fixture(scope="module")
def model(field):
    return GaussianImputer.fit(field.sel(time=TRAIN), alpha=2)


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, listening on 127.0.0.1 only, no dashboard."""
    local = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    try:
        yield local
    finally:
        local.close()


def _same_output(a: xr.Dataset, b: xr.Dataset) -> bool:
    """Whether `a` and `b` hold equal variables, values (exactly), coordinates and attributes.

    The time of `history` may differ.
    """
    b = b.copy()
    b.attrs["history"] = a.attrs["history"]
    return a.identical(b)


def test_local_cluster_gives_the_single_process_imputation_bit_for_bit(field, model, cluster):
    target = field.sel(time=IMPUTED)
    rng = np.random.default_rng(0)
    mask = xr.DataArray(rng.random(target.shape) >= 0.7, dims=target.dims, coords=target.coords)
    kwargs = {"n_samples": 4, "seed": 3, "quantiles": (0.1, 0.9), "chunk_size": CHUNK}
    alone = impute(target, mask, model, progress=False, **kwargs)
    with Client(cluster) as client, get_task_stream(client) as tasks:
        spread = impute(
            target, mask, model, progress=True, **kwargs
        )  # a bar that stays in this process
        worker_threads = client.run(torch.get_num_threads)
    ran = [t for t in tasks.data if "impute-t2m" in str(t["key"])]
    assert len(ran) == 3 and all(
        t["worker"] in worker_threads for t in ran
    )  # each block on a worker
    assert set(worker_threads.values()) == {1}
    assert _same_output(alone, spread)
    for name in ("t2m_mean", "t2m_std", "t2m_samples", "t2m_quantiles"):
        np.testing.assert_array_equal(spread[name].values, alone[name].values, strict=True)


# two CLI runs and a cluster start (~20 s); the bit-for-bit API test above stays in the default run
@pytest.mark.slow
def test_cli_scheduler_local_2_writes_the_same_file(field, model, tmp_path):
    checkpoint = model.save(tmp_path / "model.pt")
    common = [
        "--input",
        default_sample_path(),
        "--var",
        "t2m",
        "--mask",
        "random:0.7",
        "--checkpoint",
        checkpoint,
        "--period",
        f"{IMPUTED.start}:{IMPUTED.stop}",
        "--chunk-size",
        CHUNK,
        "--samples",
        4,
        "--quiet",
    ]
    runs = {}
    for name, extra in (("alone", []), ("cluster", ["--scheduler", "local:2"])):
        out = tmp_path / f"{name}.nc"
        res = subprocess.run(
            EXE + [str(a) for a in common + ["--output", out] + extra],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert res.returncode == 0, res.stderr[-2000:]
        runs[name] = (out, res.stdout)
    assert "2 worker(s), 2 thread(s)" in runs["cluster"][1] and "worker(s)" not in runs["alone"][1]
    with xr.open_dataset(runs["alone"][0]) as alone, xr.open_dataset(runs["cluster"][0]) as spread:
        assert alone.sizes["time"] == 10 and (alone.observed == 0).any()
        assert _same_output(alone.load(), spread.load())


@pytest.mark.parametrize(
    "scheduler, message",
    [
        ("local:0", "--scheduler local:N needs N >= 1"),
        ("tcp://no-port", "--scheduler must be local:N"),
    ],
)
def test_bad_scheduler_is_one_line_and_writes_nothing(tmp_path, scheduler, message):
    out = tmp_path / "out.nc"
    res = subprocess.run(
        EXE
        + ["--input", str(default_sample_path()), "--output", str(out), "--scheduler", scheduler],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert res.returncode == 2
    assert (
        res.stderr.strip().count("\n") == 0
        and message in res.stderr
        and "Traceback" not in res.stderr
    )
    assert not out.exists()


@pytest.mark.slow
def test_no_scheduler_at_the_address_is_one_line(tmp_path):
    """Nothing listens on 127.0.0.1:9: refused after the connection timeout (10 s).

    Nothing is written.
    """
    out = tmp_path / "out.nc"
    args = [
        "--input",
        str(default_sample_path()),
        "--output",
        str(out),
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--quiet",
    ]
    res = subprocess.run(
        EXE + args, check=False, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert res.returncode == 2
    assert "no dask scheduler answered" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
