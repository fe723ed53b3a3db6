"""Training signals for priors: tensor datasets with augmentation, Gaussian sources, real builders.

`build_prior_dataset(name)` returns a `PriorDataset` for the priors the project trains (the two
ERA5 ones live in `climate.datasets`, registered through the ``manifold_aps.datasets`` entry
points, so that this core module never imports `climate`):

* ``era5-uk``: ERA5 t2m over the UK at 0.25° (the shipped sample). Train: 1-18 March 2019,
  validation: 19-21 March, test: 25-31 March (the days between are left out so that test hours
  are not next to training hours).
* ``era5-global``: ERA5 t2m, global 1° (24 steps, 25-31 March 2026), regridded to HEALPix
  (nside 16); augmented by rotations about the polar axis by whole degrees (an exact roll of
  the lat-lon field before regridding). Train: steps 0-15, validation 16-17, test 18-23.
* ``wmap``: the WMAP 7-year W-band temperature map [mK], degraded to nside 16, augmented by
  random rotations in SO(3) (exact on its spherical-harmonic expansion, lmax = 3 nside - 1).
* ``wmap-masked``: the same map seen only outside its real analysis mask, with 6 geodesic caps
  of observed sky also held out (`wmap_masked_problem`); no pixel inside the mask or the caps
  reaches training. The hidden pixels are filled with constrained Gaussian realisations (exact
  posterior samples of the isotropic Gaussian field of the map's measured angular power
  spectrum), and the filled maps are rotated at random in SO(3). `test` is the observed map
  (0 inside the mask, where the truth is unknown); `extra` holds the masks (`truth_region`:
  the observed pixels; `holdout`: the caps, never trained on), the spectrum and the Gaussian prior.
* ``mesh-bunny`` / ``mesh-spot``: on the real meshes, an equal mixture of Matérn Gaussian
  draws and heat-diffused random point sources.
* ``digits``: scikit-learn's bundled 8x8 digits upsampled to 16x16 on a `PlanarGrid` (the
  Euclidean check).
* ``gaussian-healpix8`` / ``gaussian-bumpy``: draws of a known Matérn prior (the closed-form
  checks of the score network).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from manifold_aps.geometry import Domain, HealpixSphere, TriangleMesh
from manifold_aps.priors.gaussian import GaussianPrior

__all__ = [
    "DATASETS",
    "GaussianSource",
    "HEALPIX_AUGMENTATIONS",
    "PriorDataset",
    "SO3Rotations",
    "SignalsNotStored",
    "TensorSource",
    "build_prior_dataset",
    "checked_digest",
    "dataset_from_source",
    "file_digest",
    "healpix_maps_dataset",
    "mesh_signals_dataset",
    "read_healpix_fits",
    "read_signals",
    "split_train_validation",
    "vertex_order",
    "data_dir",
    "require_file",
    "dataset_names",
    "wmap_masked_problem",
]


def data_dir() -> Path:
    """The shared data folder: `$MANIFOLD_APS_DATA`, by default `../shared/data`.

    The default is relative to the working directory, or else to the repository of an editable
    install (so that scripts run from any sub-folder).
    """
    if "MANIFOLD_APS_DATA" in os.environ:
        return Path(os.environ["MANIFOLD_APS_DATA"])
    here = Path("../shared/data")
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data"
    return here if here.is_dir() or not beside_repo.is_dir() else beside_repo


def require_file(path: Path) -> Path:
    """`path` if it exists, else a `FileNotFoundError` that names `MANIFOLD_APS_DATA`."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found; set MANIFOLD_APS_DATA to the folder of the shared data"
        )
    return path


