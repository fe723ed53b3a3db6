"""Reconstruct signals on any domain from their observed values, with any engine.

What `manifold-aps reconstruct` runs on a user's mesh (or any `Domain`): signals `(S, N)` with
NaN where unobserved go in; the posterior mean, std and samples come out, the observed values
kept exactly (std 0 there).

Engines (`ENGINES` of `manifold_aps.posterior.engines`, plus two point estimates):

* ``gaussian`` (default): a Whittle-Matérn GMRF whose range, std and nugget maximise the exact
  marginal likelihood of the observed values themselves (no training signals; the values are
  standardised by the mean and std of all observed values), then its exact posterior per signal
  (`GMRFObservation`: sparse Cholesky, exact or RBMC marginal variances, perturb-and-solve
  samples).
* ``harmonic`` / ``nearest``: `HarmonicInterpolation` / `NearestNeighbour` (geodesic along edges)
  point estimates: no std (NaN) and no samples.
* ``dps`` (diffusion posterior sampling) and ``daps`` (decoupled annealing, 20 network passes a
  sample, nothing tuned): a `train-prior` checkpoint; ``aps``, ``implicit``, ``avi``: a
  `distill` checkpoint. The checkpoint must have been trained on this very domain
  (fingerprints compared, both named otherwise); the std is that of the samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from manifold_aps.geometry import Domain
from manifold_aps.operators import Mask
from manifold_aps.posterior.divergence import DIVERGENCE_HINTS, warn_if_diverged

__all__ = [
    "POINT_ESTIMATES",
    "Reconstruction",
    "in_checkpoint_ordering",
    "reconstruct",
    "reconstruction_engines",
]

POINT_ESTIMATES = ("harmonic", "nearest")


def reconstruction_engines() -> list[str]:
    """Every engine `reconstruct` takes: the registry's, then the point estimates."""
    from manifold_aps.posterior.engines import engine_names

    return [*engine_names(), *POINT_ESTIMATES]


@dataclass
class Reconstruction:
    """A reconstruction of `S` signals on `N` nodes.

    Attributes:
        mean: posterior mean (or point estimate) `(S, N)`, the observed values exact.
        std: posterior std `(S, N)`, 0 where observed; NaN for point estimates.
        samples: `(n, S, N)` posterior samples (observed values exact); `(0, S, N)` for point
            estimates.
        observed: `(S, N)` boolean, True = observed.
        engine: the engine's name.
        details: one line on what ran (fitted hyper-parameters, checkpoint).
        fit: the gaussian engine's `GMRFFit` (of the standardised values `(x - centre) / scale`)
            and its `(centre, scale)`; None for the others.
    """

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray
    observed: np.ndarray
    engine: str
    details: str
    fit: tuple | None = None


def _gaussian(
    domain: Domain,
    values: np.ndarray,
    observed: np.ndarray,
    n: int,
    rng: np.random.Generator,
    alpha: int,
    progress: bool,
):
    from manifold_aps.posterior.gmrf import GMRFObservation
    from manifold_aps.posterior.gmrf_fit import fit_gmrf

    seen = values[observed]
    centre, scale = float(seen.mean()), float(seen.std()) or 1.0
    z = np.where(observed, (values - centre) / scale, 0.0)
    fit = fit_gmrf(domain, z, observed, alpha=alpha, progress=progress)
    means, stds = np.empty_like(z), np.empty_like(z)
    samples = np.empty((n, *z.shape))
    factored: dict[bytes, GMRFObservation] = {}
    for s in range(z.shape[0]):
        idx = np.flatnonzero(observed[s])
        key = idx.tobytes()
        if key not in factored:
            factored[key] = GMRFObservation(fit.prior, idx, 0.0, fit.nugget)
        obs = factored[key]
        means[s] = obs.mean(z[s, idx])
        stds[s] = np.sqrt(obs.variance())
        samples[:, s] = obs.sample(z[s, idx], n, rng=rng)
    details = (
        f"GMRF alpha {alpha} fitted to the {int(observed.sum())} observed values "
        f"({fit.evaluations} likelihood evaluations): range {fit.prior.range:.4g} (domain units), "
        f"std {scale * fit.prior.std:.4g}, nugget std {scale * math.sqrt(fit.nugget):.3g}"
    )
    return (
        centre + scale * means,
        scale * stds,
        centre + scale * samples,
        details,
        (fit, centre, scale),
    )


