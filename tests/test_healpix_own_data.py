"""Your own HEALPix maps from the command line (issue 16), as a user runs them.

train-prior --healpix -> distill -> reconstruct --healpix, SO(3) augmentation, and one-line
refusals of bad maps.

The maps are written by the tests (nside 8, RING and NESTED files); the models are tiny.
"""

import healpy as hp
import numpy as np
import pytest
import torch
from conftest import TINY_APS, TINY_PRIOR, refused, run_cli

NSIDE = 8
CL = 1.0 / (1.0 + np.arange(3 * NSIDE)) ** 2  # a red spectrum, band-limited to lmax = 3 nside - 1


def _maps(count: int, seed: int, lmax: int = CL.size - 1) -> np.ndarray:
    """`count` Gaussian maps of `CL` up to `lmax` `(count, Npix)`, RING order."""
    np.random.seed(seed)  # healpy.synalm draws from numpy's global generator
    return np.stack(
        [hp.alm2map(hp.synalm(CL[: lmax + 1], lmax=lmax, new=True), NSIDE) for _ in range(count)]
    )


@pytest.fixture(scope="module")
def sky_runs(tmp_path_factory):
    """A prior and its distilled APS engine on two files of two orderings.

    A RING file holds two maps and one with an UNSEEN pixel, a NESTED file three maps.
    """
    root = tmp_path_factory.mktemp("sky")
    maps = _maps(6, 0)
    partial = maps[5].copy()
    partial[7] = hp.UNSEEN
    hp.write_map(
        str(root / "ring.fits"),
        [maps[0], maps[1], partial],
        column_names=["A", "B", "CUT"],
        column_units=["mK"] * 3,
        dtype=np.float64,
    )
    hp.write_map(
        str(root / "nested.fits"),
        hp.reorder(maps[2:5], r2n=True),
        nest=True,
        dtype=np.float64,
    )
    res = run_cli(
        "train-prior",
        "--healpix",
        "ring.fits",
        "nested.fits",
        "--out",
        "prior",
        *TINY_PRIOR[:-1],  # not --quiet: the data's description is printed
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    assert "ring.fits[CUT]" in res.stdout  # the user is told which map was left out
    distilled = run_cli(
        "distill", "--prior", "prior/checkpoint.pt", "--out", "aps", *TINY_APS, cwd=root
    )
    assert distilled.returncode == 0, distilled.stderr
    return root, maps


def test_two_files_of_two_orderings_train_in_the_first_files_ordering(sky_runs):
    root, maps = sky_runs
    from manifold_aps.datasets import dataset_from_source

    ckpt = torch.load(root / "prior" / "checkpoint.pt", weights_only=True)
    spec, data = ckpt["domain_spec"], ckpt["data"]
    assert (spec["type"], spec["nside"], spec["nest"]) == ("HealpixSphere", NSIDE, False)
    assert data["units"] == "mK" and data["source"]["builder"] == "healpix-maps"
    assert data["source"]["args"]["maps"] == ["ring.fits", "nested.fits"]
    assert "ring.fits[CUT]" in data["description"]  # the map with an UNSEEN pixel, named
    assert "random SO(3) rotations" in data["description"]  # auto: full-sky maps
    engine = torch.load(root / "aps" / "checkpoint.pt", weights_only=True)
    assert engine["data"]["source"] == data["source"]
    source = data["source"]
    rebuilt = dataset_from_source(
        {
            **source,
            "args": {
                **source["args"],
                "maps": [str(root / "ring.fits"), str(root / "nested.fits")],
            },
        }
    )
    signals = torch.cat([rebuilt.source.train, rebuilt.source.val])[..., 0].numpy()
    # the NESTED file's maps come back in RING order: the known maps, bit for bit in float32
    np.testing.assert_array_equal(signals, maps[:5].astype(np.float32))


def test_reconstruct_a_map_with_the_distilled_engine_in_either_ordering(sky_runs, tmp_path):
    root, maps = sky_runs
    truth = _maps(1, 9)[0]
    hidden = np.random.default_rng(3).random(truth.size) < 0.6
    ring = np.where(hidden, hp.UNSEEN, truth)
    hp.write_map(str(tmp_path / "ring.fits"), ring, dtype=np.float64)
    hp.write_map(
        str(tmp_path / "nested.fits"), hp.reorder(ring, r2n=True), nest=True, dtype=np.float64
    )
    for name in ("ring", "nested"):  # the NESTED map is reordered to the checkpoint's RING
        res = run_cli(
            "reconstruct",
            "--healpix",
            f"{name}.fits",
            "--engine",
            "aps",
            "--checkpoint",
            root / "aps" / "checkpoint.pt",
            "--samples",
            "3",
            "--output",
            f"{name}_rec.fits",
            "--quiet",
            cwd=tmp_path,
        )
        assert res.returncode == 0, (name, res.stderr)
        (mean, std, seen), header = hp.read_map(
            str(tmp_path / f"{name}_rec.fits"), field=(0, 1, 2), nest=False, h=True
        )  # read back in RING whatever the file's ordering
        assert dict(header)["ORDERING"] == "RING"
        np.testing.assert_array_equal(seen > 0.5, ~hidden)
        np.testing.assert_array_equal(mean[~hidden], truth[~hidden])
        assert np.isfinite(mean).all() and (std[hidden] > 0).all() and (std[~hidden] == 0).all()


def _one_map_file(path, m, *, nest=False):
    hp.write_map(str(path), hp.reorder(m, r2n=True) if nest else m, nest=nest, dtype=np.float64)


@pytest.mark.parametrize("nest", [False, True], ids=["ring", "nested"])
def test_so3_batches_keep_the_angular_power_spectrum_and_none_keeps_the_maps(tmp_path, nest):
    from manifold_aps.datasets import healpix_maps_dataset

    maps = _maps(2, 1, lmax=2 * NSIDE)  # well inside the rotations' band limit 3 nside - 1
    _one_map_file(tmp_path / "a.fits", maps[0], nest=nest)
    _one_map_file(tmp_path / "b.fits", maps[1], nest=nest)
    files = [tmp_path / "a.fits", tmp_path / "b.fits"]
    rotated = healpix_maps_dataset(files, augment="so3", val_fraction=0.5)
    assert rotated.domain.nest == nest
    batch = rotated.source.batch(torch.Generator().manual_seed(0), 4)[..., 0].double().numpy()
    again = rotated.source.batch(torch.Generator().manual_seed(0), 4)[..., 0].double().numpy()
    np.testing.assert_array_equal(batch, again)  # seeded
    lmax = 2 * NSIDE
    reference = hp.anafast(maps[0], lmax=lmax)[2 : NSIDE + 1]  # low l, the monopole/dipole aside
    for m in batch:
        ring = hp.reorder(m, n2r=True) if nest else m
        assert np.abs(ring - maps[0]).max() > 0.1 * np.abs(maps[0]).max()  # turned, not kept
        spectrum = hp.anafast(ring, lmax=lmax)[2 : NSIDE + 1]
        np.testing.assert_allclose(spectrum, reference, rtol=1e-2)
    plain = healpix_maps_dataset(files, augment="none", val_fraction=0.5)
    assert plain.source.augment is None and "augmentation: none" in plain.description
    batch = plain.source.batch(torch.Generator().manual_seed(0), 4)[..., 0].numpy()
    expected = (hp.reorder(maps[0], r2n=True) if nest else maps[0]).astype(np.float32)
    for m in batch:
        np.testing.assert_array_equal(m, expected)


@pytest.mark.slow  # five refused runs from subprocesses, ~25 s on 2 cores
def test_bad_maps_are_one_line_and_write_nothing(sky_runs, tmp_path):
    root, maps = sky_runs
    _one_map_file(tmp_path / "a8.fits", maps[0])
    hp.write_map(str(tmp_path / "a4.fits"), hp.ud_grade(maps[0], 4), dtype=np.float64)
    refused(
        run_cli(
            "train-prior",
            "--healpix",
            "a8.fits",
            "a4.fits",
            "--out",
            "p",
            *TINY_PRIOR,
            cwd=tmp_path,
        ),
        "a4.fits holds maps of nside 4",
        "a8.fits of nside 8",
    )
    from astropy.io import fits

    fits.PrimaryHDU(np.zeros((4, 4))).writeto(tmp_path / "image.fits")
    refused(
        run_cli("train-prior", "--healpix", "image.fits", "--out", "p", *TINY_PRIOR, cwd=tmp_path),
        "image.fits is not a HEALPix FITS map",
    )
    cut = maps[0].copy()
    cut[0] = hp.UNSEEN
    _one_map_file(tmp_path / "cut.fits", cut)
    refused(
        run_cli("train-prior", "--healpix", "cut.fits", "--out", "p", *TINY_PRIOR, cwd=tmp_path),
        "cut.fits",
        "full-sky",
    )
    refused(
        run_cli(
            "train-prior",
            "--healpix",
            "a8.fits",
            "a8.fits",
            "--augment",
            "longitude",
            "--out",
            "p",
            *TINY_PRIOR,
            cwd=tmp_path,
        ),
        "--augment longitude",
        "so3",
    )
    assert not (tmp_path / "p").exists()
    small = np.where(np.arange(hp.nside2npix(4)) % 2 == 0, 1.0, hp.UNSEEN)
    hp.write_map(str(tmp_path / "small.fits"), small, dtype=np.float64)
    refused(
        run_cli(
            "reconstruct",
            "--healpix",
            "small.fits",
            "--engine",
            "aps",
            "--checkpoint",
            root / "aps" / "checkpoint.pt",
            "--output",
            "out.fits",
            cwd=tmp_path,
        ),
        "HealpixSphere(nside=8",
        "HealpixSphere(nside=4",
    )
    assert not (tmp_path / "out.fits").exists()
