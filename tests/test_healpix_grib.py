"""HEALPix-gridded GRIB (issue 16): a field on HEALPix pixels read, trained on and imputed.

The GRIB2 files are written here with eccodes (``gridType = healpix``, nside 4, ring or nested
ordering, a few analysis times, missing values in a bitmap); cfgrib reads them as `(time,
values)` with latitude/longitude coordinates, and `open_era5` adds the nside and ordering it
does not keep.
"""

import healpy as hp
import numpy as np
import pytest
import torch
import xarray as xr
from conftest import TINY_APS, TINY_PRIOR, refused, run_cli

from manifold_aps.cli import main

NSIDE = 4
MISSING = 9999.0


def write_healpix_grib(path, fields: np.ndarray, *, ordering: str, nside: int = NSIDE) -> None:
    """GRIB2 2 m temperature `fields` `(T, Npix)` [K] at 6-hourly analysis times; NaN = missing."""
    import eccodes

    with open(path, "wb") as out:
        for k, values in enumerate(fields):
            handle = eccodes.codes_grib_new_from_samples("GRIB2")
            for key, value in (
                ("gridType", "healpix"),
                ("Nside", nside),
                ("orderingConvention", ordering),
                ("longitudeOfFirstGridPointInDegrees", 45),  # HEALPix's first pixel centre
                ("shortName", "2t"),
                ("dataDate", 20240101 + k // 4),
                ("dataTime", 600 * (k % 4)),
                ("packingType", "grid_ieee"),
            ):
                eccodes.codes_set(handle, key, value)
            if np.isnan(values).any():
                eccodes.codes_set(handle, "bitmapPresent", 1)
                eccodes.codes_set(handle, "missingValue", MISSING)
            eccodes.codes_set_values(handle, np.where(np.isnan(values), MISSING, values))
            eccodes.codes_write(handle, out)
            eccodes.codes_release(handle)


def _fields(steps: int, *, nest: bool, seed: int = 0) -> np.ndarray:
    """`(steps, Npix)` smooth temperatures [K] in the given ordering (float32-exact values)."""
    theta, phi = hp.pix2ang(NSIDE, np.arange(hp.nside2npix(NSIDE)), nest=nest)
    rng = np.random.default_rng(seed)
    base = 280 + 15 * np.sin(theta) + 2 * np.cos(phi) * np.sin(theta)
    values = base[None] + rng.normal(0, 0.5, (steps, base.size))
    return values.astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("ordering", ["ring", "nested"])
def test_a_healpix_grib_opens_as_a_healpix_sphere_field(tmp_path, ordering):
    from climate.era5 import from_signal, grid_domain, open_era5, to_signal
    from manifold_aps.geometry import HealpixSphere

    nest = ordering == "nested"
    fields = _fields(3, nest=nest)
    fields[1, ::5] = np.nan
    write_healpix_grib(tmp_path / "h.grib2", fields, ordering=ordering)
    ds = open_era5(tmp_path / "h.grib2")
    da = ds["t2m"]
    assert da.dims == ("time", "values") and da.attrs["healpix_ordering"] == ordering
    domain = grid_domain(da)
    assert isinstance(domain, HealpixSphere) and (domain.nside, domain.nest) == (NSIDE, nest)
    assert grid_domain(ds).fingerprint == domain.fingerprint
    theta, _ = hp.pix2ang(NSIDE, np.arange(domain.num_nodes), nest=nest)
    np.testing.assert_allclose(da.latitude.values, 90 - np.degrees(theta), atol=1e-9)
    x, layout = to_signal(da)
    assert x.shape == (3, domain.num_nodes, 1)
    np.testing.assert_array_equal(x[..., 0].numpy(), fields)  # pixel i is value i, NaN kept
    back = from_signal(x, layout)
    assert back.dims == da.dims
    np.testing.assert_array_equal(back.values, da.values)


@pytest.fixture(scope="module")
def grib_runs(tmp_path_factory):
    """A prior trained on a nested HEALPix GRIB and an APS engine distilled from it."""
    root = tmp_path_factory.mktemp("grib")
    write_healpix_grib(root / "train.grib2", _fields(6, nest=True), ordering="nested")
    res = run_cli(
        "train-prior",
        "--input",
        "train.grib2",
        "--var",
        "t2m",
        "--out",
        "prior",
        *TINY_PRIOR,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("distill", "--prior", "prior/checkpoint.pt", "--out", "aps", *TINY_APS, cwd=root)
    assert res.returncode == 0, res.stderr
    return root


def test_train_prior_on_a_healpix_grib_is_a_healpix_prior_with_so3_rotations(grib_runs):
    ckpt = torch.load(grib_runs / "prior" / "checkpoint.pt", weights_only=True)
    spec = ckpt["domain_spec"]
    assert (spec["type"], spec["nside"], spec["nest"]) == ("HealpixSphere", NSIDE, True)
    assert "random SO(3) rotations" in ckpt["data"]["description"]
    assert ckpt["data"]["source"]["builder"] == "grid-file"


@pytest.mark.parametrize("engine", ["gaussian", "aps"])
def test_impute_a_healpix_grib_keeps_observed_values_and_the_values_layout(
    grib_runs, tmp_path, engine
):
    fields = _fields(3, nest=True, seed=5)
    hidden = np.random.default_rng(2).random(fields.shape) < 0.5
    write_healpix_grib(tmp_path / "gaps.grib2", np.where(hidden, np.nan, fields), ordering="nested")
    before = (tmp_path / "gaps.grib2").read_bytes()
    extra = ["--checkpoint", grib_runs / "aps" / "checkpoint.pt"] if engine == "aps" else []
    res = run_cli(
        "impute",
        "--input",
        "gaps.grib2",
        "--var",
        "t2m",
        "--engine",
        engine,
        *extra,
        "--samples",
        "3",
        "--output",
        "out.nc",
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "gaps.grib2").read_bytes() == before
    with xr.open_dataset(tmp_path / "out.nc") as out:
        mean = out["t2m_mean"]
        assert mean.dims == ("time", "values")
        assert out.latitude.dims == ("values",) and out.longitude.dims == ("values",)
        assert mean.attrs["healpix_nside"] == NSIDE and mean.attrs["healpix_ordering"] == "nested"
        np.testing.assert_array_equal(mean.values[~hidden], fields[~hidden])  # bit for bit
        np.testing.assert_array_equal(out["observed"].values == 1, ~hidden)
        assert np.isfinite(mean.values).all() and (out["t2m_std"].values[hidden] > 0).all()
        assert out["t2m_samples"].dims == ("sample", "time", "values")


def test_a_healpix_grib_of_another_grid_than_the_model_is_one_line(grib_runs, tmp_path):
    write_healpix_grib(tmp_path / "ring.grib2", _fields(2, nest=False), ordering="ring")
    refused(
        run_cli(
            "impute",
            "--input",
            "ring.grib2",
            "--var",
            "t2m",
            "--engine",
            "aps",
            "--checkpoint",
            grib_runs / "aps" / "checkpoint.pt",
            "--output",
            "out.nc",
            cwd=tmp_path,
        ),
        "nest=False",
        "nest=True",
    )
    assert not (tmp_path / "out.nc").exists()


def test_a_box_mask_and_a_map_on_a_healpix_grib_and_lat_lon_options_refused(tmp_path, capsys):
    fields = _fields(2, nest=True, seed=3)
    write_healpix_grib(tmp_path / "full.grib2", fields, ordering="nested")
    base = ["impute", "--input", str(tmp_path / "full.grib2"), "--var", "t2m", "--quiet"]
    out, png = tmp_path / "out.nc", tmp_path / "map.png"
    argv = base + ["--mask", "box:-20:40:0:90", "--samples", "2", "--output", str(out)]
    assert main([*argv, "--plot", str(png)]) == 0
    theta, phi = hp.pix2ang(NSIDE, np.arange(12 * NSIDE**2), nest=True)
    lat, lon = 90.0 - np.degrees(theta), np.degrees(phi)
    box = (lat >= -20 - 1e-9) & (lat <= 40 + 1e-9) & (lon <= 90 + 1e-9)  # the pixels' centres
    with xr.open_dataset(out) as res:
        hidden = res["observed"].values == 0
        np.testing.assert_array_equal(hidden, np.broadcast_to(box, hidden.shape))
    assert png.stat().st_size > 10_000
    for extra, words in (
        (["--coarsen", "2"], "--coarsen takes a lat-lon grid"),
        (["--region", "0:10:0:10"], "--region takes a lat-lon grid"),
    ):
        assert main(base + extra + ["--output", str(tmp_path / "x.nc")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "x.nc").exists()