def _learned(
    domain: Domain,
    engine: str,
    checkpoint,
    values,
    observed,
    n,
    seed,
    noise_std,
    dps_steps,
    guidance,
    daps_steps,
    daps_covariance,
    progress,
):
    from manifold_aps.posterior.engines import (
        ENGINES,
        ZERO_SHOT_ENGINES,
        daps_inner_covariance,
        load_trained_engine,
        zero_shot_sampler,
    )
    from manifold_aps.training import checkpoint_domain, load_checkpoint

    if checkpoint is None:
        raise ValueError(
            f"--engine {engine} needs --checkpoint (a {ENGINES[engine].checkpoint_kind!r} file)"
        )
    ckpt = load_checkpoint(checkpoint)
    if ckpt["kind"] != ENGINES[engine].checkpoint_kind:
        raise ValueError(
            f"{checkpoint} holds a {ckpt['kind']!r}, "
            f"not a {ENGINES[engine].checkpoint_kind!r} for --engine {engine}"
        )
    checkpoint_domain(ckpt, checkpoint, domain)  # another mesh or grid: refused, both named
    if engine in ZERO_SHOT_ENGINES:
        from manifold_aps.priors.train import load_prior

        prior = load_prior(checkpoint, domain)
        inner = None
        if engine == "daps":
            inner = daps_inner_covariance(
                daps_covariance, prior, checkpoint, daps_steps, progress=progress
            )
        sampler, settings = zero_shot_sampler(
            engine,
            prior,
            noise_std,
            dps_steps=dps_steps,
            guidance=guidance,
            daps_steps=daps_steps,
            inner_covariance=inner,
        )
        details = f"{settings}, noise std {noise_std:g}, with {checkpoint}"
    else:
        _, sampler, _, _ = load_trained_engine(checkpoint)
        details = f"{ENGINES[engine].title} {checkpoint} (noise std {sampler.noise.sigma:g})"
    mask = torch.from_numpy(observed)[..., None]
    y = torch.from_numpy(np.where(observed, values, 0.0))[..., None]
    drawn = sampler.sample(y, Mask(domain, mask), n, rng=torch.Generator().manual_seed(seed))
    warn_if_diverged(drawn, sampler, ENGINES[engine].title, hint=DIVERGENCE_HINTS.get(engine, ""))
    if engine == "dps" and sampler.tuning_summary():  # what guidance="auto" chose
        details += f"; {sampler.tuning_summary()}"
    samples = drawn.detach().double()[..., 0].numpy()
    return samples.mean(0), samples.std(0, ddof=1), samples, details


