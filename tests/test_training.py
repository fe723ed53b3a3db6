"""The shared Trainer.

Bit-identical resume, atomic checkpoints, domain checks, interruption, DDP.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from manifold_aps.datasets import GaussianSource, PriorDataset
from manifold_aps.geometry import HealpixSphere
from manifold_aps.nn import ScoreNetConfig
from manifold_aps.priors import GaussianPrior
from manifold_aps.priors.train import load_prior, train_prior
from manifold_aps.training import CheckpointError, TrainConfig, load_checkpoint, step_generator

NET = ScoreNetConfig(channels=(8, 16), num_modes=12, num_positional=2)
VENV_BIN = Path(sys.executable).parent


def _dataset():
    domain = HealpixSphere(2)
    prior = GaussianPrior(domain, variance=1.0, length_scale=0.6)
    return PriorDataset(
        "tiny", domain, GaussianSource(prior, num_val=8), torch.zeros(0, 48, 1), "1", "test", prior
    )


def _config(**kw):
    base = dict(
        steps=12, batch_size=8, lr=1e-3, warmup=2, checkpoint_every=4, validate_every=4, log_every=2
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_continues_bit_for_bit(tmp_path):
    ds = _dataset()
    straight, res_a = train_prior(ds, tmp_path / "a", _config(), net=NET, progress=False)
    _, res_half = train_prior(ds, tmp_path / "b", _config(), net=NET, progress=False, stop_after=6)
    assert res_half.step == 6
    resumed, res_b = train_prior(
        ds, tmp_path / "b", _config(), net=NET, progress=False, resume=True
    )
    assert res_b.step == 12
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ca = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    cb = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k])
    rows_a = list(csv.DictReader(open(tmp_path / "a" / "log.csv")))
    rows_b = list(csv.DictReader(open(tmp_path / "b" / "log.csv")))
    assert [(r["step"], r["loss"]) for r in rows_a] == [(r["step"], r["loss"]) for r in rows_b]


def test_checkpoint_refuses_other_domain_and_kind(tmp_path):
    ds = _dataset()
    train_prior(ds, tmp_path, _config(steps=2), net=NET, progress=False)
    path = tmp_path / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)  # plain types and tensors only
    assert ckpt["fingerprint"] == ds.domain.fingerprint and ckpt["step"] == 2
    load_prior(path, HealpixSphere(2))  # same geometry, new object: fine
    with pytest.raises(CheckpointError, match="trained on domain HealpixSphere\\(nside=2"):
        load_prior(path, HealpixSphere(4))
    with pytest.raises(CheckpointError, match="expected a 'aps-flow'"):
        load_checkpoint(path, kind="aps-flow")
    with pytest.raises(CheckpointError, match="model .* differs"):
        train_prior(
            ds,
            tmp_path,
            _config(steps=4),
            net=ScoreNetConfig(channels=(8,), num_modes=12, num_positional=2),
            progress=False,
            resume=True,
        )
    bogus = tmp_path / "bogus.pt"
    torch.save({"hello": 1}, bogus)
    with pytest.raises(CheckpointError, match="not a manifold-aps checkpoint"):
        load_checkpoint(bogus)


def test_step_generator_is_a_function_of_seed_and_step():
    a = torch.rand(3, generator=step_generator(1, 5))
    assert torch.equal(a, torch.rand(3, generator=step_generator(1, 5)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(1, 6)))
    assert not torch.equal(a, torch.rand(3, generator=step_generator(2, 5)))


def test_config_validation():
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="must be positive"):
        TrainConfig(steps=0)
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0)
    assert cfg.learning_rate(5) == pytest.approx(0.5)
    assert cfg.learning_rate(10) == pytest.approx(1.0)
    assert cfg.learning_rate(100) == pytest.approx(0.1)


def _cli(*args, cwd, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [str(VENV_BIN / "manifold-aps"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


TINY = [
    "--dataset",
    "gaussian-healpix8",
    "--channels",
    "8",
    "16",
    "--modes",
    "16",
    "--batch-size",
    "8",
    "--quiet",
]


def test_interrupted_cli_run_saves_and_resumes(tmp_path):
    out = tmp_path / "run"
    proc = _cli(
        "train-prior",
        *TINY,
        "--steps",
        "100000",
        "--out",
        str(out),
        "--log-every",
        "1",
        "--checkpoint-every",
        "100000",
        cwd=tmp_path,
    )
    log = out / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    reached = load_checkpoint(out / "checkpoint.pt")["step"]
    assert 3 <= reached < 100000
    proc = _cli(
        "train-prior",
        *TINY,
        "--steps",
        str(reached + 3),
        "--out",
        str(out),
        "--resume",
        cwd=tmp_path,
    )
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert load_checkpoint(out / "checkpoint.pt")["step"] == reached + 3
    rows = list(csv.DictReader(open(log)))
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == reached + 3
    # the time column is the run's total: the resumed rows continue from the interrupted one's
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds) and seconds[-1] > seconds[steps.index(reached)] > 0


def test_torchrun_two_processes_match_one(tmp_path):
    args = [*TINY, "--steps", "6", "--log-every", "2", "--ema", "0.9"]
    single = _cli("train-prior", *args, "--out", str(tmp_path / "one"), cwd=tmp_path)
    assert single.wait(timeout=300) == 0, single.stderr.read()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [
            str(VENV_BIN / "torchrun"),
            "--standalone",  # a free port of its own, not 29500 (another job may hold it)
            "--nproc_per_node",
            "2",
            "-m",
            "manifold_aps.cli",
            "train-prior",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # a failing worker's own message comes first, torchrun's summary of it last
    assert ddp.returncode == 0, ddp.stderr[:4000] + "\n[...]\n" + ddp.stderr[-1500:]
    a = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-6), k
    log_a = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "one" / "log.csv"))]
    log_b = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "two" / "log.csv"))]
    assert log_a == pytest.approx(log_b, rel=1e-5)
