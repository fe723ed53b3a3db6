"""Shared fixtures: real-data folder, seeded generators, float64, an isolated eigen cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MANIFOLD_APS_TEST_SEED", "0"))


def data_dir() -> Path:
    """`$MANIFOLD_APS_DATA`, default `../shared/data` beside the repository."""
    return Path(os.environ.get("MANIFOLD_APS_DATA", REPO.parent / "shared" / "data"))


def pytest_configure(config):
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    os.environ.setdefault("MANIFOLD_APS_CACHE", str(REPO / ".cache"))


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