def reconstruct(
    domain: Domain,
    values,
    observed=None,
    *,
    engine: str = "gaussian",
    checkpoint: str | os.PathLike | None = None,
    samples: int = 16,
    seed: int = 0,
    alpha: int = 2,
    noise_std: float = 0.1,
    dps_steps: int = 1000,
    guidance: float | str = "auto",
    daps_steps: int = 20,
    daps_covariance: str = "white",
    progress: bool = False,
) -> Reconstruction:
    """Posterior mean, std and samples of signals on `domain` from their observed values.

    Arguments:
        domain: the domain, `N` nodes.
        values: `(S, N)` or `(N,)`; NaN marks an unobserved value (unless `observed` is given).
        observed: optional boolean of the same shape, True = observed (values elsewhere ignored).
        engine: see the module docstring (`reconstruction_engines()`).
        checkpoint: the `train-prior` (dps, daps) or `distill` (aps, implicit, avi) checkpoint.
        samples: posterior samples per signal (>= 2 for the sampling engines: their std is the
            samples'; ignored by the point estimates).
        seed: seed of the samples.
        alpha: the gaussian engine's smoothness order (1, 2, 3; nu = alpha - 1).
        noise_std: the zero-shot engines' (DPS, DAPS) observation noise std, signal units (the
            distilled engines keep theirs).
        dps_steps: DPS's reverse-diffusion steps.
        guidance: DPS's guidance step size, or "auto" (tuned on held-out observed values:
            `manifold_aps.DPS`).
        daps_steps: DAPS's annealing levels, its network passes per sample (`manifold_aps.DAPS`).
        daps_covariance: DAPS's inner Gaussian: "white", or "laplacian" / "eof", fitted on the
            checkpoint's training signals (`manifold_aps.posterior.engines.daps_inner_covariance`).
        progress: a bar over the gaussian engine's likelihood evaluations (and DAPS's fit).

    Raises:
        ValueError: shapes that do not match the domain, a signal with no observed value,
            non-finite observed values, an unknown engine, a checkpoint of another kind or domain.
    """
    engines = reconstruction_engines()
    if engine not in engines:
        raise ValueError(f"engine must be one of {engines}, got {engine!r}")
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n_nodes = domain.num_nodes
    if values.ndim != 2 or values.shape[1] != n_nodes:
        raise ValueError(
            f"values must have shape (S, N={n_nodes}) for {domain!r}, got {values.shape}"
        )
    observed = (
        np.isfinite(values) if observed is None else np.atleast_2d(np.asarray(observed, dtype=bool))
    )
    if observed.shape != values.shape:
        raise ValueError(
            f"observed must have the shape of values {values.shape}, got {observed.shape}"
        )
    if not observed.any(axis=1).all():
        raise ValueError(
            f"signal {int(np.flatnonzero(~observed.any(axis=1))[0])} has no observed value"
        )
    if not np.all(np.isfinite(values[observed])):
        raise ValueError("observed values hold NaN or infinity; mark them unobserved")
    sampling = engine not in POINT_ESTIMATES
    if sampling and engine != "gaussian" and samples < 2:
        raise ValueError(
            f"--samples must be at least 2 for {engine} (its std is that of its samples), "
            f"got {samples}"
        )
    fit = None
    if engine == "gaussian":
        mean, std, draws, details, fit = _gaussian(
            domain, values, observed, samples, np.random.default_rng(seed), alpha, progress
        )
    elif sampling:
        mean, std, draws, details = _learned(
            domain,
            engine,
            checkpoint,
            values,
            observed,
            samples,
            seed,
            noise_std,
            dps_steps,
            guidance,
            daps_steps,
            daps_covariance,
            progress,
        )
    else:
        from manifold_aps.posterior.classical import HarmonicInterpolation, NearestNeighbour

        filler = (HarmonicInterpolation if engine == "harmonic" else NearestNeighbour)(domain)
        y = torch.from_numpy(np.where(observed, values, 0.0))[..., None]
        mean = filler.estimate(y, Mask(domain, torch.from_numpy(observed)[..., None]))[
            ..., 0
        ].numpy()
        std, draws = np.full_like(mean, np.nan), np.empty((0, *mean.shape))
        details = f"{type(filler).__name__} (a point estimate: no std, no samples)"
    mean, draws = np.where(observed, values, mean), np.where(observed, values, draws)
    std = np.where(observed, 0.0, std)
    return Reconstruction(mean, std, draws, observed, engine, details, fit)


def parse_hiding(text: str | None) -> float | None:
    """`--mask random:F` -> F, the share of observed values hidden to score the reconstruction."""
    if text is None:
        return None
    kind, _, share = text.partition(":")
    try:
        fraction = float(share)
    except ValueError:
        fraction = -1.0
    if kind != "random" or not 0 < fraction < 1:
        raise ValueError(
            "--mask takes random:F with F in (0, 1) (the share of observed values hidden), "
            f"got {text!r}"
        )
    return fraction


def read_mesh_signals(mesh, signals, observed=None):
    """The mesh and the signals to reconstruct, in the mesh's vertex order.

    Arguments:
        mesh: OFF, OBJ, PLY or STL file.
        signals: .npz with `signals` `(S, V)` (NaN = unobserved) and optionally `positions`
            `(V, 3)` (rows matched to the mesh's vertices).
        observed: optional .npz with `observed` `(S, V)` (True = observed), rows as in `signals`.

    Returns:
        `(domain, values (S, V), observed (S, V), order)`: `order[i]` is the file's row of vertex
        `i` (identity without `positions`).
    """
    from pathlib import Path

    from manifold_aps.datasets import read_signals
    from manifold_aps.geometry import TriangleMesh

    domain = TriangleMesh.from_file(mesh)
    values, order, _ = read_signals(signals, domain, Path(mesh).name, channels=False)
    seen = np.isfinite(values)
    if observed is not None:
        with np.load(observed, allow_pickle=False) as z:
            if "observed" not in z:
                raise ValueError(f"{observed} has no 'observed' array (it has {sorted(z.files)})")
            seen = np.atleast_2d(np.asarray(z["observed"]))
        if seen.shape != values.shape or seen.dtype != bool:
            raise ValueError(
                f"{observed}: observed must be boolean of shape {values.shape}, "
                f"got {seen.dtype} {seen.shape}"
            )
        seen = seen[:, order]  # the file's rows -> the mesh's vertices
    return domain, values, seen, order