class TensorSource:
    """Signals drawn at random (with replacement) from a tensor, optionally augmented.

    Arguments:
        train: `(M, N, C)` training signals.
        val: `(M', N, C)` validation signals.
        augment: optional `(x (n, N, C), generator) -> (n, N, C)`, applied to every batch.
    """

    def __init__(self, train: torch.Tensor, val: torch.Tensor, augment: Callable | None = None):
        self.train, self.val, self.augment = train.float(), val.float(), augment

    def batch(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """`n` training signals `(n, N, C)` drawn with replacement, augmented if configured."""
        idx = torch.randint(0, self.train.shape[0], (n,), generator=generator)
        x = self.train[idx]
        return self.augment(x, generator) if self.augment else x

    def validation(self) -> torch.Tensor:
        """The validation signals `(M', N, C)`."""
        return self.val


class GaussianSource:
    """Fresh draws of a `GaussianPrior` at every batch (unlimited data); fixed validation draws."""

    def __init__(self, prior: GaussianPrior, num_val: int = 64, channels: int = 1):
        self.prior, self.channels = prior, channels
        self.val = prior.sample(
            num_val, channels=channels, rng=torch.Generator().manual_seed(4242)
        ).float()

    def batch(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """`n` fresh draws `(n, N, C)` of the prior."""
        return self.prior.sample(n, channels=self.channels, rng=generator).float()

    def validation(self) -> torch.Tensor:
        """The fixed validation draws `(num_val, N, C)`."""
        return self.val


@dataclass
class PriorDataset:
    """A domain, its training source and held-out test signals.

    Attributes:
        name: registry name.
        domain: the domain.
        source: training/validation signals (`TensorSource` or `GaussianSource`).
        test: held-out signals `(M, N, C)` in physical units (may be empty).
        units: units of the signal.
        description: one line on where it comes from.
        reference: for Gaussian datasets, the exact prior (for closed-form checks).
    """

    name: str
    domain: Domain
    source: object
    test: torch.Tensor
    units: str
    description: str
    reference: GaussianPrior | None = None
    extra: dict = field(default_factory=dict)

    def training_signals(self, n: int = 512) -> torch.Tensor:
        """Training signals `(M, N, C)`, physical units: a `TensorSource`'s, else `n` draws.

        What a fit on training data reads (e.g. DAPS's `fit_inner_covariance`), never a
        held-out signal; the draws of other sources are seeded (seed 0).

        Raises:
            ValueError: a dataset described by a checkpoint without its signals.
        """
        if isinstance(self.source, SignalsNotStored):
            raise ValueError(f"dataset {self.name!r} was loaded without its training signals")
        stored = getattr(self.source, "train", None)
        if stored is not None:
            return stored
        return self.source.batch(torch.Generator().manual_seed(0), n)

    @property
    def channels(self) -> int:
        """`C`."""
        if isinstance(self.source, SignalsNotStored):
            return self.source.channels
        return self.source.validation().shape[-1]

    def description_dict(self) -> dict:
        """What a checkpoint records about these training signals (plain types).

        Keys: `name`, `units`, `description`, `channels`, `variable` (a climate field's name,
        else ""); `source` and `channel_fields` (one dict per channel, e.g. its variable and
        units) when `extra` has them.
        """
        data = {
            "name": self.name,
            "units": self.units,
            "description": self.description,
            "channels": self.channels,
            "variable": str(self.extra.get("variable", "")),
        }
        if "source" in self.extra:  # a user's files: how to read them again (`dataset_from_source`)
            data["source"] = self.extra["source"]
        if "channel_fields" in self.extra:
            data["channel_fields"] = self.extra["channel_fields"]
        return data

    @classmethod
    def described(cls, domain: Domain, data: dict) -> PriorDataset:
        """The dataset a checkpoint describes (`description_dict`), without its signals.

        It has its domain, units and variable, and no signals (`source` is a `SignalsNotStored`,
        `test` empty).
        """
        channels = int(data.get("channels", 1))
        extra = {"variable": data["variable"]} if data.get("variable") else {}
        for key in ("source", "channel_fields"):
            if key in data:
                extra[key] = data[key]
        return cls(
            str(data.get("name", "")),
            domain,
            SignalsNotStored(str(data.get("name", "")), channels),
            torch.zeros(0, domain.num_nodes, channels),
            str(data.get("units", "")),
            str(data.get("description", "")),
            extra=extra,
        )


class SignalsNotStored:
    """The source of a dataset known only from a checkpoint: it has a channel count, no signals."""

    def __init__(self, name: str, channels: int):
        self.name, self.channels = name, channels

    def _refuse(self):
        raise ValueError(
            f"the signals of {self.name!r} are not stored in the checkpoint; "
            "build the dataset itself "
            "(a registered name: build_prior_dataset) or pass your own signals"
        )

    def batch(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """Refused: a `ValueError`, the signals are not stored."""
        self._refuse()

    def validation(self) -> torch.Tensor:
        """Refused: a `ValueError`, the signals are not stored."""
        self._refuse()


def _wmap(root: Path, nside: int = 16, pool: int = 2048) -> PriorDataset:
    import healpy as hp

    path = require_file(root / "sphere" / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32.fits")
    m32 = hp.read_map(path, field=0, dtype=np.float64)
    m = hp.ud_grade(m32, nside)
    lmax = 3 * nside - 1
    source = TensorSource(
        _rotated_maps(m[None], nside, pool, 1), _rotated_maps(m[None], nside, 64, 2)
    )
    return PriorDataset(
        "wmap",
        HealpixSphere(nside),
        source,
        torch.from_numpy(m[None, :, None]).float(),
        "mK",
        f"WMAP 7-yr W-band I map, nside {nside}, {pool} random SO(3) rotations (band limit {lmax})",
        extra={"map": m},
    )


def _rotated_maps(maps: np.ndarray, nside: int, count: int, seed: int) -> torch.Tensor:
    """`count` random SO(3) rotations of `maps` `(K, Npix)` (cycled); `(count, Npix, 1)` float32.

    The rotations are exact on the maps' alm up to lmax = 3 nside - 1.
    """
    from scipy.spatial.transform import Rotation

    euler = Rotation.random(count, random_state=seed).as_euler("ZYZ")
    return torch.from_numpy(_rotate_maps(maps, nside, euler)[:, :, None]).float()


def _rotate_maps(maps: np.ndarray, nside: int, euler: np.ndarray, *, nest: bool = False):
    """Map `i % K` of `maps` `(K, Npix)` rotated by the ZYZ Euler angles `euler[i]` `(R, 3)` [rad].

    The rotation acts on the maps' spherical-harmonic coefficients (`healpy.rotate_alm`): exact
    for a map band-limited to lmax = 3 nside - 1. `nest`: the maps are (and come back) NESTED.

    Returns:
        `(R, Npix)` float64.
    """
    import healpy as hp

    lmax = 3 * nside - 1
    ring = hp.reorder(maps, n2r=True) if nest else maps
    alms = [hp.map2alm(m, lmax=lmax) for m in np.atleast_2d(ring)]
    out = np.empty((len(euler), hp.nside2npix(nside)))
    for i, (a, b, c) in enumerate(euler):
        r = alms[i % len(alms)].copy()
        hp.rotate_alm(r, a, b, c, lmax=lmax)
        out[i] = hp.alm2map(r, nside, lmax=lmax)
    return hp.reorder(out, r2n=True) if nest else out


class SO3Rotations:
    """Augmentation of full-sky HEALPix maps: each signal turned by its own random rotation.

    The rotations are uniform on SO(3) (normalised Gaussian quaternions drawn from the batch's
    `torch.Generator`, so a seeded run repeats) and act on the maps' spherical harmonics up to
    lmax = 3 nside - 1 (`_rotate_maps`, as the ``wmap`` datasets): the angular power spectrum is
    kept. One rotation costs about 3 ms at nside 16 and grows as nside^3.

    Arguments:
        nside: the maps' resolution.
        nest: the maps are in NESTED ordering (else RING).
    """

    def __init__(self, nside: int, *, nest: bool = False):
        self.nside, self.nest = int(nside), bool(nest)

    def __repr__(self) -> str:
        return f"SO3Rotations(nside={self.nside}, nest={self.nest})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`x` `(n, N, C)` rotated: signal `i` (all its channels) by one random rotation."""
        from scipy.spatial.transform import Rotation

        quaternions = torch.randn(x.shape[0], 4, generator=generator, dtype=torch.float64)
        euler = Rotation.from_quat(quaternions.numpy()).as_euler("ZYZ")
        maps = x.detach().double().cpu().numpy()
        out = np.empty_like(maps)
        for c in range(maps.shape[2]):
            out[:, :, c] = _rotate_maps(maps[:, :, c], self.nside, euler, nest=self.nest)
        return torch.from_numpy(out).to(x.dtype)


def wmap_masked_problem(
    root: str | os.PathLike | None = None,
    *,
    nside: int = 16,
    num_caps: int = 6,
    cap_area: float = 0.015,
    seed: int = 0,
) -> dict:
    r"""The WMAP W-band map under its real analysis mask, with held-out caps.

    This is everything the ``wmap-masked`` dataset and `examples/sphere_inpainting.py` share.

    Steps (HEALPix RING order, as `HealpixSphere(nside)`):

    1. the nside-32 temperature map [mK] with the analysis mask applied (masked pixels UNSEEN)
       is degraded with `healpy.ud_grade(pess=False)`, which averages only unmasked sub-pixels;
       a pixel is *observed* when at least 3 of its 4 sub-pixels are unmasked (degraded mask
       > 0.5), so no masked sub-pixel enters any observed value (57 % of the sky at nside 16);
    2. `num_caps` geodesic caps of `cap_area` of the sky each (`CapMaskGenerator`, seeds
       ``f"wmap-masked-holdout-{seed}-{i}-{attempt}"``, redrawn until at least 75 % of the cap
       is observed and it overlaps no earlier cap) are held out: their observed pixels (216 at
       nside 16) are the validation truth and are used nowhere else;
    3. the monopole and dipole are fitted on the remaining visible pixels
       (`healpy.fit_dipole`) and removed from the whole map;
    4. the angular power spectrum is the pseudo-spectrum of the visible map (zero elsewhere),
       `healpy.anafast` up to `lmax = 4 nside - 1` (the pixel basis has modes up to
       :math:`l = \lfloor\sqrt{N-1}\rfloor = 55` at nside 16; above `3 nside - 1` the values
       are aliased and only set the pixel-scale variance), divided by the visible sky fraction
       (no mode-coupling correction); :math:`C_0` and :math:`C_1`, removed in step 3, are set to
       the white-noise level :math:`\sigma^2 4\pi/N`;
    5. the white noise :math:`\sigma` of the temperature is estimated from the Q and U maps of
       the same file at the visible pixels, :math:`\sigma \approx \mathrm{rms}(Q, U)/\sqrt2`
       (a detector pair measures I with half the variance of Q or U); polarised signal makes
       this an upper bound (about 5 µK at nside 16).

    Returns:
        a dict: `domain`; `map` (N,) float64 (monopole and dipole removed, 0 where not
        observed); `observed`, `holdout`, `visible` = observed and not held out, each (N,) bool;
        `cl` (4 nside,) [mK² sr]; `noise_mk`; `prior` = `GaussianPrior.from_angular_power`
        of `cl`; `monopole_dipole` (N,) the removed part; `fsky` of the visible pixels;
        `num_caps`.
    """
    import healpy as hp

    from manifold_aps.operators import CapMaskGenerator

    root = Path(root) if root else data_dir()
    folder = root / "sphere"
    masked = hp.read_map(
        require_file(folder / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32_masked.fits"),
        field=0,
        dtype=np.float64,
    )
    q32, u32 = hp.read_map(
        require_file(folder / "wmap_band_iqumap_r9_7yr_W_v4_udgraded32.fits"),
        field=(1, 2),
        dtype=np.float64,
    )
    mask32 = hp.read_map(
        require_file(folder / "wmap_temperature_analysis_mask_r9_7yr_v4_udgraded32.fits"),
        field=0,
        dtype=np.float64,
    )
    masked = np.where(mask32 > 0.5, masked, hp.UNSEEN)  # the mask file is the one source of truth
    m = hp.ud_grade(masked, nside, pess=False)
    observed = (hp.ud_grade(mask32, nside) > 0.5) & (m != hp.UNSEEN)
    domain = HealpixSphere(nside)
    holdout = np.zeros(domain.num_nodes, dtype=bool)
    for i in range(num_caps):
        gen = CapMaskGenerator(domain, num_caps=1, cap_area=cap_area)
        for attempt in range(100):
            cap = ~gen.step(1, seed=f"wmap-masked-holdout-{seed}-{i}-{attempt}")["mask"][
                0, :, 0
            ].numpy()
            if observed[cap].mean() >= 0.75 and not (holdout & cap).any():
                break
        else:
            raise RuntimeError(
                f"no cap {i} of area {cap_area} inside the observed sky in 100 draws"
            )
        holdout |= cap & observed
    visible = observed & ~holdout
    mono, dip = hp.fit_dipole(
        np.where(visible, m, hp.UNSEEN), bad=hp.UNSEEN
    )  # least squares on visible pixels
    vec = np.stack(hp.pix2vec(nside, np.arange(domain.num_nodes)), axis=1)
    monopole_dipole = mono + vec @ np.asarray(dip)
    clean = np.where(observed, m - monopole_dipole, 0.0)
    npix = domain.num_nodes
    lmax = 4 * nside - 1
    fsky = float(visible.mean())
    cl = hp.anafast(np.where(visible, clean, 0.0), lmax=lmax) / fsky
    q16 = hp.ud_grade(np.where(mask32 > 0.5, q32, hp.UNSEEN), nside, pess=False)
    u16 = hp.ud_grade(np.where(mask32 > 0.5, u32, hp.UNSEEN), nside, pess=False)
    qu = np.concatenate([q16[visible], u16[visible]])
    noise_mk = float(np.sqrt(np.mean((qu - qu.mean()) ** 2) / 2))
    cl[:2] = noise_mk**2 * 4 * np.pi / npix
    prior = GaussianPrior.from_angular_power(domain, cl)
    return {
        "domain": domain,
        "map": clean,
        "observed": observed,
        "holdout": holdout,
        "visible": visible,
        "cl": cl,
        "noise_mk": noise_mk,
        "prior": prior,
        "monopole_dipole": monopole_dipole,
        "fsky": fsky,
        "num_caps": num_caps,
    }


def _wmap_masked(
    root: Path, nside: int = 16, pool: int = 2048, fills: int = 8, seed: int = 0
) -> PriorDataset:
    from manifold_aps.operators import GaussianNoise, Mask
    from manifold_aps.posterior.gaussian import ExactGaussianPosterior

    prob = wmap_masked_problem(root, nside=nside, seed=seed)
    domain, visible = prob["domain"], torch.from_numpy(prob["visible"])
    y = torch.from_numpy(np.where(prob["visible"], prob["map"], 0.0))[None, :, None]
    posterior = ExactGaussianPosterior(prob["prior"], GaussianNoise(prob["noise_mk"]))
    draws = posterior.sample(
        y, Mask(domain, visible), fills, rng=torch.Generator().manual_seed(seed)
    )[:, 0, :, 0]
    filled = torch.where(
        visible, y[0, :, 0], draws
    ).numpy()  # data where visible, constrained draws elsewhere
    test = torch.from_numpy(prob["map"][None, :, None]).float()
    return PriorDataset(
        "wmap-masked",
        domain,
        TensorSource(
            _rotated_maps(filled, nside, pool, seed + 1), _rotated_maps(filled, nside, 64, seed + 2)
        ),
        test,
        "mK",
        f"WMAP 7-yr W-band I map, nside {nside}, outside the analysis mask and "
        f"{int(prob['holdout'].sum())} held-out "
        f"pixels; hidden pixels filled by {fills} constrained Gaussian realisations; "
        f"{pool} random SO(3) rotations",
        extra={
            "truth_region": prob["observed"],
            "holdout": prob["holdout"],
            "visible": prob["visible"],
            "cl": prob["cl"],
            "noise_mk": prob["noise_mk"],
            "gaussian_prior": prob["prior"],
            "map": prob["map"],
            "num_caps": prob["num_caps"],
        },
    )


def _mesh_signals(mesh: TriangleMesh, name: str, seed: int = 0) -> PriorDataset:
    from manifold_aps.operators import HeatBlur

    ls = 0.1 * np.sqrt(mesh.total_area)
    gp = GaussianPrior(mesh, variance=1.0, length_scale=ls, smoothness=1.5)
    blurs = [HeatBlur(mesh, t * mesh.total_area) for t in (0.002, 0.005, 0.01)]

    def sources(n, g):
        x = torch.zeros(n, mesh.num_nodes, 1, dtype=torch.float64)
        for i in range(n):
            k = int(torch.randint(1, 6, (), generator=g))
            nodes = torch.randint(0, mesh.num_nodes, (k,), generator=g)
            x[i, nodes, 0] = (
                torch.randn(k, generator=g, dtype=torch.float64)
                / mesh.mass[nodes]
                * mesh.mass.mean()
            )
        out = torch.zeros_like(x)
        which = torch.randint(0, len(blurs), (n,), generator=g)
        for j, blur in enumerate(blurs):
            sel = which == j
            if sel.any():
                out[sel] = blur(x[sel])
        return out / out.flatten(1).std(1).clamp_min(1e-12)[:, None, None]

    def draw(n, g):
        half = n // 2
        return torch.cat([gp.sample(half, rng=g), sources(n - half, g)]).float()

    g = torch.Generator().manual_seed(seed)
    train, val, test = draw(4096, g), draw(64, g), draw(64, g)
    return PriorDataset(
        name,
        mesh,
        TensorSource(train, val),
        test,
        "1",
        f"{mesh.name}: Matérn(nu=1.5, l={ls:.3g}) draws and heat-diffused point sources, "
        "4096 training signals",
    )


def _digits(root: Path) -> PriorDataset:
    """scikit-learn's bundled 8x8 digits, bilinearly upsampled to 16x16 on a `PlanarGrid`."""
    from sklearn.datasets import load_digits

    from manifold_aps.geometry import PlanarGrid

    images = (
        torch.from_numpy(load_digits().images).float()[:, None] / 16.0
    )  # (1797, 1, 8, 8) in [0, 1]
    up = torch.nn.functional.interpolate(
        images, size=(16, 16), mode="bilinear", align_corners=False
    )
    signals = up.reshape(-1, 256, 1)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(signals.shape[0], generator=g)
    train, val, test = signals[perm[:1400]], signals[perm[1400:1500]], signals[perm[1500:]]
    return PriorDataset(
        "digits",
        PlanarGrid(16, 16),
        TensorSource(train, val),
        test,
        "1",
        "scikit-learn digits (UCI, 1797 images) upsampled to 16x16; train 1400, val 100, test 297",
    )


def _gaussian(domain: Domain, length_scale: float, name: str) -> PriorDataset:
    prior = GaussianPrior(domain, variance=1.0, length_scale=length_scale, smoothness=1.5)
    test = prior.sample(64, rng=torch.Generator().manual_seed(777)).float()
    return PriorDataset(
        name,
        domain,
        GaussianSource(prior),
        test,
        "1",
        f"draws of a Matérn prior (nu=1.5, l={length_scale:.3g}) on {domain!r}",
        reference=prior,
    )


DATASETS: dict[str, Callable[[Path], PriorDataset]] = {
    "wmap": _wmap,
    "wmap-masked": _wmap_masked,
    "mesh-bunny": lambda root: _mesh_signals(
        TriangleMesh.from_file(require_file(root / "meshes" / "bunny.off")), "mesh-bunny"
    ),
    "mesh-spot": lambda root: _mesh_signals(
        TriangleMesh.from_file(require_file(root / "meshes" / "spot_triangulated.obj")), "mesh-spot"
    ),
    "digits": _digits,
    "gaussian-healpix8": lambda root: _gaussian(HealpixSphere(8), 0.25, "gaussian-healpix8"),
    "gaussian-bumpy": lambda root: _gaussian(
        TriangleMesh.from_file(require_file(root / "meshes" / "bumpy.off")), 1.5, "gaussian-bumpy"
    ),
}


DATASET_ENTRY_POINTS = (
    "manifold_aps.datasets"  # entry-point group of datasets other packages provide
)
SOURCE_ENTRY_POINTS = "manifold_aps.sources"  # entry-point group of builders of a user's own files


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file (hex), read in 1 MiB blocks: which file a prior was trained on."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_train_validation(
    signals: torch.Tensor, val_fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `signals` `(S, N, C)`: the first `1 - val_fraction` train, the rest validate.

    The validation part has at least one signal; the split is contiguous, so that a time series'
    validation steps follow its training ones.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    count = signals.shape[0]
    if count < 2:
        raise ValueError(
            f"a prior needs at least 2 training signals (1 for validation), got {count}"
        )
    num_val = min(count - 1, max(1, int(round(val_fraction * count))))
    return signals[: count - num_val], signals[count - num_val :]


def mesh_signals_dataset(
    mesh: str | os.PathLike,
    signals: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    digest: str | None = None,
) -> PriorDataset:
    """A user's signals on their own mesh: ``manifold-aps train-prior --mesh M --signals S``.

    Arguments:
        mesh: an OFF, OBJ, PLY or STL file (`TriangleMesh.from_file`: vertex order as written).
        signals: an .npz with `signals` `(S, V)` or `(S, V, C)`, optionally `positions` `(V, 3)`
            (the signals' vertex coordinates: rows are matched to the mesh's vertices, so the
            file may list them in another order) and `units` (a string).
        val_fraction: share of the signals held out for validation (the last ones).
        digest: the SHA-256 the signals file must have (a rebuilt dataset: the same file).

    Raises:
        ValueError: a signals array of another vertex count, positions that do not match the mesh's
            vertices, NaN in the signals, a file of another digest.
    """
    mesh, signals = Path(mesh), Path(signals)
    domain = TriangleMesh.from_file(mesh)
    found = checked_digest(signals, digest)
    x, _, units = read_signals(signals, domain, mesh.name, channels=True)
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"{signals}: the training signals hold NaN or infinity; train on complete signals"
        )
    v = domain.num_nodes
    train, val = split_train_validation(torch.from_numpy(x).float(), val_fraction)
    source = {
        "builder": "mesh-signals",
        "args": {
            "mesh": str(mesh),
            "signals": str(signals),
            "val_fraction": val_fraction,
            "digest": found,
        },
    }
    return PriorDataset(
        f"{signals.stem} on {mesh.name}",
        domain,
        TensorSource(train, val),
        torch.zeros(0, v, x.shape[2]),
        units,
        f"{x.shape[0]} signals of {signals.name} on {mesh.name} ({v} vertices); "
        f"last {val.shape[0]} for validation",
        extra={"source": source},
    )


HEALPIX_AUGMENTATIONS = ("auto", "so3", "none")  # healpix_maps_dataset's `augment`


def read_healpix_fits(path: str | os.PathLike, *, what: str = "map", field: int | None = None):
    """The maps of a HEALPix FITS file, in the ordering its header names.

    Arguments:
        path: the FITS file (healpy; a partial-sky file has UNSEEN outside its pixels).
        what: what the file is, for messages ("map", "mask").
        field: the column to read, or None: every column.

    Returns:
        `(maps (K, N) float64, nest, header)`: `nest` True for ``ORDERING = NESTED``, the header as
        a dict. UNSEEN and NaN are kept.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that healpy does not read as a HEALPix map.
    """
    import healpy as hp

    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        maps, header = hp.read_map(str(path), field=field, nest=None, h=True, dtype=np.float64)
    except Exception as err:  # astropy/healpy raise many kinds for a file that is not a map
        raise ValueError(f"{path} is not a HEALPix FITS map ({type(err).__name__}: {err})") from err
    header = dict(header)
    nest = str(header.get("ORDERING", "RING")).upper().startswith("NEST")
    return np.atleast_2d(np.asarray(maps, dtype=np.float64)), nest, header


def healpix_maps_dataset(
    maps: str | os.PathLike | list,
    *,
    val_fraction: float = 0.1,
    augment: str = "auto",
    digests: list | None = None,
) -> PriorDataset:
    """A user's HEALPix maps: ``manifold-aps train-prior --healpix MAPS.fits [MORE.fits ...]``.

    Every column of every file is one training map (files in the order given, columns in file
    order); all must have one nside. Each file's ordering is read from its header; the domain is
    `HealpixSphere(nside)` in the first file's ordering and the other files are reordered to it.
    A map with UNSEEN or NaN pixels is left out (the description names it): the prior learns
    full-sky maps.

    Arguments:
        maps: the FITS files.
        val_fraction: share of the maps held out for validation (the last ones).
        augment: "so3" (every training batch turned by random rotations in SO(3): `SO3Rotations`,
            exact on the maps' harmonics up to lmax = 3 nside - 1, which keeps their angular power
            spectrum), "none", or "auto" (so3: the maps trained on are full-sky).
        digests: the SHA-256 each file must have (a rebuilt dataset: the same files).

    Raises:
        ValueError: a file that is not a HEALPix map, maps of different nsides, no full-sky map,
            fewer than 2 full-sky maps, another file's digest, an unknown `augment`.
    """
    import healpy as hp

    paths = [Path(maps)] if isinstance(maps, (str, os.PathLike)) else [Path(m) for m in maps]
    if not paths:
        raise ValueError("healpix_maps_dataset needs at least one FITS file")
    if augment not in HEALPIX_AUGMENTATIONS:
        raise ValueError(
            f"augment must be one of {list(HEALPIX_AUGMENTATIONS)} for HEALPix maps, "
            f"got {augment!r}"
        )
    if digests is not None and len(digests) != len(paths):
        raise ValueError(f"{len(digests)} digests for {len(paths)} files")
    found, kept, left_out, units = [], [], [], ""
    nside = nest = None
    for i, path in enumerate(paths):
        found.append(checked_digest(path, None if digests is None else digests[i]))
        read, file_nest, header = read_healpix_fits(path)
        file_nside = hp.npix2nside(read.shape[1])
        if nside is None:
            nside, nest = file_nside, file_nest
            units = str(header.get("TUNIT1", header.get("TUNIT", "")) or "")
        elif file_nside != nside:
            raise ValueError(
                f"{path} holds maps of nside {file_nside}, {paths[0]} of nside {nside}: "
                "train on maps of one nside (healpy.ud_grade one of them)"
            )
        if file_nest != nest:
            read = hp.reorder(read, n2r=file_nest, r2n=not file_nest)
        names = [str(header.get(f"TTYPE{k + 1}", k + 1)) for k in range(read.shape[0])]
        for m, name in zip(read, names, strict=True):
            full_sky = np.all(np.isfinite(m) & ~np.isclose(m, hp.UNSEEN))
            (kept if full_sky else left_out).append(m if full_sky else f"{path.name}[{name}]")
    if not kept:
        raise ValueError(
            f"no map of {', '.join(str(p) for p in paths)} is full-sky (each has UNSEEN or NaN "
            "pixels); a prior trains on complete maps"
        )
    x = torch.from_numpy(np.stack(kept)[:, :, None]).float()
    train, val = split_train_validation(x, val_fraction)
    rotate = augment in ("so3", "auto")
    files = ", ".join(p.name for p in paths)
    source = {
        "builder": "healpix-maps",
        "args": {
            "maps": [str(p) for p in paths],
            "val_fraction": val_fraction,
            "augment": augment,
            "digests": found,
        },
    }
    return PriorDataset(
        f"HEALPix maps of {files}",
        HealpixSphere(nside, nest=nest),
        TensorSource(train, val, SO3Rotations(nside, nest=nest) if rotate else None),
        torch.zeros(0, x.shape[1], 1),
        units,
        f"{x.shape[0]} HEALPix maps of {files} (nside {nside}, {'NESTED' if nest else 'RING'}), "
        f"{train.shape[0]} training + {val.shape[0]} validation"
        + (f"; {len(left_out)} not full-sky left out: {', '.join(left_out)}" if left_out else "")
        + f"; augmentation: {'random SO(3) rotations' if rotate else 'none'}",
        extra={"source": source},
    )


def checked_digest(path: Path, expected: str | None) -> str:
    """`file_digest(path)`, refused when it is not `expected` (None: any).

    A dataset rebuilt from a checkpoint's record must read the very file it was trained on.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another file's digest.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    found = file_digest(path)
    if expected is not None and found != expected:
        raise ValueError(
            f"{path} is not the file the prior was trained on "
            f"(SHA-256 {found[:12]}..., not {expected[:12]}...)"
        )
    return found


def read_signals(path: Path, domain: Domain, mesh_name: str, *, channels: bool):
    """The `signals` of an .npz on `domain`'s vertices, in the domain's vertex order.

    Arguments:
        path: the .npz: `signals` `(S, V)` (or `(S, V, C)` with `channels`; one `(V,)` signal
            without), optionally `positions` `(V, 3)` (rows matched to the vertices: `vertex_order`)
            and `units` (a string).
        domain: the mesh.
        mesh_name: the mesh's name for messages.
        channels: return `(S, V, C)` (a 2-D array gains a channel axis), else `(S, V)`.

    Returns:
        `(signals, order, units)`, `order[i]` the file's row of vertex `i` (the identity without
        `positions`); NaN is kept.

    Raises:
        FileNotFoundError, ValueError: no file, no `signals` array, another vertex count,
            positions that are not the vertices.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"signals file not found: {path}")
    with np.load(path, allow_pickle=False) as z:
        if "signals" not in z:
            raise ValueError(f"{path} has no 'signals' array (it has {sorted(z.files)})")
        x = np.asarray(z["signals"], dtype=np.float64)
        positions = np.asarray(z["positions"], dtype=np.float64) if "positions" in z else None
        units = str(z["units"]) if "units" in z else ""
    v = domain.num_nodes
    if channels:
        given = x.shape
        x = x[:, :, None] if x.ndim == 2 else x
        if x.ndim != 3 or x.shape[1] != v:
            raise ValueError(
                f"{path}: signals must have shape (S, V={v}) or (S, V, C) for {mesh_name}, "
                f"got {given}"
            )
    else:
        x = np.atleast_2d(x)
        if x.ndim != 2 or x.shape[1] != v:
            raise ValueError(
                f"{path}: signals must have shape (S, V={v}) for {mesh_name}, got {x.shape}"
            )
    order = (
        np.arange(v) if positions is None else vertex_order(domain, positions, f"{path} positions")
    )
    return x[:, order], order, units


def vertex_order(domain: Domain, positions: np.ndarray, what: str) -> np.ndarray:
    """`order` with `positions[order[i]]` the mesh's vertex `i`.

    Rows given in another order are matched to the vertices (each exactly once, within 1e-6 of
    the mesh's size).

    Raises:
        ValueError: another count of positions, or positions that are not the mesh's vertices.
    """
    from scipy.spatial import cKDTree

    vertices = domain.positions.numpy()
    if positions.shape != vertices.shape:
        raise ValueError(
            f"{what} must have shape {vertices.shape} (the mesh's vertices), got {positions.shape}"
        )
    distance, order = cKDTree(positions).query(vertices)
    tolerance = 1e-6 * float(np.ptp(vertices, axis=0).max())
    if distance.max() > tolerance or np.unique(order).size != order.size:
        worst = int(np.argmax(distance))
        raise ValueError(
            f"{what} are not the mesh's vertices: "
            f"vertex {worst} at {vertices[worst].round(6).tolist()} is "
            f"{distance[worst]:.3g} from the nearest position (tolerance {tolerance:.3g})"
        )
    return order


SOURCES = {
    "mesh-signals": mesh_signals_dataset,
    "healpix-maps": healpix_maps_dataset,
}  # builders of a user's files; `climate` adds "grid-file"


def dataset_from_source(source: dict, **overrides) -> PriorDataset:
    """Rebuild the dataset a checkpoint's `data["source"]` (`{"builder", "args"}`) describes.

    `overrides` replace some of its arguments (e.g. another path to the same file).

    Raises:
        ValueError: an unknown builder (its package not installed).
    """
    from importlib.metadata import entry_points

    name = source["builder"]
    builder = SOURCES.get(name)
    if builder is None:
        found = {ep.name: ep for ep in entry_points(group=SOURCE_ENTRY_POINTS)}
        if name not in found:
            raise ValueError(
                f"no data source builder {name!r} is installed "
                f"(known: {sorted({*SOURCES, *found})})"
            )
        builder = found[name].load()
    return builder(**{**source["args"], **overrides})


def _plugin_datasets() -> dict[str, object]:
    """Datasets registered by installed packages under the `DATASET_ENTRY_POINTS` group.

    (`climate` registers ``era5-uk`` and ``era5-global``.) They are entry points, loaded on use:
    the core package never imports the packages built on it.
    """
    from importlib.metadata import entry_points

    return {
        ep.name: ep for ep in entry_points(group=DATASET_ENTRY_POINTS) if ep.name not in DATASETS
    }


def dataset_names() -> list[str]:
    """Every dataset `build_prior_dataset` knows: this module's `DATASETS` and registered ones."""
    return sorted({*DATASETS, *_plugin_datasets()})


def build_prior_dataset(name: str, root: str | os.PathLike | None = None) -> PriorDataset:
    """Build a named dataset (`dataset_names()`) from the shared data folder.

    Arguments:
        name: the dataset's name, one of `dataset_names()`.
        root: the shared data folder; None: `data_dir()`.
    """
    plugins = _plugin_datasets()
    if name in DATASETS:
        builder = DATASETS[name]
    elif name in plugins:
        builder = plugins[name].load()
    else:
        raise ValueError(f"dataset must be one of {dataset_names()}, got {name!r}")
    return builder(Path(root) if root else data_dir())
