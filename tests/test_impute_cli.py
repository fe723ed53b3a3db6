"""`manifold-aps impute` end to end as a user runs it (`run_cli`), on the real ERA5 files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from conftest import REPO, require, run_cli

from climate import open_era5


def _run(*args, ok=True):
    res = run_cli("impute", *args, cwd=REPO)
    if ok:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_help_explains_every_option():
    res = run_cli("impute", "--help", cwd=REPO)
    assert res.returncode == 0
    for word in (
        "--mask",
        "random:0.7",
        "stations:FILE.csv",
        "swath:2:1000",
        "box:S:N:W:E",
        "--engine",
        "--checkpoint",
        "--fit-period",
        "--samples",
        "--output",
        "--plot",
        "examples:",
    ):
        assert word in res.stdout, word


@pytest.mark.slow  # ~25 s; GRIB input also in test_era5_reader, test_climate, test_healpix_grib
def test_grib_with_random_and_box_masks_writes_netcdf_map_and_scores(data, tmp_path):
    grib = require(data / "era5" / "era5-2mt-2019-03-uk.grib")
    out, png, model = tmp_path / "out.nc", tmp_path / "map.png", tmp_path / "model.pt"
    res = _run(
        "--input",
        grib,
        "--var",
        "t2m",
        "--mask",
        "random:0.5",
        "--mask",
        "box:52:54:-4:-1",
        "--fit-period",
        "2019-03-01:2019-03-20",
        "--period",
        "2019-03-28T00:2019-03-28T05",
        "--samples",
        "4",
        "--quantiles",
        "0.05",
        "0.95",
        "--save-model",
        model,
        "--output",
        out,
        "--plot",
        png,
        "--quiet",
    )
    assert "RMSE of the mean" in res.stdout and "90 % coverage" in res.stdout
    rmse = float(res.stdout.split("RMSE of the mean ")[1].split(",")[0])
    assert 0.05 < rmse < 1.0  # Kelvin, hidden cells, held-out hours
    ds = xr.open_dataset(out, engine="h5netcdf")
    truth = open_era5(grib, "t2m").t2m.sel(time=slice("2019-03-28T00", "2019-03-28T05")).load()
    obs = ds.observed.values.astype(bool)
    assert ds.t2m_samples.shape == (4, 6, 33, 49) and ds.t2m_quantiles.shape == (2, 6, 33, 49)
    assert np.array_equal(ds.t2m_mean.values[obs], truth.values[obs])
    box = (ds.latitude >= 52) & (ds.latitude <= 54) & (ds.longitude >= -4) & (ds.longitude <= -1)
    assert not obs[:, box.values].any()  # the box is hidden at every time
    assert 0.5 < 1 - obs.mean() < 0.65
    assert "random 50 % missing" in ds.attrs["history"] and ds.attrs["source"] == grib.name
    ds.close()
    assert png.stat().st_size > 10_000 and model.is_file()
    # the saved model is reused on the netCDF copy of the same data: same samples, no refit
    nc = require(data / "era5" / "era5-2mt-2019-03-uk.nc")
    res2 = _run(
        "--input",
        nc,
        "--mask",
        "random:0.5",
        "--mask",
        "box:52:54:-4:-1",
        "--checkpoint",
        model,
        "--period",
        "2019-03-28T00:2019-03-28T05",
        "--samples",
        "4",
        "--quantiles",
        "0.05",
        "0.95",
        "--output",
        tmp_path / "again.nc",
        "--quiet",
    )
    assert "fitting" not in res2.stdout
    a = xr.open_dataset(out, engine="h5netcdf")
    b = xr.open_dataset(tmp_path / "again.nc", engine="h5netcdf")
    np.testing.assert_array_equal(a.t2m_samples.values, b.t2m_samples.values)
    a.close()
    b.close()


# ~50 s on 2 cores; lat-lon masks as parsed from --mask: test_climate_masks
@pytest.mark.slow
def test_stations_swaths_and_levels(data, tmp_path):
    nc = require(data / "era5" / "era5-2mt-2019-03-uk.nc")
    csv = tmp_path / "stations.csv"
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(50.2, 57.8, 300), rng.uniform(-9.8, 1.8, 300)
    csv.write_text(
        "name,lat,lon\n"
        + "".join(f"s{i},{a:.3f},{b:.3f}\n" for i, (a, b) in enumerate(zip(lat, lon, strict=True)))
    )
    res = _run(
        "--input",
        nc,
        "--mask",
        f"stations:{csv}",
        "--fit-period",
        "2019-03-01:2019-03-20",
        "--period",
        "2019-03-30T12:2019-03-30T13",
        "--samples",
        "2",
        "--output",
        tmp_path / "st.nc",
        "--quiet",
    )
    assert "RMSE of the mean" in res.stdout
    res = _run(
        "--input",
        nc,
        "--mask",
        "swath:2:300",
        "--fit-period",
        "2019-03-01:2019-03-20",
        "--period",
        "2019-03-30T12:2019-03-30T13",
        "--samples",
        "2",
        "--output",
        tmp_path / "sw.nc",
        "--quiet",
    )
    assert "RMSE of the mean" in res.stdout
    # a GRIB file with pressure levels and ensemble members: pick one of each
    grib = require(data / "era5" / "era5-levels-members.grib")
    res = _run(
        "--input",
        grib,
        "--var",
        "t",
        "--select",
        "level=500",
        "--select",
        "number=0",
        "--mask",
        "random:0.5",
        "--samples",
        "2",
        "--output",
        tmp_path / "full.nc",
        "--quiet",
    )
    with xr.open_dataset(
        tmp_path / "full.nc", engine="h5netcdf"
    ) as full:  # 61 x 120: over the old dense limit
        assert full.t_mean.shape[-2:] == (61, 120)
    res = _run(
        "--input",
        grib,
        "--var",
        "t",
        "--select",
        "level=500",
        "--select",
        "number=0",
        "--region",
        "30:75:-30:45",
        "--mask",
        "random:0.5",
        "--samples",
        "2",
        "--output",
        tmp_path / "lv.nc",
        "--quiet",
    )
    assert "fitting on complete time steps of the imputed period itself" in res.stdout
    ds = xr.open_dataset(tmp_path / "lv.nc", engine="h5netcdf")
    assert ds.t_mean.dims == ("time", "latitude", "longitude") and ds.t_mean.attrs["units"] == "K"
    assert ds.sizes["latitude"] == 16 and ds.sizes["longitude"] == 26  # 3 deg cells, across 0 E
    assert (np.diff(ds.longitude.values) % 360 == 3).all()
    ds.close()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--var", "z500"], "variable(s) ['z500'] not in"),
        (["--mask", "random:abc"], "are not numbers"),
        (["--mask", "circle:3"], "unknown mask spec"),
        (["--engine", "dps"], "--engine dps needs --checkpoint"),
        (["--period", "2019-04-01:2019-04-02"], "selects no time step"),
        (["--select", "level=500"], "has no dimension 'level'"),
    ],
)
def test_bad_arguments_get_one_clear_line(data, tmp_path, args, message):
    nc = require(data / "era5" / "era5-2mt-2019-03-uk.nc")
    res = _run("--input", nc, "--output", tmp_path / "x.nc", "--quiet", *args, ok=False)
    assert res.returncode == 2
    assert message in res.stderr, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x.nc").exists()


def test_global_grid_coarsened_with_swaths_and_map(data, tmp_path):
    nc = require(data / "era5" / "era5_global_1deg_2026-03-25_to_31_24steps.nc")
    res = _run(
        "--input",
        nc,
        "--coarsen",
        "8",
        "--mask",
        "swath:3:1500",
        "--fit-period",
        "2026-03-25:2026-03-29",
        "--period",
        "2026-03-30:2026-03-30T12",
        "--samples",
        "4",
        "--output",
        tmp_path / "g.nc",
        "--plot",
        tmp_path / "g.png",
        "--quiet",
    )
    assert "RMSE of the mean" in res.stdout
    ds = xr.open_dataset(tmp_path / "g.nc", engine="h5netcdf")
    assert (
        ds.sizes["latitude"] == 22 and ds.sizes["longitude"] == 45
    )  # 181 x 360 in 8 x 8 blocks, trimmed
    obs = ds.observed.values.astype(bool)
    assert 0.15 < obs.mean() < 0.8 and not np.array_equal(
        obs[0], obs[1]
    )  # new swaths each time step
    ds.close()
    assert (tmp_path / "g.png").stat().st_size > 20_000
