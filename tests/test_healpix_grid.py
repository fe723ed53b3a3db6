"""`--grid healpix:NSIDE`: a global lat-lon field trained on and imputed on HEALPix pixels.

`train-prior --input F --grid healpix:N` averages the cells into pixels and trains on them (SO(3)
rotations); `distill --prior` rebuilds the same pixels; `impute --grid healpix:N` imputes the
pixels of a new field. The averaging is checked against closed forms; bad input is one line.
"""

import healpy as hp
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import LAT, LON, TINY_APS, TINY_PRIOR, _field, refused, run_cli

from climate.era5 import grid_domain, to_signal
from climate.masks import (
    land_mask,
    mask_operator,
    parse_mask_spec,
    random_mask,
    sea_mask,
    swath_mask,
)
from climate.regrid import healpix_field, healpix_to_cells, latlon_to_healpix, parse_grid
from manifold_aps.cli import main
from manifold_aps.geometry import HealpixSphere


def _global(values=None, *, lat=LAT, lon=LON):
    data = (
        np.random.default_rng(0).normal(size=(2, lat.size, lon.size)) if values is None else values
    )
    return xr.DataArray(
        data,
        dims=("time", "latitude", "longitude"),
        coords={"time": [0, 1], "latitude": lat, "longitude": lon},
        name="z",
        attrs={"units": "m"},
    )


def test_pixels_are_area_weighted_means_of_the_cells_that_hold_values():
    da = _global()
    pixels = healpix_field(da, 4)
    assert pixels.dims == ("time", "values") and pixels.attrs["units"] == "m"
    assert grid_domain(pixels).fingerprint == HealpixSphere(4).fingerprint
    # a complete field: exactly latlon_to_healpix's averages
    np.testing.assert_allclose(pixels.values, latlon_to_healpix(da, 4).values, rtol=1e-12)
    # a constant field with gaps: the constant wherever a pixel keeps one cell, NaN where none
    const = _global(np.full((2, 13, 24), 7.0))
    const[0, :6] = np.nan  # the northern half of the first field
    out = healpix_field(const, 4)
    kept = out.values[np.isfinite(out.values)]
    np.testing.assert_allclose(kept, 7.0, rtol=1e-12)
    assert np.isnan(out.values[0]).any() and np.isfinite(out.values[1]).all()
    # the pixel centres as coordinates: the HEALPix grid's own
    assert to_signal(out)[0].shape == (2, 192, 1)
    with pytest.raises(ValueError, match="needs a global grid"):
        healpix_field(_global(lat=np.arange(60.0, 29.0, -2.5), lon=np.arange(-10.0, 30.0, 2.5)), 4)
    assert parse_grid("native") is None and parse_grid("healpix:8") == 8
    with pytest.raises(ValueError, match="healpix:NSIDE"):
        parse_grid("healpix:3")


def test_a_random_mask_on_pixels_hides_the_fraction_asked():
    pixels = healpix_field(_global(), 4)
    mask = random_mask(pixels, 0.7, seed=1, per_time=True)
    assert mask.dims == ("time", "values")
    assert (mask.sum("values").values == 192 - round(0.7 * 192)).all()
    assert not (mask.isel(time=0) == mask.isel(time=1)).all()  # one draw per time step


def test_every_mask_acts_on_pixels_with_their_centres(tmp_path):
    pixels = healpix_field(_global(), 8)  # 768 pixels
    lat, lon = pixels["latitude"].values, pixels["longitude"].values
    # a box: exactly the pixels whose centres lie in it, across 0/360
    box = parse_mask_spec("box:-30:30:350:20", pixels)
    assert box.dims == ("values",) and box.sizes["values"] == 768
    dlon = (lon - 350.0) % 360.0
    np.testing.assert_array_equal(~box.values, (np.abs(lat) <= 30 + 1e-9) & (dlon <= 30 + 1e-9))
    # stations at pixel centres observe exactly those pixels (healpy's own pixel numbering)
    chosen = np.array([0, 100, 383, 767])
    theta, phi = hp.pix2ang(8, chosen)
    table = tmp_path / "stations.csv"
    rows = [f"{90 - np.degrees(t)},{np.degrees(f)}" for t, f in zip(theta, phi, strict=True)]
    table.write_text("lat,lon\n" + "\n".join(rows) + "\n")
    stations = parse_mask_spec(f"stations:{table}", pixels)
    assert np.flatnonzero(stations.values).tolist() == chosen.tolist()
    # a swath on equal-area pixels observes about sin(half-width) of the sphere, per time step
    swath = swath_mask(pixels, num_swaths=1, width_km=3000.0, seed=2, per_time=True)
    assert swath.dims == ("time", "values")
    share = swath.values.mean(axis=1)
    np.testing.assert_allclose(share, np.sin(1500.0 / 6371.0), rtol=0.2)
    assert not (swath.isel(time=0) == swath.isel(time=1)).all()
    # the masks carry the pixel centres, so they align with the field and make its operator
    op = mask_operator(box & stations, pixels)
    assert op.mask.shape == (2, 768, 1)


def test_land_and_sea_on_pixels(natural_earth):
    pixels = healpix_field(_global(), 16)
    land = land_mask(pixels)
    assert land.dims == ("values",)
    assert 0.25 < float(land.mean()) < 0.33  # Earth's land share at 1:110m, equal-area pixels
    np.testing.assert_array_equal(sea_mask(pixels).values, ~land.values)


