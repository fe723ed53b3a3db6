"""The CLI refuses what would lose data or mislead (issue 14, items 6-8, 10, 11).

It refuses with one line and exit code 2. Every case runs `manifold-aps` from a subprocess as a
user does, on a copy of the shipped ERA5 sample and tiny models; refusals come before any work, so
each run costs about one interpreter start.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import xarray as xr
from conftest import refused, run_cli

from climate import open_era5
from climate.demo import default_sample_path
from climate.impute import impute
from climate.masks import missing_mask
from climate.model import GaussianImputer, _summary
from climate.workflow import ImputeRequest, _with_noise_std, run_impute
from manifold_aps.cli import main
from manifold_aps.datasets import GaussianSource, PriorDataset
from manifold_aps.geometry import HealpixSphere
from manifold_aps.nn import ScoreNetConfig
from manifold_aps.priors import GaussianPrior
from manifold_aps.priors.train import train_prior
from manifold_aps.training import CheckpointError, TrainConfig, load_checkpoint, read_weights_file

PERIOD = ["--period", "2019-03-28T00:2019-03-28T01"]


@pytest.fixture
def sample(tmp_path) -> Path:
    """A copy of the shipped ERA5 t2m sample (UK, March 2019) in tmp_path."""
    path = tmp_path / "in.nc"
    shutil.copy(default_sample_path(), path)
    return path


@pytest.fixture(scope="module")
def gaussian_model(tmp_path_factory) -> Path:
    """A gaussian model of the sample (noise std 0.1 K) fitted to its first 8 hours, saved.

    Fitting takes a few seconds.
    """
    train = open_era5(default_sample_path(), "t2m").t2m.isel(time=slice(0, 8))
    return GaussianImputer.fit(train, noise_std=0.1).save(
        tmp_path_factory.mktemp("model") / "gauss.pt"
    )


# ---------------------------------------------------------------------------------------- item 6
def test_one_sample_is_refused_for_an_engine_whose_std_comes_from_samples(sample, tmp_path):
    fake = tmp_path / "prior.pt"
    fake.write_bytes(b"never read")
    res = run_cli(
        "impute",
        "--input",
        sample,
        "--engine",
        "dps",
        "--checkpoint",
        fake,
        "--samples",
        "1",
        *PERIOD,
        "--output",
        tmp_path / "out.nc",
        "--quiet",
        cwd=tmp_path,
    )
    refused(res, "--samples 1", "dps", "2 or more")
    assert not (tmp_path / "out.nc").exists()
    with pytest.raises(ValueError, match="needs at least 2"):  # the API: no NaN std either
        _summary(torch.zeros(1, 2, 5, 1))
    assert torch.equal(_summary(torch.ones(3, 2, 5, 1)).std, torch.zeros(2, 5, 1))


def test_noise_std_with_a_saved_gaussian_model_is_used_and_said(sample, tmp_path, gaussian_model):
    out = tmp_path / "out.nc"
    res = run_cli(
        "impute",
        "--input",
        sample,
        "--checkpoint",
        gaussian_model,
        "--noise-std",
        "0.5",
        "--mask",
        "random:0.5",
        "--samples",
        "2",
        *PERIOD,
        "--output",
        out,
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "likelihood noise std 0.5 K from --noise-std (the saved model has 0.1" in res.stdout
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert "noise_std 0.5 K" in ds.attrs["history"]
    # a distilled engine cannot change the noise it was trained for: refused, not ignored
    distilled = type("Distilled", (), {"engine": "aps", "noise_std": 0.1, "units": "K"})()
    request = ImputeRequest(input="x.nc", engine="aps", checkpoint="flow.pt", noise_std=0.5)
    with pytest.raises(ValueError, match="distilled for a noise std of 0.1 K"):
        _with_noise_std(distilled, request, print)


def _tiny_dataset():
    domain = HealpixSphere(2)
    prior = GaussianPrior(domain, variance=1.0, length_scale=0.6)
    return PriorDataset(
        "tiny", domain, GaussianSource(prior, num_val=8), torch.zeros(0, 48, 1), "1", "test", prior
    )


def test_resume_refuses_changed_training_settings_and_records_allowed_ones(tmp_path):
    ds, net = _tiny_dataset(), ScoreNetConfig(channels=(8,), num_modes=12, num_positional=2)
    base = {
        "steps": 2,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup": 1,
        "checkpoint_every": 2,
        "validate_every": 0,
        "log_every": 1,
    }
    train_prior(ds, tmp_path, TrainConfig(**base), net=net, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    for change, said in [
        ({"seed": 1}, "seed: 0 in the checkpoint, 1 now"),
        ({"batch_size": 4, "lr": 2e-3}, "batch_size: 8 in the checkpoint, 4 now; lr: 0.001"),
    ]:
        with pytest.raises(CheckpointError, match=said):
            train_prior(
                ds,
                tmp_path,
                TrainConfig(**{**base, "steps": 4, **change}),
                net=net,
                progress=False,
                resume=True,
            )
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    _, result = train_prior(
        ds, tmp_path, TrainConfig(**{**base, "steps": 4}), net=net, progress=False, resume=True
    )
    summary = json.loads((tmp_path / "train.json").read_text())
    assert result.step == 4 and summary["resumed"] == {"from_step": 2, "changed": {"steps": [2, 4]}}


# ---------------------------------------------------------------------------------------- item 7
@pytest.mark.parametrize("given", ["in.nc", "link.nc"], ids=["same-path", "through-a-symlink"])
def test_an_output_that_is_the_input_is_refused(sample, tmp_path, gaussian_model, given):
    (tmp_path / "link.nc").symlink_to(sample)
    before = sample.read_bytes()
    res = run_cli(
        "impute",
        "--input",
        given,
        "--checkpoint",
        gaussian_model,
        *PERIOD,
        "--output",
        sample,
        "--quiet",
        cwd=tmp_path,
    )
    refused(res, "--output", f"is the input {given}", "would replace that file")
    assert sample.read_bytes() == before


@pytest.mark.parametrize(
    "given,output,plot,said",
    [
        (
            "i*.nc",
            "./in.nc",
            None,
            "--output in.nc is the input in.nc",
        ),  # a glob that includes the output
        ("in.nc", "out.nc", "link.nc", "--plot link.nc is the input"),
        ("in.nc", "out.nc", "out.nc", "--plot out.nc is --output out.nc"),
    ],
)
def test_outputs_that_are_inputs_or_each_other_are_refused_before_any_work(
    sample, tmp_path, gaussian_model, monkeypatch, given, output, plot, said
):
    (tmp_path / "link.nc").symlink_to(sample)
    monkeypatch.chdir(tmp_path)
    before = sample.read_bytes()
    request = ImputeRequest(
        input=given, checkpoint=str(gaussian_model), output=output, plot=plot, progress=False
    )
    with pytest.raises(ValueError, match=re.escape(said)):
        run_impute(request, log=lambda line: pytest.fail(f"work was done: {line}"))
    assert sample.read_bytes() == before and not (tmp_path / "out.nc").exists()


# ---------------------------------------------------------------------------------------- item 8
DISTILL = ["distill", "--dataset", "gaussian-healpix8", "--prior", "exact"]
TRAIN_PRIOR = [
    "train-prior",
    "--dataset",
    "gaussian-healpix8",
    "--channels",
    "8",
    "--modes",
    "8",
    "--batch-size",
    "4",
]


@pytest.mark.parametrize("command", [TRAIN_PRIOR, DISTILL], ids=["train-prior", "distill"])
def test_an_existing_run_is_not_replaced_without_resume_or_overwrite(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint.pt", "log.csv"):
        (run / name).write_text(f"precious {name}")
    res = run_cli(*command, "--steps", "1", "--out", run, "--quiet", cwd=tmp_path)
    refused(res, "--out", "already holds a run", "--resume", "--overwrite")
    assert [(run / n).read_text() for n in ("checkpoint.pt", "log.csv")] == [
        "precious checkpoint.pt",
        "precious log.csv",
    ]


def test_overwrite_replaces_a_run_and_is_documented(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("old log")
    res = run_cli(
        *TRAIN_PRIOR, "--steps", "1", "--out", run, "--overwrite", "--quiet", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert (
        load_checkpoint(run / "checkpoint.pt")["step"] == 1
        and "old log" not in (run / "log.csv").read_text()
    )
    with pytest.raises(SystemExit):
        main(["train-prior", "--help"])
    assert "--overwrite" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------- item 10
def test_a_truncated_netcdf_input_is_one_line(sample, tmp_path, gaussian_model):
    truncated = tmp_path / "truncated.nc"
    truncated.write_bytes(sample.read_bytes()[:100_000])
    res = run_cli(
        "impute",
        "--input",
        truncated,
        "--checkpoint",
        gaussian_model,
        "--output",
        tmp_path / "out.nc",
        "--quiet",
        cwd=tmp_path,
    )
    refused(res, "cannot read --input", "truncated.nc", "truncated file")


def test_an_output_that_is_a_folder_is_refused(sample, tmp_path, gaussian_model):
    (tmp_path / "outdir").mkdir()
    res = run_cli(
        "impute",
        "--input",
        sample,
        "--checkpoint",
        gaussian_model,
        *PERIOD,
        "--output",
        "outdir",
        "--quiet",
        cwd=tmp_path,
    )
    refused(res, "--output outdir is a folder")
    assert list((tmp_path / "outdir").iterdir()) == []


def test_a_pickle_that_is_not_weights_is_named_without_unpickling_advice(sample, tmp_path):
    code = tmp_path / "model.pt"
    code.write_bytes(
        pickle.dumps({"model": Counter})
    )  # a reference to code: refused by weights_only
    res = run_cli(
        "impute",
        "--input",
        sample,
        "--checkpoint",
        code,
        *PERIOD,
        "--output",
        tmp_path / "out.nc",
        "--quiet",
        cwd=tmp_path,
    )
    line = refused(res, "model.pt is not a manifold-aps checkpoint (we never unpickle code)")
    assert "weights_only" not in res.stderr + line
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(b"PK\x03\x04" + b"\0" * 20)
    for path in (
        code,
        truncated,
    ):  # the training loader too (train-prior --resume, distill --prior, sample)
        with pytest.raises(CheckpointError, match=f"{path.name} is not a manifold-aps checkpoint"):
            load_checkpoint(path)


def test_an_os_error_names_the_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = (
        tmp_path / "afile" / "run"
    )  # main() in this process: the same handler, no interpreter start
    assert main([*TRAIN_PRIOR, "--steps", "1", "--out", str(out), "--quiet"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"manifold-aps train-prior: error: {out}: Not a directory"
    )


# ---------------------------------------------------------------------------------------- item 11
@pytest.mark.parametrize(
    "flag,value,said",
    [
        ("--chunk-size", "-3", "must be a positive integer, got '-3'"),
        ("--noise-std", "-1", "must be a positive number, got '-1'"),
    ],
)
def test_bad_numbers_are_named_as_given(tmp_path, flag, value, said):
    res = run_cli("impute", "--input", "in.nc", "--output", "out.nc", flag, value, cwd=tmp_path)
    refused(res, f"argument {flag}", said)


def test_sample_refuses_one_sample_before_opening_anything(tmp_path):
    """`sample --n 1` wrote a NaN std; now it is refused (exit 2) before the checkpoint is read."""
    res = run_cli(
        "sample", "--checkpoint", "missing.pt", "--out", "out.npz", "--n", "1", cwd=tmp_path
    )
    refused(res, "argument --n", "must be at least 2 (the std is that of the samples), got '1'")
    assert not (tmp_path / "out.npz").exists()


def test_repeated_input_times_are_said_to_be_the_inputs(sample, tmp_path, gaussian_model):
    repeated = tmp_path / "repeated.nc"
    with xr.open_dataset(sample) as ds:
        ds.isel(time=[0, 1, 1, 2]).load().to_netcdf(repeated)
    res = run_cli(
        "impute",
        "--input",
        repeated,
        "--checkpoint",
        gaussian_model,
        "--output",
        tmp_path / "out.nc",
        "--quiet",
        cwd=tmp_path,
    )
    refused(res, "the input has repeated 'time' values", "2019-03-01 01:00:00")


def test_an_empty_time_selection_is_named(gaussian_model):
    from climate.model import load_model

    da = open_era5(default_sample_path(), "t2m").t2m.sel(time=slice("2020-01-01", None))
    with pytest.raises(ValueError, match="no time steps selected"):
        impute(da, missing_mask(da), load_model(gaussian_model), progress=False)


def test_a_negative_noise_std_is_reported_as_given_through_the_api(gaussian_model):
    state = read_weights_file(gaussian_model)
    with pytest.raises(ValueError, match=r"noise_std must be a positive number of K, got -1\.0$"):
        GaussianImputer.from_state(
            {**state, "noise_std": -1.0}
        )  # not the value scaled to standardised units
    with pytest.raises(ValueError, match="--noise-std must be a positive number .* got -1$"):
        ImputeRequest(input="in.nc", noise_std=-1.0)