def scores(rec: Reconstruction, truth: np.ndarray, hidden: np.ndarray) -> dict:
    """RMSE over `hidden` `(S, N)`; for engines with a std, the 90 % coverage of N(mean, std^2)."""
    err = (rec.mean - truth)[hidden]
    out = {"rmse": float(np.sqrt(np.mean(err**2))), "hidden": int(hidden.sum())}
    if np.isfinite(rec.std[hidden]).all():
        out["coverage_90"] = float(np.mean(np.abs(err) <= 1.6448536 * rec.std[hidden]))
    return out


def read_healpix_map(path, mask=None, *, field: int = 0):
    """A HEALPix map to reconstruct: `(domain, values (1, N), observed (1, N), units)`.

    The ordering (RING/NESTED) is the file's header's; UNSEEN and NaN pixels are unobserved, and
    with `mask` (a FITS map of the same nside, 1 = observed, in either ordering) so are the
    pixels it sets to 0.

    Raises:
        ValueError: not a HEALPix map, a mask of another nside.
    """
    import healpy as hp

    from manifold_aps.datasets import read_healpix_fits
    from manifold_aps.geometry import HealpixSphere

    def read(p, what):
        maps, nest, header = read_healpix_fits(p, what=what, field=field if what == "map" else 0)
        return maps[0], nest, header

    values, nest, header = read(path, "map")
    nside = hp.npix2nside(values.size)
    observed = np.isfinite(values) & ~np.isclose(values, hp.UNSEEN)
    if mask is not None:
        m, mask_nest, _ = read(mask, "mask")
        if m.size != values.size:
            raise ValueError(
                f"{mask} is a mask of nside {hp.npix2nside(m.size)}, "
                f"the map {path} has nside {nside}"
            )
        if mask_nest != nest:
            m = hp.reorder(m, n2r=mask_nest, r2n=not mask_nest)
        observed &= m > 0.5
    values = np.where(observed, values, np.nan)
    units = str(header.get("TUNIT1", header.get("TUNIT", "")) or "")
    return HealpixSphere(nside, nest=nest), values[None], observed[None], units


def in_checkpoint_ordering(domain, values, observed, checkpoint):
    """A HEALPix map in the pixel ordering of the map a checkpoint was trained on.

    A map of the checkpoint's nside in the other ordering (RING for NESTED or back) has its
    pixels reordered, and the result is the checkpoint's domain; any other map or domain comes back
    as it is (the engine then refuses another domain, naming both).

    Arguments:
        domain: the map's `HealpixSphere` (or any domain).
        values: `(S, N)` in `domain`'s ordering.
        observed: `(S, N)` boolean, likewise.
        checkpoint: a `train-prior` or `distill` checkpoint.

    Returns:
        `(domain, values, observed)`, in the checkpoint's ordering where it applies.
    """
    import healpy as hp

    from manifold_aps.geometry import HealpixSphere
    from manifold_aps.training import checkpoint_domain, load_checkpoint

    trained = checkpoint_domain(load_checkpoint(checkpoint), checkpoint)
    if not (isinstance(domain, HealpixSphere) and isinstance(trained, HealpixSphere)):
        return domain, values, observed
    if trained.nside != domain.nside or trained.nest == domain.nest:
        return domain, values, observed
    pixels = np.arange(trained.num_nodes)
    source = (
        hp.nest2ring(trained.nside, pixels) if trained.nest else hp.ring2nest(trained.nside, pixels)
    )  # the map's pixel of each of the checkpoint's pixels
    return trained, values[:, source], observed[:, source]


def write_healpix_fits(path, rec: Reconstruction, domain, units: str = "") -> None:
    """Write MEAN, STD and OBSERVED (1/0) of the first signal as a HEALPix FITS map, atomically.

    The map is in the domain's ordering.
    """
    import healpy as hp

    from manifold_aps.checkpoint import atomic_path

    with atomic_path(path) as tmp:
        hp.write_map(
            str(tmp),
            [rec.mean[0], rec.std[0], rec.observed[0].astype(np.float64)],
            nest=domain.nest,
            column_names=["MEAN", "STD", "OBSERVED"],
            column_units=[units, units, ""],
            dtype=np.float64,
            overwrite=True,
        )