def test_pixels_come_back_on_the_cells_whose_centres_they_hold():
    da = _global(lat=np.arange(89.0, -90.0, -2.0), lon=np.arange(0.0, 360.0, 2.0))
    pixels = healpix_field(da, 4)
    cells = healpix_to_cells(pixels, da)
    assert cells.dims == ("time", "latitude", "longitude") and "healpix_nside" not in cells.attrs
    np.testing.assert_array_equal(cells.latitude.values, da.latitude.values)
    # constant on each pixel: averaging the cells back into pixels gives the pixels exactly
    np.testing.assert_allclose(healpix_field(cells, 4).values, pixels.values, rtol=1e-12)


def test_output_grid_native_brings_the_pixels_back_to_the_input_cells(tmp_path, capsys):
    day = _field(2, 5).isel(level=0)
    day.to_netcdf(tmp_path / "day.nc")
    out = tmp_path / "out.nc"
    argv = ["impute", "--input", str(tmp_path / "day.nc"), "--var", "z", "--grid", "healpix:4"]
    argv += ["--mask", "random:0.6", "--output-grid", "native", "--truth", str(tmp_path / "day.nc")]
    assert main([*argv, "--samples", "3", "--output", str(out), "--quiet"]) == 0
    with xr.open_dataset(out) as res:
        assert res.z_mean.dims == ("time", "latitude", "longitude")
        seen = res.observed.values == 1
        assert 0.25 < seen.mean() < 0.55  # the cells of the 40 % observed pixels
        np.testing.assert_array_equal(res.z_mean.values[seen], day.z.values[seen])  # bit for bit
        assert (res.z_std.values[seen] == 0).all() and (res.z_std.values[~seen] > 0).all()
        # a hidden cell carries its pixel's posterior mean
        hidden_pixels = healpix_to_cells(healpix_field(day.z, 4), day.z).values[~seen]
        assert np.abs(res.z_mean.values[~seen] - hidden_pixels).max() < 50  # m, on a 5500 m field
        assert "HEALPix pixel's values (nside 4)" in res.attrs["history"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("healpix-grid")
    _field(12, 0).to_netcdf(root / "z500.nc")
    common = ["--var", "z", "--select", "level=500", "--grid", "healpix:4"]
    res = run_cli(
        "train-prior", "--input", "z500.nc", *common, "--out", "prior", *TINY_PRIOR, cwd=root
    )
    assert res.returncode == 0, res.stderr
    # the anchor from training signals (seconds) instead of prior samples: recorded when chosen
    distill = ["distill", "--prior", "prior/checkpoint.pt", "--anchor", "signals"]
    distill += ["--anchor-samples", "8"]
    res = run_cli(*distill, "--out", "aps", *TINY_APS, cwd=root)
    assert res.returncode == 0, res.stderr
    return root


def test_train_distil_and_impute_on_the_pixels_of_a_lat_lon_file(runs, tmp_path):
    ckpt = torch.load(runs / "prior" / "checkpoint.pt", weights_only=True)
    assert ckpt["domain_spec"]["type"] == "HealpixSphere"
    assert ckpt["data"]["source"]["args"]["grid"] == "healpix:4"
    assert "random SO(3) rotations" in ckpt["data"]["description"]
    engine = torch.load(runs / "aps" / "checkpoint.pt", weights_only=True)
    assert engine["model_config"]["anchor"] == "signals"
    assert engine["model_config"]["anchor_samples"] == 8
    day = _field(2, 5).isel(level=0)
    day.to_netcdf(tmp_path / "day.nc")
    res = run_cli(
        "impute",
        "--input",
        "day.nc",
        "--var",
        "z",
        "--grid",
        "healpix:4",
        "--mask",
        "random:0.7",
        "--engine",
        "aps",
        "--checkpoint",
        runs / "aps" / "checkpoint.pt",
        "--samples",
        "3",
        "--output",
        "out.nc",
        "--plot",
        "map.png",
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "map.png").stat().st_size > 10_000  # four Mollweide panels
    pixels = healpix_field(day.z, 4).values
    with xr.open_dataset(tmp_path / "out.nc") as out:
        assert out.z_mean.dims == ("time", "values")
        seen = out.observed.values == 1
        assert abs(seen.mean() - 0.3) < 0.01
        np.testing.assert_allclose(out.z_mean.values[seen], pixels[seen], rtol=1e-6)
        assert (out.z_std.values[~seen] > 0).all()


def test_a_lat_lon_field_for_a_pixel_model_and_bad_grids_are_one_line(runs, tmp_path, capsys):
    _field(2, 5).isel(level=0).to_netcdf(tmp_path / "day.nc")
    base = ["impute", "--input", str(tmp_path / "day.nc"), "--var", "z", "--quiet"]
    ckpt = ["--engine", "aps", "--checkpoint", str(runs / "aps" / "checkpoint.pt")]
    cases = [
        (base + ckpt + ["--output", str(tmp_path / "a.nc")], "give --grid healpix:4"),
        (base + ckpt + ["--grid", "healpix:3", "--output", str(tmp_path / "b.nc")], "NSIDE"),
        (
            base
            + ckpt
            + ["--grid", "healpix:4", "--truth", str(tmp_path / "day.nc")]
            + ["--output", str(tmp_path / "c.nc")],
            "add --output-grid native",
        ),
    ]
    for argv, words in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert sorted(f.name for f in tmp_path.glob("*.nc")) == ["day.nc"]  # nothing written
    regional = _field(12, 0).isel(latitude=slice(2, 6), longitude=slice(0, 6))
    regional.to_netcdf(tmp_path / "regional.nc")
    res = run_cli(
        "train-prior",
        "--input",
        "regional.nc",
        "--var",
        "z",
        "--select",
        "level=500",
        "--grid",
        "healpix:4",
        "--out",
        "p",
        *TINY_PRIOR,
        cwd=tmp_path,
    )
    refused(res, "needs a global grid")
    assert not (tmp_path / "p").exists()
