"""Several variables or levels as the channels of one prior (issue 16).

`train-prior --input f.nc --var t2m msl` trains one prior on both (each standardised by its own
mean and std), `distill` needs nothing more, and `impute --var t2m msl` imputes them jointly;
variables in another order, missing or in other units are one line, exit 2, nothing written.
"""

import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY_APS, TINY_PRIOR, refused, run_cli

from climate.datasets import grid_file_dataset
from climate.impute import impute
from climate.model import Channel, ScoreImputer, load_model
from manifold_aps.geometry import SphereGrid

# the shared tiny settings, trained a little longer (argparse: the last value given wins)
TRAIN_PRIOR = [*TINY_PRIOR, "--steps", "30", "--batch-size", "4", "--checkpoint-every", "30"]
TRAIN_APS = [*TINY_APS, "--steps", "5"]
LAT = np.linspace(78.75, -78.75, 8)  # a global 8 x 16 grid (22.5 degrees)
LON = np.arange(0.0, 360.0, 22.5)
STEPS = 40


def _times(steps: int) -> np.ndarray:
    start = np.datetime64("2020-01-01T00", "ns")
    return start + np.arange(steps) * np.timedelta64(6, "h")


def _weather(steps: int, seed: int, *, msl_units: str = "Pa") -> xr.Dataset:
    """t2m (K) and msl (Pa), correlated: a common anomaly pattern plus a little noise each."""
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(LAT)[None, :, None]
    lon = np.deg2rad(LON)[None, None, :]
    a, b = rng.normal(size=(2, steps, 1, 1))
    anomaly = np.cos(lat) * (a * np.cos(lon) + b * np.sin(lon))  # (steps, nlat, nlon)
    t2m = 250 + 40 * np.cos(lat) ** 2 + 3 * anomaly + rng.normal(0, 0.3, anomaly.shape)
    msl = 101000 - 800 * anomaly + rng.normal(0, 50, anomaly.shape)
    if msl_units == "hPa":
        msl = msl / 100
    coords = {"time": _times(steps), "latitude": LAT, "longitude": LON}
    dims = ("time", "latitude", "longitude")
    return xr.Dataset(
        {
            "t2m": xr.DataArray(t2m.astype(np.float32), dims=dims, attrs={"units": "K"}),
            "msl": xr.DataArray(msl.astype(np.float32), dims=dims, attrs={"units": msl_units}),
        },
        coords=coords,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A prior of t2m and msl trained from the command line, and an APS flow distilled from it."""
    root = tmp_path_factory.mktemp("channels")
    _weather(STEPS, 0).to_netcdf(root / "f.nc")
    res = run_cli(
        "train-prior",
        "--input",
        "f.nc",
        "--var",
        "t2m",
        "msl",
        "--out",
        "prior",
        *TRAIN_PRIOR,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("distill", "--prior", "prior/checkpoint.pt", "--out", "aps", *TRAIN_APS, cwd=root)
    assert res.returncode == 0, res.stderr
    return root


def _gappy_day(tmp_path, **kwargs) -> xr.Dataset:
    """Two time steps with NaN in other cells of t2m than of msl, written to day.nc."""
    day = _weather(2, 5, **kwargs)
    rng = np.random.default_rng(1)
    day["t2m"] = day.t2m.where(rng.random(day.t2m.shape) > 0.3)
    day["msl"] = day.msl.where(rng.random(day.msl.shape) > 0.3)
    day.to_netcdf(tmp_path / "day.nc")
    return day


def _impute(tmp_path, *variables, extra=()):
    return run_cli(
        "impute",
        "--input",
        "day.nc",
        "--var",
        *variables,
        "--engine",
        "aps",
        "--checkpoint",
        tmp_path.parent / "aps" / "checkpoint.pt",
        "--samples",
        "3",
        "--output",
        "out.nc",
        "--quiet",
        *extra,
        cwd=tmp_path,
    )


def test_two_variables_train_distil_and_impute_jointly(runs, tmp_path):
    prior = torch.load(runs / "prior" / "checkpoint.pt", weights_only=True)
    assert prior["data"]["channels"] == 2
    assert prior["data"]["channel_fields"] == [
        {"variable": "t2m", "units": "K", "select": {}},
        {"variable": "msl", "units": "Pa", "select": {}},
    ]
    assert prior["data"]["source"]["args"]["var"] == ["t2m", "msl"]
    mean = prior["model"]["normalizer.mean"]  # each channel its own statistics
    assert 260 < mean[0] < 300 and 100_000 < mean[1] < 102_000
    engine = torch.load(runs / "aps" / "checkpoint.pt", weights_only=True)
    assert engine["model_config"]["channels"] == 2
    assert engine["data"]["channel_fields"] == prior["data"]["channel_fields"]

    work = runs / "impute-joint"
    work.mkdir()
    day = _gappy_day(work)
    res = _impute(work, "t2m", "msl", extra=("--mask", "random:0.5"))
    assert res.returncode == 0, res.stderr
    assert "scores over" in res.stdout and "msl" in res.stdout
    with xr.open_dataset(work / "out.nc") as out:
        for name in ("t2m", "msl"):
            seen = out[f"{name}_observed"].values == 1
            assert not seen[np.isnan(day[name].values)].any()  # its own NaN cells hidden
            np.testing.assert_array_equal(out[f"{name}_mean"].values[seen], day[name].values[seen])
            assert np.isfinite(out[f"{name}_mean"].values).all()
            assert (out[f"{name}_std"].values[~seen] > 0).all()
            assert out[f"{name}_samples"].shape == (3, 2, LAT.size, LON.size)
            assert out[f"{name}_mean"].attrs["units"] == day[name].attrs["units"]
        both = day.t2m.notnull().values & day.msl.notnull().values
        # a --mask random hides the same cells of every variable
        np.testing.assert_array_equal(out.t2m_observed.values[both], out.msl_observed.values[both])
        assert 0.3 < (out.t2m_observed.values[both] == 0).mean() < 0.7


def _impute_here(capsys, work, *variables, engine="aps"):
    """`manifold-aps impute` in this process (cheaper than a subprocess): its stderr, checked."""
    from manifold_aps.cli import main

    args = ["impute", "--input", str(work / "day.nc"), "--var", *variables, "--engine", engine]
    if engine != "gaussian":
        args += ["--checkpoint", str(work.parent / "aps" / "checkpoint.pt")]
    code = main([*args, "--output", str(work / "out.nc"), "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
    return err


def test_variables_in_another_order_missing_or_in_other_units_are_one_line(runs, capsys):
    work = runs / "impute-refused"
    work.mkdir()
    _gappy_day(work)
    refused(_impute(work, "msl", "t2m"), "jointly, in this order", "give --var t2m msl")
    assert "2 channel(s) [t2m (K), msl (Pa)]" in _impute_here(capsys, work, "t2m")
    assert "gaussian engine imputes one variable" in _impute_here(
        capsys, work, "t2m", "msl", engine="gaussian"
    )
    _gappy_day(work, msl_units="hPa")
    err = _impute_here(capsys, work, "t2m", "msl")
    assert "'msl' is in 'hPa'" in err and "expects 'Pa'" in err
    assert not (work / "out.nc").exists()


def _levels_file(path) -> xr.Dataset:
    rng = np.random.default_rng(3)
    levels = [500, 850, 1000]
    values = 250 + np.arange(3)[None, :, None, None] * 10 + rng.normal(0, 1, (6, 3, 8, 16))
    ds = xr.Dataset(
        {
            "t": xr.DataArray(
                values.astype(np.float32),
                dims=("time", "level", "latitude", "longitude"),
                attrs={"units": "K"},
            )
        },
        coords={"time": _times(6), "level": levels, "latitude": LAT, "longitude": LON},
    )
    ds.to_netcdf(path)
    return ds


def test_levels_of_a_variable_are_channels_in_the_order_given(tmp_path):
    ds = _levels_file(tmp_path / "t.nc")
    data = grid_file_dataset(tmp_path / "t.nc", "t", channels_from="level=850,500")
    assert data.channels == 2
    assert data.extra["channel_fields"] == [
        {"variable": "t", "units": "K", "select": {"level": 850}},
        {"variable": "t", "units": "K", "select": {"level": 500}},
    ]
    x = torch.cat([data.source.train, data.source.val])  # (S, N, C)
    expected = ds.t.sel(level=[850, 500]).transpose("time", "latitude", "longitude", "level")
    np.testing.assert_array_equal(x.numpy(), expected.values.reshape(6, -1, 2))
    assert grid_file_dataset(tmp_path / "t.nc", "t", channels_from="level").channels == 3
    with pytest.raises(ValueError, match="level has no value 700"):
        grid_file_dataset(tmp_path / "t.nc", "t", channels_from="level=700")
    with pytest.raises(ValueError, match="--channels-from takes DIM"):
        grid_file_dataset(tmp_path / "t.nc", "t", channels_from="level=")


class _Prior:
    """A stand-in sampler: draws the observed mean of each channel plus noise, `(n, B, N, C)`."""

    def sample(self, y, operator, n, rng=None):
        mask = operator.range_mask.double()
        fill = (y * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)
        noise = torch.randn((n, *y.shape), generator=rng, dtype=torch.float64)
        return fill.expand_as(y)[None] + noise


def test_an_imputation_of_levels_keeps_the_level_dimension(tmp_path):
    ds = _levels_file(tmp_path / "t.nc")
    channels = (Channel("t", "K", (("level", 850),)), Channel("t", "K", (("level", 500),)))
    model = ScoreImputer(
        "t", "K, K", SphereGrid(LAT, LON), 0.1, _Prior(), "aps", "stand-in", channels
    )
    gappy = ds.t.where(np.random.default_rng(0).random(ds.t.shape) > 0.4)
    out = impute(
        [gappy.sel(level=850), gappy.sel(level=500)], None, model, n_samples=2, progress=False
    )
    assert out.t_mean.dims == ("time", "level", "latitude", "longitude")
    assert out.t_samples.dims == ("sample", "time", "level", "latitude", "longitude")
    assert out.level.values.tolist() == [850, 500]
    given = gappy.sel(level=[850, 500]).values
    seen = out.t_observed.values == 1
    np.testing.assert_array_equal(seen, ~np.isnan(given))
    np.testing.assert_array_equal(out.t_mean.values[seen], given[seen])
    with pytest.raises(
        ValueError, match=r"in this order; got 2: \[t\[level=500\].*--channels-from level=850,500"
    ):
        impute([gappy.sel(level=500), gappy.sel(level=850)], None, model, progress=False)


def test_a_single_variable_checkpoint_without_channel_fields_still_loads(tmp_path):
    """A checkpoint written before channels were described loads with one channel, as before."""
    from manifold_aps.nn import ScoreNetConfig
    from manifold_aps.priors.train import train_prior
    from manifold_aps.training import TrainConfig

    _weather(6, 0).to_netcdf(tmp_path / "f.nc")
    data = grid_file_dataset(tmp_path / "f.nc", "t2m")
    assert data.name == "t2m of f.nc" and data.units == "K" and data.channels == 1
    config = TrainConfig(steps=1, batch_size=2, warmup=0, validate_every=0, checkpoint_every=1)
    train_prior(
        data, tmp_path / "p", config, net=ScoreNetConfig(channels=(8,), num_modes=8), progress=False
    )
    path = tmp_path / "p" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["data"]["channel_fields"]  # as every single-variable checkpoint before
    torch.save(state, path)
    model = load_model(path, engine="dps", dps_steps=2)
    assert model.channels == (Channel("t2m", "K"),) and model.variable == "t2m"
    assert model.units == "K"
