"""`manifold-aps export`: an inference copy of a checkpoint samples what the checkpoint samples.

The copy keeps the weights it samples with and the self-description, drops the optimizer and EMA
state, cannot resume training, and never overwrites a file without --overwrite.
"""

import numpy as np
import pytest
import torch
from conftest import TINY_PRIOR, refused, run_cli

from manifold_aps.cli import main
from manifold_aps.operators import Mask
from manifold_aps.posterior.engines import load_engine
from manifold_aps.priors.train import load_prior


@pytest.fixture(scope="module")
def runs(grid_runs):
    """The shared tiny prior (with EMA) and APS runs, and their exports beside them."""
    root = grid_runs
    for run in ("prior", "aps"):
        res = run_cli("export", f"{run}/checkpoint.pt", "--out", f"{run}.pt", cwd=root)
        assert res.returncode == 0, res.stderr
        assert f"wrote {run}.pt" in res.stdout
    return root


def test_the_copy_is_smaller_and_samples_the_same(runs):
    # no optimizer state (the engine's copy still carries the prior's weights)
    for run, share in (("prior", 0.6), ("aps", 0.9)):
        full, copy = runs / run / "checkpoint.pt", runs / f"{run}.pt"
        assert copy.stat().st_size < share * full.stat().st_size
        state = torch.load(copy, weights_only=True)
        assert state["optimizer"] is None and state["ema"] is None and state["ema_state"] is None
        assert state["data"]["variable"] == "z"
    # the prior: the copy's weights are the run's EMA weights (what load_prior uses)
    a, b = load_prior(runs / "prior" / "checkpoint.pt"), load_prior(runs / "prior.pt")
    x, t = torch.randn(3, a.domain.num_nodes, 1), torch.full((3,), 0.4)
    with torch.no_grad():
        torch.testing.assert_close(a.score(x, t), b.score(x, t), rtol=0, atol=0)
        raw = load_prior(runs / "prior" / "checkpoint.pt", ema=False)
        assert not torch.equal(b.score(x, t), raw.score(x, t))  # not the raw weights
    # the engine: bit for bit the same samples for the same seed
    full, _, _ = load_engine(runs / "aps" / "checkpoint.pt")
    copy, _, _ = load_engine(runs / "aps.pt")
    nodes = full.domain.num_nodes
    mask = torch.from_numpy(np.random.default_rng(0).random((2, nodes, 1)) < 0.3)
    y = torch.randn(2, nodes, 1) * mask
    with torch.no_grad():
        s1 = full.sample(y, Mask(full.domain, mask), 4, rng=torch.Generator().manual_seed(3))
        s2 = copy.sample(y, Mask(copy.domain, mask), 4, rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)


def test_the_copy_cannot_resume_training(runs, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes((runs / "prior.pt").read_bytes())
    (tmp_path / "z500.nc").write_bytes((runs / "z500.nc").read_bytes())
    res = run_cli(
        "train-prior",
        "--input",
        "z500.nc",
        "--var",
        "z",
        "--select",
        "level=500",
        "--out",
        "run",
        *TINY_PRIOR,
        "--ema",
        "0.9",
        "--steps",
        "4",
        "--resume",
        cwd=tmp_path,
    )
    refused(res, "inference copy", "export")


def test_export_never_overwrites_without_being_told(runs, tmp_path, capsys):
    def refused_here(argv, *words):
        assert main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines

    target = tmp_path / "kept.pt"
    target.write_bytes(b"a user's file")
    refused_here(["export", str(runs / "prior" / "checkpoint.pt"), "--out", str(target)], "exists")
    assert target.read_bytes() == b"a user's file"
    copy = str(runs / "aps.pt")
    refused_here(["export", copy, "--out", copy, "--overwrite"], "the checkpoint itself")
    refused_here(["export", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "x.pt")], "absent")
    assert not (tmp_path / "x.pt").exists()
    assert main(["export", str(runs / "prior.pt"), "--out", str(target), "--overwrite"]) == 0
    assert torch.load(target, weights_only=True)["kind"] == "score-prior"
