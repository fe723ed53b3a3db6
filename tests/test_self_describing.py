"""Checkpoints describe themselves: they load without their dataset or the prior's file.

A prior and an engine trained on a user's own (unregistered) dataset load in a fresh process
without that dataset or the prior's file, and `impute` runs them.

Issue 16: before, such checkpoints named their dataset (`dataset must be one of [...], got
'my-field'`) and the absolute path of their prior.
"""

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import run_cli

from manifold_aps.datasets import PriorDataset, SignalsNotStored, TensorSource
from manifold_aps.flows import FlowConfig
from manifold_aps.geometry import SphereGrid
from manifold_aps.nn import ScoreNetConfig
from manifold_aps.posterior.aps import APSConfig
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.priors import GaussianPrior
from manifold_aps.priors.train import load_prior, train_prior
from manifold_aps.training import CheckpointError, TrainConfig

LAT, LON = np.arange(60.0, 51.0, -1.0), np.arange(-8.0, 4.0, 1.0)  # 9 x 12 regional grid
TINY_NET = ScoreNetConfig(channels=(8,), num_modes=8, num_positional=2)
CFG = TrainConfig(
    steps=2, batch_size=2, lr=1e-3, warmup=1, checkpoint_every=2, validate_every=0, log_every=1
)
APS = APSConfig(
    flow=FlowConfig(couplings=1, width=8, depth=1, num_modes=8), cg_iterations=2, dense_limit=0
)


def _my_field() -> PriorDataset:
    """A user's field on a grid of their own, registered nowhere."""
    domain = SphereGrid(LAT, LON)
    g = torch.Generator().manual_seed(0)
    fields = (
        280.0
        + 3.0 * GaussianPrior(domain, variance=1.0, length_scale=0.3).sample(40, rng=g).float()
    )
    return PriorDataset(
        "my-field",
        domain,
        TensorSource(fields[:32], fields[32:]),
        fields[32:],
        "K",
        "a user's own t2m fields",
        extra={"variable": "t2m"},
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A prior and an APS engine of `my-field`; the prior's folder then moved away."""
    root = tmp_path_factory.mktemp("own")
    ds = _my_field()
    train_prior(ds, root / "prior", CFG, net=TINY_NET, progress=False)
    train_engine(
        "aps", ds, root / "prior" / "checkpoint.pt", root / "aps", CFG, settings=APS, progress=False
    )
    shutil.move(root / "prior", root / "moved")
    return root, ds


SAMPLE = textwrap.dedent(
    """
    import sys, torch
    from manifold_aps.posterior.engines import load_engine
    engine, ds, prior = load_engine(sys.argv[1])
    y = torch.load(sys.argv[2])
    from manifold_aps.operators import Mask
    op = Mask(ds.domain, y["mask"])
    torch.save({"samples": engine.sample(y["y"], op, 3, rng=torch.Generator().manual_seed(5)),
                "name": ds.name, "units": ds.units, "variable": ds.extra["variable"]}, sys.argv[3])
    """
)


def test_an_engine_loads_without_its_dataset_or_its_prior_file(trained, tmp_path):
    root, ds = trained
    engine, described, prior = load_engine(root / "aps" / "checkpoint.pt")
    assert isinstance(described.source, SignalsNotStored) and described.name == "my-field"
    assert described.domain.fingerprint == ds.domain.fingerprint and described.units == "K"
    assert described.channels == 1 and described.extra["variable"] == "t2m"
    mask = torch.rand(1, ds.domain.num_nodes, 1, generator=torch.Generator().manual_seed(1)) > 0.6
    y = ds.test[:1].double() * mask
    torch.save({"y": y, "mask": mask}, tmp_path / "y.pt")
    # a fresh process: no dataset registered, the prior's file gone from where it was trained
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            SAMPLE,
            str(root / "aps" / "checkpoint.pt"),
            str(tmp_path / "y.pt"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    out = torch.load(tmp_path / "out.pt")
    assert (out["name"], out["units"], out["variable"]) == ("my-field", "K", "t2m")
    from manifold_aps.operators import Mask

    with torch.no_grad():
        here = engine.sample(y, Mask(ds.domain, mask), 3, rng=torch.Generator().manual_seed(5))
    torch.testing.assert_close(out["samples"], here, rtol=0, atol=0)
    # the prior loads on its own too, and refuses another grid naming both
    assert load_prior(root / "moved" / "checkpoint.pt").domain.fingerprint == ds.domain.fingerprint
    with pytest.raises(
        CheckpointError, match=r"SphereGrid.*not on SphereGrid.*another mesh or grid"
    ):
        load_prior(root / "moved" / "checkpoint.pt", SphereGrid(LAT[:-1], LON))


def test_impute_runs_a_user_trained_engine_from_the_command_line(trained, tmp_path):
    root, ds = trained
    truth = ds.test[0, :, 0].numpy().reshape(LAT.size, LON.size)
    field = np.where(np.random.default_rng(2).random(truth.shape) < 0.5, np.nan, truth)
    da = xr.DataArray(
        field[None],
        dims=("time", "latitude", "longitude"),
        name="t2m",
        attrs={"units": "K"},
        coords={
            "time": np.array(["2024-01-01T00"], dtype="datetime64[ns]"),
            "latitude": LAT,
            "longitude": LON,
        },
    )
    da.to_dataset().to_netcdf(tmp_path / "field.nc")
    for engine, ckpt in (
        ("aps", root / "aps" / "checkpoint.pt"),
        ("dps", root / "moved" / "checkpoint.pt"),
    ):
        out = tmp_path / f"{engine}.nc"
        extra = ["--dps-steps", "3"] if engine == "dps" else []
        res = run_cli(
            "impute",
            "--input",
            tmp_path / "field.nc",
            "--engine",
            engine,
            "--checkpoint",
            ckpt,
            "--samples",
            "2",
            "--output",
            out,
            "--quiet",
            *extra,
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr
        with xr.open_dataset(out) as result:
            seen = np.isfinite(field)
            np.testing.assert_array_equal(result.t2m_mean.values[0][seen], field[seen])
            assert np.isfinite(result.t2m_mean.values).all()


def test_an_engine_checkpoint_of_the_older_format_loads_and_resumes(tmp_path):
    """A checkpoint written before checkpoints described themselves still loads and resumes.

    Its prior is an absolute path, with no domain spec, data or embedded prior; it loads with its
    dataset and resumes.
    """
    from manifold_aps.posterior.engines import load_engine, train_engine

    ds = _my_field()
    train_prior(ds, tmp_path / "prior", CFG, net=TINY_NET, progress=False)
    prior = tmp_path / "prior" / "checkpoint.pt"
    train_engine("aps", ds, prior, tmp_path / "aps", CFG, settings=APS, progress=False)
    path = tmp_path / "aps" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("domain_spec", "data", "prior"):
        del ckpt[key]
    ckpt["model_config"]["prior"] = str(prior.resolve())
    torch.save(ckpt, path)
    engine, loaded_ds, _ = load_engine(
        path, ds
    )  # the older way: with its dataset, the prior from its path
    assert loaded_ds is ds
    more = TrainConfig(**{**CFG.__dict__, "steps": 3})
    _, result = train_engine(
        "aps", ds, prior, tmp_path / "aps", more, settings=APS, progress=False, resume=True
    )
    assert result.step == 3
    resumed = torch.load(path, weights_only=True)
    assert resumed["model_config"]["prior"] == str(prior.resolve()) and "domain_spec" in resumed
