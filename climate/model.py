"""Imputation models: a posterior engine on a field's grid, in physical units, with its statistics.

An `ImputationModel` is what `climate.impute` needs: the variable it was made for (name and
units), the latitude-longitude grid, the normalisation statistics fitted on training data, and
a posterior engine of `manifold_aps.posterior` (exact Gaussian, DPS or APS). It maps physical
observations to the engine's space and the samples back, so callers never normalise by hand.

Three kinds, one interface:

* ``gaussian``: `GaussianImputer.fit(train)` fits an hour-of-day climatology and a per-cell
  standard deviation (the `FieldStandardizer`) and a sparse Whittle-Matérn GMRF (SPDE) of the
  standardised anomalies by maximum likelihood (`fit_to_observations` fits it to the observed
  values of gappy fields instead); its exact posterior has no size limit. Saved with `save`.
* ``dps``: a score prior trained with `manifold-aps train-prior` on the field's grid, sampled by
  diffusion posterior sampling. Its normalisation lives in the prior's checkpoint.
* ``aps``: a flow distilled with `manifold-aps distill`; one flow pass per sample.
* ``implicit``: a generator distilled with `manifold-aps distill --engine implicit`; one pass.
* ``avi``: a few-step guided sampler with an amortized inner VI (`distill --engine avi`).

`load_model(path)` opens any of the three checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from climate.era5 import grid_domain, spatial_dims, to_signal
from climate.masks import EARTH_RADIUS_KM, align_mask
from climate.schema import LATITUDE, TIME
from manifold_aps.checkpoint import atomic_path
from manifold_aps.geometry import HealpixSphere, SphereGrid
from manifold_aps.geometry.spec import domain_from_spec, domain_spec
from manifold_aps.operators import Mask
from manifold_aps.posterior import GMRFObservation, fit_gmrf
from manifold_aps.posterior.divergence import DIVERGENCE_HINTS, sampler_scale, warn_if_diverged
from manifold_aps.posterior.engines import ENGINES as REGISTRY
from manifold_aps.posterior.engines import (
    ZERO_SHOT_ENGINES,
    daps_inner_covariance,
    engine_for_checkpoint,
    engine_names,
    zero_shot_sampler,
)
from manifold_aps.posterior.gmrf_fit import COARSE_START_NODES, coarser_problem
from manifold_aps.priors import MaternGMRF
from manifold_aps.priors.gmrf import ALPHAS
from manifold_aps.training import read_weights_file

__all__ = [
    "ENGINES",
    "Channel",
    "FieldStandardizer",
    "GaussianImputer",
    "ImputationModel",
    "Posterior",
    "ScoreImputer",
    "channels_text",
    "load_model",
]

KIND = "climate-gaussian"
ENGINES = tuple(engine_names())  # the registry of manifold_aps.posterior.engines
# GaussianImputer's per-field covariance: the scale re-estimated from the observed values, the
# training's as is, or range, std and nugget re-fitted to the observed values
VARIANCE_SCALES = ("observed", "fitted", "refit")


@dataclass(frozen=True)
class Channel:
    """One channel of a model's signals: a variable, its units, and where it was taken.

    A prior trained with `train-prior --input FILE --var A B` has one channel per variable, in
    the order given; `--channels-from level=500,850` makes one per variable and level (the
    variable's levels in the order given, then the next variable's). The checkpoint's `data`
    description lists them (`channel_fields`: `to_dict` of each).

    Attributes:
        variable: the variable's name in the file, e.g. "t2m".
        units: its units, e.g. "K" ("" when the file gave none).
        select: `(dim, value)` pairs of the dimension the channel was taken at, e.g.
            `(("level", 500),)`; empty for a variable of its own.
    """

    variable: str
    units: str = ""
    select: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        """The channel in words: "t2m", or "t[level=500]"."""
        at = ",".join(f"{dim}={value}" for dim, value in self.select)
        return f"{self.variable}[{at}]" if at else self.variable

    def to_dict(self) -> dict:
        """Plain types for a checkpoint: `{"variable", "units", "select": {dim: value}}`."""
        return {"variable": self.variable, "units": self.units, "select": dict(self.select)}

    @classmethod
    def from_dict(cls, data: dict) -> Channel:
        """Inverse of `to_dict`."""
        return cls(
            str(data["variable"]), str(data.get("units", "")), tuple(data.get("select", {}).items())
        )

    @classmethod
    def of(cls, da: xr.DataArray, dim: str | None = None) -> Channel:
        """The channel of a field `da` (its name and units) taken at its scalar coordinate `dim`."""
        select = ()
        if dim is not None:
            value = da[dim].values.item()
            select = ((dim, value if isinstance(value, (int, float, str)) else str(value)),)
        return cls(str(da.name), str(da.attrs.get("units", "")), select)

    def matches(self, other: Channel) -> bool:
        """Whether `other` is this channel: the same variable and the same `select` values."""
        if self.variable != other.variable or len(self.select) != len(other.select):
            return False
        for (dim, value), (dim2, value2) in zip(self.select, other.select, strict=True):
            if dim != dim2:
                return False
            numbers = all(isinstance(v, (int, float)) for v in (value, value2))
            if not (np.isclose(value, value2) if numbers else str(value) == str(value2)):
                return False
        return True


def channels_text(channels) -> str:
    """Channels in words for messages: "[t2m (K), msl (Pa)]"."""
    return "[" + ", ".join(f"{c.label} ({c.units or 'no units'})" for c in channels) + "]"


@dataclass
class Posterior:
    """Posterior of a batch of fields, physical units; observed cells are not yet restored.

    Attributes:
        samples: `(S, B, N, C)`.
        mean: `(B, N, C)`; exact for the Gaussian engine, the sample mean otherwise.
        std: `(B, N, C)`; exact for the Gaussian engine, the sample standard deviation otherwise.
    """

    samples: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _hours(times) -> np.ndarray:
    """Hour of day `(B,)` of numpy datetime64 `times` (0 when there is no time)."""
    if times is None:
        return np.zeros(1, dtype=np.int64)
    return (np.asarray(times).astype("datetime64[h]").astype(np.int64) % 24).astype(np.int64)


MIN_DIURNAL_HOURS = 4  # distinct UTC hours needed to fit the diurnal harmonic (3 coefficients)
MAX_DIURNAL_GAP_H = 8  # ... and no gap between them longer than this around the clock


def _covers_the_day(hours: set[int]) -> bool:
    """Whether steps at these UTC hours determine a diurnal harmonic.

    They do with at least `MIN_DIURNAL_HOURS` distinct hours, none more than `MAX_DIURNAL_GAP_H`
    from the next around the clock (8 consecutive hours do not: the fit would extrapolate over the
    other 16).
    """
    ordered = sorted(hours)
    if len(ordered) < MIN_DIURNAL_HOURS:
        return False
    gaps = np.diff(ordered + [ordered[0] + 24])
    return int(gaps.max()) <= MAX_DIURNAL_GAP_H


def _diurnal_basis(hours: np.ndarray) -> np.ndarray:
    """`(len(hours), 3)`: 1, cos and sin of the first diurnal harmonic at UTC `hours`."""
    phase = 2 * np.pi * np.asarray(hours, dtype=np.float64) / 24
    return np.stack([np.ones_like(phase), np.cos(phase), np.sin(phase)], axis=1)


class FieldStandardizer:
    r"""Per-cell standardisation :math:`z = (x - \mu_{h(t)}) / s`, fitted on training fields.

    :math:`\mu_h` is the diurnal cycle of each cell at UTC hour `h`: the training mean at each
    hour when all 24 are present (hourly data); else, when the training steps' hours cover the
    day (`MIN_DIURNAL_HOURS` distinct hours, no gap over `MAX_DIURNAL_GAP_H`: 6-hourly, 7-hourly
    data), the least-squares fit of the
    first diurnal harmonic :math:`a + b\cos(2\pi h/24) + c\sin(2\pi h/24)` per cell; else (daily
    data, or `by_hour` False) one overall mean. :math:`s` is the per-cell standard deviation of
    the anomalies (with 3 degrees of freedom removed for the harmonic fit). On 18 7-hourly ERA5
    steps (global 1 degree, `benchmarks/gmrf_era5.py`) the harmonic took the GMRF imputation's
    RMSE from 0.79 to 0.75 K with 70 % hidden at random, and from 2.97 to 2.49 K under swaths.

    Arguments:
        mean: `(H, N)` climatology, physical units; `H = 24` (by hour of day) or 1.
        scale: `(N,)` anomaly standard deviation, physical units, `> 0`.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        mean, scale = np.asarray(mean, dtype=np.float64), np.asarray(scale, dtype=np.float64)
        if mean.ndim != 2 or mean.shape[0] not in (1, 24) or scale.shape != mean.shape[1:]:
            raise ValueError(
                f"mean must be (1 or 24, N) and scale (N,), got {mean.shape}, {scale.shape}"
            )
        if not np.all(scale > 0) or not np.all(np.isfinite(mean)):
            raise ValueError("scale must be positive and mean finite everywhere")
        self.mean, self.scale = mean, scale

    @classmethod
    def fit(cls, train: xr.DataArray, *, by_hour: bool = True) -> FieldStandardizer:
        """Fit on complete training fields `train(time, latitude, longitude)`."""
        return cls.fit_signal(
            to_signal(train)[0], train[TIME].values if TIME in train.dims else None, by_hour=by_hour
        )

    @classmethod
    def fit_signal(cls, signal: torch.Tensor, times, *, by_hour: bool = True) -> FieldStandardizer:
        """Fit on complete training signals `(B, N, 1)` at datetime64 `times` `(B,)` (or None)."""
        x = signal[:, :, 0].numpy()
        hours = _hours(times)
        distinct = set(hours.tolist())
        dof = 0
        if by_hour and set(range(24)) <= distinct:
            mean = np.stack([x[hours == h].mean(0) for h in range(24)])
        elif by_hour and _covers_the_day(distinct) and x.shape[0] > 3:
            coef, *_ = np.linalg.lstsq(_diurnal_basis(hours), x, rcond=None)  # (3, N)
            mean, dof = _diurnal_basis(np.arange(24)) @ coef, 3
        else:
            mean = x.mean(0, keepdims=True)
        anomalies = x - mean[hours % mean.shape[0]]
        scale = np.sqrt((anomalies**2).sum(0) / (x.shape[0] - dof)) if dof else anomalies.std(0)
        return cls(mean, np.maximum(scale, 1e-6 * max(np.abs(x).max(), 1.0)))

    def climatology(self, times) -> torch.Tensor:
        """`(B, N, 1)` float64 climatology at `times` (numpy datetime64 `(B,)` or None)."""
        h = _hours(times) % self.mean.shape[0]
        return torch.from_numpy(self.mean[h])[:, :, None]

    def normalize(self, x: torch.Tensor, times) -> torch.Tensor:
        """Physical `(B, N, 1)` -> standardised."""
        return (x - self.climatology(times).to(x.dtype)) / torch.from_numpy(self.scale).to(x.dtype)[
            :, None
        ]

    def denormalize(self, z: torch.Tensor, times) -> torch.Tensor:
        """Standardised `(*, B, N, 1)` -> physical."""
        return z * torch.from_numpy(self.scale).to(z.dtype)[:, None] + self.climatology(times).to(
            z.dtype
        )

    def state_dict(self) -> dict:
        """Arrays to save."""
        return {"mean": torch.from_numpy(self.mean), "scale": torch.from_numpy(self.scale)}

    @classmethod
    def from_state_dict(cls, state: dict) -> FieldStandardizer:
        """Inverse of `state_dict`."""
        return cls(state["mean"].numpy(), state["scale"].numpy())


def _grid_text(domain) -> str:
    """A grid in words: `nlat x nlon: latitude a..b, longitude c..d`, or the HEALPix sphere."""
    if not isinstance(domain, SphereGrid):
        return repr(domain)
    return (
        f"{domain.shape[0]} x {domain.shape[1]}: latitude {domain.lat_deg[0]:g}.."
        f"{domain.lat_deg[-1]:g}, longitude {domain.lon_deg[0]:g}..{domain.lon_deg[-1]:g}"
    )


class ImputationModel:
    """Base class: a posterior engine for `C` channels (variables) on one latitude-longitude grid.

    Subclasses implement `_posterior(y, mask, times, n, rng, done) -> Posterior` for physical
    observations `y` `(B, N, C)` (zeros where hidden) and a boolean `mask` `(B, N, C)`, calling
    `done(k)` as fields are finished (those not reported are counted when it returns).

    Attributes:
        engine: "gaussian", "dps", "daps", "aps", "implicit" or "avi".
        variable: the variable name it was made for (e.g. "t2m"; several channels: their
            variables, comma-separated).
        units: its units (e.g. "K"); `impute` refuses a field in other units (several channels:
            comma-separated, one per channel; each channel's are in `channels`).
        domain: the `SphereGrid`.
        noise_std: observation error standard deviation assumed by the likelihood, physical units
            (of each channel).
        channels: the `Channel`s, in the order of the signals' last axis (one: `variable`).
    """

    engine = ""

    def __init__(
        self,
        variable: str,
        units: str,
        domain: SphereGrid,
        noise_std: float,
        channels: tuple[Channel, ...] | None = None,
    ):
        if not isinstance(domain, (SphereGrid, HealpixSphere)):
            raise TypeError(
                f"an imputation model needs a latitude-longitude grid or HEALPix pixels, got "
                f"{domain!r}; train the prior on the field's own grid"
            )
        # before any scaling to standardised units
        if not float(noise_std) > 0 or not np.isfinite(noise_std):
            raise ValueError(
                f"noise_std must be a positive number of {units or 'physical units'}, "
                f"got {noise_std}"
            )
        self.variable, self.units, self.domain, self.noise_std = (
            variable,
            units,
            domain,
            float(noise_std),
        )
        self.channels = tuple(channels) if channels else (Channel(variable, units),)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(engine={self.engine!r}, variable={self.variable!r}, "
            f"units={self.units!r}, grid={_grid_text(self.domain)}, noise_std={self.noise_std:g})"
        )

    def describe(self) -> str:
        """One line for the `history` attribute of outputs."""
        return repr(self)

    def check_grid(self, field: xr.DataArray | xr.Dataset) -> None:
        """Raise a clear ValueError unless `field` is on this model's grid."""
        domain = grid_domain(field)
        if domain.fingerprint != self.domain.fingerprint:
            hint = (
                f"; give --grid healpix:{self.domain.nside} (the model was trained on HEALPix "
                "pixels of a lat-lon field)"
                if isinstance(self.domain, HealpixSphere) and isinstance(domain, SphereGrid)
                else ""
            )
            raise ValueError(
                f"the field's grid ({_grid_text(domain)}) is not the model's "
                f"({_grid_text(self.domain)}){hint}"
            )

    def latitudes_reversed(self, field: xr.DataArray | xr.Dataset) -> bool:
        """Whether `field`'s latitudes are this model's reversed (e.g. 50..58 for 58..50).

        `impute` then reverses the field on the way in and its result on the way out, so a model
        fitted on one latitude order imputes the other and the output keeps the input's order.
        """
        if LATITUDE not in field.dims or not isinstance(self.domain, SphereGrid):
            return False  # (HEALPix pixels have one order, the model's)
        lat = np.asarray(field[LATITUDE].values, dtype=np.float64)
        mine = self.domain.lat_deg
        return (
            lat.shape == mine.shape
            and lat.size > 1
            and lat[0] != lat[-1]
            and np.allclose(lat[::-1], mine, rtol=0, atol=1e-6)
        )

    def reference(self, times, channel: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """Typical values of a channel: mean `(B, N)` at `times`, spread `(N,)`; physical units.

        The statistics the model normalises with (the climatology and per-cell scale of the
        Gaussian engine, the prior's channel mean and std otherwise); `impute` checks that the
        observations lie near them, to catch values in other units. None when the model has none.

        Arguments:
            times: numpy datetime64 `(B,)` of the fields, or None (one field).
            channel: the channel's index in `channels`.
        """
        return None

    def posterior(
        self,
        y: torch.Tensor,
        mask: torch.Tensor,
        n: int,
        *,
        times=None,
        rng: torch.Generator | None = None,
        on_field=None,
    ) -> Posterior:
        """Posterior samples, mean and std `(B, N, C)` of fields observed at `mask`, physical units.

        Arguments:
            y: observations `(B, N, C)`, physical units (`C = len(channels)`); values where `mask`
                is False are ignored.
            mask: boolean `(B, N, C)`, True = observed.
            n: samples per field (>= 2 unless the engine has an exact std).
            times: numpy datetime64 `(B,)` of the fields (for diurnal climatologies), or None.
            rng: the generator of the samples.
            on_field: callable `on_field(k)` told each time `k` more fields are finished (e.g. a
                progress bar's `update`), or None; the fields number `B` in all.
        """
        expected = (self.domain.num_nodes, len(self.channels))
        if y.shape != mask.shape or y.dim() != 3 or y.shape[1:] != expected:
            raise ValueError(
                f"y and mask must both be (B, {expected[0]}, {expected[1]}), got {tuple(y.shape)} "
                f"and {tuple(mask.shape)}"
            )
        if n < 1:
            raise ValueError(f"n (samples per field) must be >= 1, got {n}")
        y = torch.where(mask, y.double(), torch.zeros((), dtype=torch.float64))
        reported = 0

        def done(k: int = 1) -> None:
            nonlocal reported
            reported += k
            if on_field is not None:
                on_field(k)

        post = self._posterior(y, mask, times, n, rng, done)
        if reported < y.shape[0]:
            done(y.shape[0] - reported)
        return post

    def _posterior(self, y, mask, times, n, rng, done) -> Posterior:
        raise NotImplementedError


def _summary(samples: torch.Tensor) -> Posterior:
    """A `Posterior` whose mean and std are those of the samples `(S, B, N, C)`, `S >= 2`.

    Raises:
        ValueError: a single sample (its std would be NaN); every engine without an exact std
            (all but gaussian) needs at least 2.
    """
    if samples.shape[0] < 2:
        raise ValueError(
            f"{samples.shape[0]} sample per field: the posterior std is that of the samples and "
            "needs at least 2 (only the gaussian engine has an exact std)"
        )
    return Posterior(samples, samples.mean(0), samples.std(0))


def _fit_alpha(domain, values, observed, alpha, *, log=None, **kwargs):
    """`fit_gmrf` for one alpha, or the alpha of 1, 2, 3 of largest likelihood (`alpha="auto"`).

    Above `COARSE_START_NODES` with complete fields, alpha is chosen by the likelihoods on
    `coarser_problem` (the subgrid: three cheap fits), then fitted once at full size.
    """
    if alpha != "auto":
        return fit_gmrf(domain, values, observed, alpha=int(alpha), **kwargs)
    start = time.perf_counter()
    choose_on, choose_values, where = domain, values, "the grid"
    coarser = (
        coarser_problem(domain, values)
        if observed is None and domain.num_nodes > COARSE_START_NODES
        else None
    )
    if coarser is not None:
        choose_on, choose_values, where = (
            coarser[0],
            coarser[1],
            "the every-other-row-and-column subgrid",
        )
    fits = [fit_gmrf(choose_on, choose_values, observed, alpha=a, **kwargs) for a in ALPHAS]
    best = max(fits, key=lambda f: f.log_likelihood)
    if log is not None:
        lik = ", ".join(f"alpha {f.prior.alpha}: {f.log_likelihood:.6g}" for f in fits)
        log(f"GMRF smoothness by likelihood on {where} ({lik}): alpha {best.prior.alpha}")
    if choose_on is not domain:
        best = fit_gmrf(domain, values, observed, alpha=best.prior.alpha, **kwargs)
    best.seconds = time.perf_counter() - start
    return best


class GaussianImputer(ImputationModel):
    r"""Exact Gaussian posterior of a Whittle-Matérn GMRF of standardised anomalies; no size limit.

    :math:`x = \mu_{h(t)} + s \odot (u + e)`: an hour-of-day climatology :math:`\mu`, a per-cell
    standard deviation `s` (the `FieldStandardizer`), a sparse SPDE Matérn field `u`
    (`manifold_aps.priors.MaternGMRF`, its smoothness alpha chosen by likelihood) and a white
    nugget `e` of the standardised anomalies. The likelihood assumes independent errors of
    `noise_std` (physical units) on the observed cells, i.e. :math:`(\text{noise\_std}/s_i)^2`
    per cell in standardised
    units. The posterior (`manifold_aps.posterior.GMRFPosterior`) costs one sparse factorisation
    per distinct mask: mean, exact marginal std (selected inversion; an unbiased Monte Carlo
    estimate above `EXACT_VARIANCE_WORK`) and samples.

    The training fields fix the correlation structure (range, smoothness, the nugget's share);
    how variable the anomalies are on the day imputed is re-estimated from that field's own
    observed values (`variance_scale="observed"`, the default): the prior covariance (GMRF and
    nugget) is multiplied by :math:`c = y^T C^{-1} y / n`, the maximum-likelihood scale of the
    `n` observed standardised values `y` under the fitted covariance `C` (exact when the noise is
    scaled along; the noise is then kept at `noise_std`), and the posterior is that of the
    rescaled prior. On real ERA5 (global 1 degree, 70 % hidden, `benchmarks/gmrf_era5.py`) the
    test days' anomalies were about 1.5x as variable as the training week's: 90 % intervals covered
    83.6 % of the hidden cells with the training scale, 91.1 % with the observed one. Fields with
    fewer than `MIN_VALUES_FOR_SCALE` observed values keep the training scale.

    One scale is not enough where large regions are hidden: far from every observed cell the
    posterior is the prior, and a week of training anomalies understates a later day's large-scale
    departures (the same ERA5 field seen only in 3 swaths of 1500 km: 78 % coverage, z^2 of 2-3
    beyond 600 km from the swaths). `variance_scale="refit"` re-fits the range, std and nugget of
    each field's standardised anomalies to its own observed values by maximum likelihood (the
    smoothness alpha and the climatology stay the training's; the search starts at the training
    fit): one fit per field (~20-30 s at 1 degree on 2 cores), 89-93 % coverage there. The refit
    nugget absorbs the measurement noise; the posterior adds the known noise to what is left of it.
    Fields with fewer than `MIN_VALUES_FOR_REFIT` observed values keep the training fit, rescaled.

    Arguments:
        variable, units, domain, noise_std: as `ImputationModel`.
        standardizer: the fitted `FieldStandardizer`.
        prior: the `MaternGMRF` of the standardised anomalies (mean 0).
        nugget: white variance of the standardised anomalies beyond the GMRF.
        fitted_to: what the hyper-parameters were fitted to (for logs and `history`).
        variance_scale: ``"observed"`` (the scale re-estimated per field, above), ``"fitted"`` (the
            training fields' covariance as is) or ``"refit"`` (range, std and nugget re-fitted per
            field).
    """

    MIN_VALUES_FOR_SCALE = 50  # the scale's relative standard error is about sqrt(2 / n) or more
    MIN_VALUES_FOR_REFIT = (
        500  # three parameters, a range among them: a few hundred values at least
    )

    engine = "gaussian"

    def __init__(
        self,
        variable,
        units,
        domain,
        noise_std,
        standardizer: FieldStandardizer,
        prior: MaternGMRF,
        nugget: float = 0.0,
        fitted_to: str = "complete fields",
        variance_scale: str = "observed",
    ):
        super().__init__(variable, units, domain, noise_std)
        if not isinstance(prior, MaternGMRF):
            raise TypeError(f"prior must be a MaternGMRF, got {type(prior).__name__}")
        if variance_scale not in VARIANCE_SCALES:
            raise ValueError(
                f"variance_scale must be one of {list(VARIANCE_SCALES)}, got {variance_scale!r}"
            )
        self.standardizer, self.prior, self.nugget, self.fitted_to = (
            standardizer,
            prior,
            float(nugget),
            fitted_to,
        )
        self.variance_scale = variance_scale
        self.last_scales = np.ones(0)  # the variance scale c of each field of the last imputation
        # "refit": the GMRFFit of each field of the last imputation (None: not refitted)
        self.last_fits: list = []

    @classmethod
    def fit(
        cls,
        train: xr.DataArray,
        *,
        noise_std: float = 0.1,
        by_hour: bool = True,
        alpha: int | str = "auto",
        log=None,
        progress: bool = False,
    ) -> GaussianImputer:
        """Fit the standardizer and the GMRF on complete fields `train(time, latitude, longitude)`.

        Arguments:
            train: training fields (no NaN), with `units` in its attributes.
            noise_std: observation error standard deviation, physical units.
            by_hour: remove an hour-of-day climatology (when every hour is present).
            alpha: GMRF smoothness order (1, 2 or 3; nu = alpha - 1), or "auto": each is fitted and
                the one of largest likelihood kept (three fits).
            log: callable for one progress line (e.g. `print`), or None.
            progress: a progress bar over likelihood evaluations.

        Raises:
            ValueError: NaN in the training fields, fewer than 2 fields, extra dimensions.
        """
        if not isinstance(train, xr.DataArray):
            raise TypeError(f"train must be an xarray.DataArray, got {type(train).__name__}")
        extra = [d for d in train.dims if d not in (TIME, *spatial_dims(train))]
        if extra:
            raise ValueError(
                f"{train.name!r} has extra dimensions {extra}; select one level/member first"
            )
        if TIME not in train.dims or train.sizes[TIME] < 2:
            raise ValueError(
                f"training data {train.name!r} needs a time dimension with at least 2 fields"
            )
        train = train.load()
        if bool(train.isnull().any()):
            raise ValueError(
                f"training data {train.name!r} contains NaN; fit on complete fields only"
            )
        domain = grid_domain(train)
        x, _ = to_signal(train)
        standardizer = FieldStandardizer.fit_signal(x, train[TIME].values, by_hour=by_hour)
        anomalies = standardizer.normalize(x, train[TIME].values)[:, :, 0].numpy()
        fit = _fit_alpha(domain, anomalies, None, alpha, progress=progress, log=log)
        model = cls(
            str(train.name),
            train.attrs.get("units", ""),
            domain,
            noise_std,
            standardizer,
            fit.prior,
            fit.nugget,
            f"{train.sizes[TIME]} complete training fields",
        )
        if log is not None:
            log(
                f"GMRF prior of the standardised anomalies fitted to {model.fitted_to} "
                f"({fit.seconds:.1f} s): {model.hyper_parameters()}"
            )
        return model

    @classmethod
    def fit_to_observations(
        cls,
        field: xr.DataArray,
        observed: xr.DataArray,
        *,
        noise_std: float = 0.1,
        alpha: int | str = "auto",
        log=None,
        progress: bool = False,
    ) -> GaussianImputer:
        """Fit to the observed values of gappy fields themselves (no complete training fields).

        The standardisation is one mean and one standard deviation of all observed values (no
        climatology can be estimated from gappy fields); the GMRF's range, std and nugget maximise
        the exact marginal likelihood of the observed values, with the known `noise_std`.

        Arguments:
            field: `(time, latitude, longitude)` or `(latitude, longitude)`, with `units`.
            observed: boolean of the same grid (True = observed), e.g.
                `climate.missing_mask(field)`.
            noise_std: observation error standard deviation, physical units.
            alpha: GMRF smoothness order (1, 2 or 3; nu = alpha - 1), or "auto": each is fitted and
                the one of largest likelihood kept (three fits).
            log: callable for one progress line (e.g. `print`), or None.
            progress: a progress bar over likelihood evaluations.
        """
        observed = align_mask(observed, field)
        field = field.load()
        if TIME not in field.dims:
            field, observed = field.expand_dims(TIME), observed.expand_dims(TIME)
        domain = grid_domain(field)
        x, _ = to_signal(field)
        m, _ = to_signal(observed.astype(np.float64))
        keep = m[:, :, 0].numpy() > 0.5
        values = x[:, :, 0].numpy()
        if not keep.any(axis=1).all():
            raise ValueError(
                "every time step needs at least one observed cell to fit to its observed values"
            )
        obs_values = values[keep]
        if not np.all(np.isfinite(obs_values)):
            raise ValueError(
                f"observed cells of {field.name!r} hold NaN or infinity; hide them with the mask"
            )
        mean, scale = float(obs_values.mean()), float(obs_values.std()) or 1.0
        n = domain.num_nodes
        standardizer = FieldStandardizer(np.full((1, n), mean), np.full(n, scale))
        anomalies = np.where(keep, (values - mean) / scale, 0.0)
        fit = _fit_alpha(
            domain, anomalies, keep, alpha, noise_std=noise_std / scale, progress=progress, log=log
        )
        model = cls(
            str(field.name),
            field.attrs.get("units", ""),
            domain,
            noise_std,
            standardizer,
            fit.prior,
            fit.nugget,
            f"the {int(keep.sum())} observed values of {field.sizes[TIME]} fields",
        )
        if log is not None:
            log(
                f"GMRF prior fitted to {model.fitted_to} ({fit.seconds:.1f} s): "
                f"{model.hyper_parameters()}"
            )
        return model

    def hyper_parameters(self) -> str:
        """The prior's parameters in words (range in km on the Earth)."""
        p = self.prior
        std = "" if p.std is None else f", std {p.std:.3g}"
        return (
            f"alpha {p.alpha}, range {p.range * EARTH_RADIUS_KM:.0f} km{std}, "
            f"nugget {self.nugget:.3g} (standardised units)"
        )

    def describe(self) -> str:
        """One line for the `history` attribute: the engine, its fitted GMRF and noise."""
        p = self.prior
        return (
            "exact Gaussian posterior, SPDE Matern GMRF of standardised anomalies "
            f"(alpha {p.alpha}, kappa {p.kappa:.6g}, tau {p.tau:.6g}, range_rad {p.range:.6g}, "
            f"nugget {self.nugget:.6g}; fitted to {self.fitted_to}), "
            f"noise_std {self.noise_std:g} {self.units}; variance scale {self.variance_scale}"
        )

    def reference(self, times, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The hour-of-day climatology `(B, N)` at `times` and the per-cell anomaly std `(N,)`.

        (One channel: `channel` is 0.)
        """
        times = None if times is None else np.asarray(times)
        return self.standardizer.climatology(times)[:, :, 0].numpy(), self.standardizer.scale

    @torch.no_grad()
    def _posterior(self, y, mask, times, n, rng, done):
        times = None if times is None else np.asarray(times)
        y_z = self.standardizer.normalize(y, times)[:, :, 0].numpy()
        keep = mask[:, :, 0].numpy()
        noise_var = (self.noise_std / self.standardizer.scale) ** 2  # (N,), standardised units
        seed = int(torch.randint(0, 2**62, (1,), generator=rng)) if rng is not None else None
        np_rng = np.random.default_rng(seed)
        bsz, nodes = keep.shape
        samples = np.empty((n, bsz, nodes))
        means, stds = np.empty((bsz, nodes)), np.empty((bsz, nodes))
        factored: dict[
            bytes, GMRFObservation
        ] = {}  # fields observed at the same cells share one factorisation
        scales = np.ones(bsz)
        fits: list = [None] * bsz
        for b in range(bsz):
            idx = np.flatnonzero(keep[b])
            if idx.size == nodes:  # nothing hidden: the field passes through
                samples[:, b], means[b], stds[b] = y_z[b], y_z[b], 0.0
                done(1)
                continue
            values = y_z[b, idx]
            if self.variance_scale == "refit" and idx.size >= self.MIN_VALUES_FOR_REFIT:
                fits[b] = self._refit(y_z[b], keep[b])
                nugget = max(fits[b].nugget - float(np.mean(noise_var[idx])), 0.0)
                obs = GMRFObservation(fits[b].prior, idx, noise_var[idx], nugget)
            else:
                key = idx.tobytes()
                if key not in factored:
                    factored[key] = GMRFObservation(self.prior, idx, noise_var[idx], self.nugget)
                obs = factored[key]
            if (
                self.variance_scale != "fitted"
                and fits[b] is None
                and idx.size >= self.MIN_VALUES_FOR_SCALE
            ):
                scales[b] = float(obs.likelihood_terms(values)[1]) / idx.size
                rescaled = self.prior.with_params(
                    kappa=self.prior.kappa, tau=self.prior.tau / math.sqrt(scales[b])
                )
                obs = GMRFObservation(rescaled, idx, noise_var[idx], self.nugget * scales[b])
            means[b] = obs.mean(values)
            stds[b] = np.sqrt(obs.variance())
            samples[:, b] = obs.sample(values, n, rng=np_rng)
            done(1)
        self.last_scales, self.last_fits = scales, fits
        scale = torch.from_numpy(self.standardizer.scale)[:, None]
        samples = self.standardizer.denormalize(torch.from_numpy(samples)[..., None], times)
        mean = self.standardizer.denormalize(torch.from_numpy(means)[..., None], times)
        return Posterior(samples, mean, torch.from_numpy(stds)[..., None] * scale)

    def _refit(self, z: np.ndarray, observed: np.ndarray):
        """The GMRF (range, std, nugget) of largest likelihood of `z[observed]`, alpha kept.

        `z` is one field's standardised anomalies `(N,)`; the search starts at the training fit,
        whose smoothness alpha it keeps.
        """
        p = self.prior
        init = (
            {"kappa": p.kappa, "tau": p.tau} if p.alpha == 1 else {"range": p.range, "std": p.std}
        )
        init["nugget"] = max(self.nugget, 1e-4)
        return fit_gmrf(self.domain, z[None], observed[None], alpha=p.alpha, init=init)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model atomically to `path` (a torch file loadable with `weights_only=True`)."""
        state = {
            "kind": KIND,
            "variable": self.variable,
            "units": self.units,
            "noise_std": self.noise_std,
            **(
                {
                    "lat_deg": torch.tensor(self.domain.lat_deg),
                    "lon_deg": torch.tensor(self.domain.lon_deg),
                }
                if isinstance(self.domain, SphereGrid)
                else {"domain_spec": domain_spec(self.domain)}  # HEALPix: nside and ordering
            ),
            "fingerprint": self.domain.fingerprint,
            "standardizer": self.standardizer.state_dict(),
            "gmrf": {
                **self.prior.config(),
                "nugget": self.nugget,
                "fitted_to": self.fitted_to,
                "variance_scale": self.variance_scale,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return Path(path)

    @classmethod
    def from_state(cls, state: dict) -> GaussianImputer:
        """Rebuild from the dictionary `save` wrote."""
        if "gmrf" not in state:
            raise ValueError(
                "this Gaussian model was saved by an earlier version (dense Matern prior, at most "
                "6000 cells); fit it again (manifold-aps impute --engine gaussian --fit-period ... "
                "--save-model FILE)"
            )
        domain = (
            domain_from_spec(state["domain_spec"])
            if "domain_spec" in state
            else SphereGrid(state["lat_deg"].numpy(), state["lon_deg"].numpy())
        )
        if domain.fingerprint != state["fingerprint"]:
            raise ValueError(
                "the saved grid does not rebuild to the same domain (fingerprint mismatch)"
            )
        gmrf = dict(state["gmrf"])
        nugget, fitted_to = gmrf.pop("nugget"), gmrf.pop("fitted_to", "complete fields")
        # "fitted": the default of models saved before the per-field scale existed
        variance_scale = gmrf.pop("variance_scale", "fitted")
        prior = MaternGMRF(domain, **gmrf)
        standardizer = FieldStandardizer.from_state_dict(state["standardizer"])
        return cls(
            state["variable"],
            state["units"],
            domain,
            state["noise_std"],
            standardizer,
            prior,
            nugget,
            fitted_to,
            variance_scale,
        )


class ScoreImputer(ImputationModel):
    """DPS, APS or the implicit generator on the field's grid (`train-prior`/`distill` checkpoints).

    A prior of several channels (`train-prior --var A B`) imputes them jointly: each channel's
    hidden cells from its own and the other channels' observed ones.

    Arguments:
        variable, units, domain, noise_std, channels: as `ImputationModel`.
        sampler: an object with `sample(y, operator, n, rng=...) -> (n, B, N, C)` in physical units
            (`manifold_aps.posterior.DPS`, `DAPS`, `AmortizedFlowPosterior`, `ImplicitGenerator`).
        engine: "dps", "daps", "aps", "implicit" or "avi".
        description: for the `history` attribute.
    """

    def __init__(
        self,
        variable,
        units,
        domain,
        noise_std,
        sampler,
        engine: str,
        description: str,
        channels: tuple[Channel, ...] | None = None,
    ):
        super().__init__(variable, units, domain, noise_std, channels)
        sampling = [name for name, spec in REGISTRY.items() if not spec.exact_std]
        if engine not in sampling:
            raise ValueError(f"engine must be one of {sampling}, got {engine!r}")
        self.sampler, self.engine, self._description = sampler, engine, description

    def describe(self) -> str:
        """One line for the `history` attribute: the engine and its checkpoint."""
        return self._description

    def reference(self, times, channel: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        """The prior's mean `(B, N)` and std `(N,)` of `channel` (None: an identity normaliser)."""
        scale = sampler_scale(self.sampler)
        if scale is None:  # no statistics, or the identity: nothing to compare with
            return None
        mean, std = float(scale[0][channel]), float(scale[1][channel])
        n_fields, nodes = len(_hours(times)), self.domain.num_nodes
        return np.full((n_fields, nodes), mean), np.full(nodes, std)

    def _posterior(self, y, mask, times, n, rng, done):
        """The sampler's draws for the fields with hidden cells.

        A fully observed field passes through (its samples are its values, std 0) without a
        network call.
        """
        hidden = ~mask.reshape(mask.shape[0], -1).all(1)  # (B,)
        samples = y.expand(n, *y.shape).clone()
        done(int((~hidden).sum()))
        if hidden.any():
            # DPS needs autograd
            drawn = self.sampler.sample(y[hidden], Mask(self.domain, mask[hidden]), n, rng=rng)
            warn_if_diverged(
                drawn,
                self.sampler,
                REGISTRY[self.engine].title,
                hint=DIVERGENCE_HINTS.get(self.engine, ""),
            )
            samples[:, hidden] = drawn.detach().double()
        return _summary(samples)


def _trained_field(state: dict, path: Path):
    """The dataset a prior or engine checkpoint describes, its variable and its `Channel`s.

    A checkpoint of several channels lists them in its data description (`channel_fields`); one
    without (every single-variable checkpoint written before) has one, its variable and units.
    """
    from manifold_aps.posterior.distill import checkpoint_dataset

    ds = checkpoint_dataset(state, path, None)
    variable = ds.extra.get("variable")
    if not variable:
        raise ValueError(
            f"{path} was trained on {ds.name!r}, not a climate field (no variable name); "
            "impute needs one"
        )
    fields = ds.extra.get("channel_fields")
    channels = (
        tuple(Channel.from_dict(f) for f in fields) if fields else (Channel(variable, ds.units),)
    )
    if len(channels) != ds.channels:
        raise ValueError(
            f"{path} describes {len(channels)} channel(s) {channels_text(channels)} but its "
            f"signals have {ds.channels}"
        )
    return ds, variable, channels


def load_model(
    path: str | os.PathLike,
    *,
    engine: str | None = None,
    noise_std: float = 0.1,
    dps_steps: int = 1000,
    guidance: float | str = "auto",
    daps_steps: int = 20,
    daps_covariance: str = "white",
    progress: bool = False,
) -> ImputationModel:
    """Open an imputation model from a checkpoint.

    Arguments:
        path: a `GaussianImputer.save` file, a `manifold-aps train-prior` checkpoint (used with
            DPS, or DAPS when `engine` says so) or a `manifold-aps distill` checkpoint (APS).
        engine: check that the file is of this engine ("gaussian", "dps", "daps", "aps", ...);
            None accepts any (a score prior then runs with DPS).
        noise_std: observation error of the zero-shot engines' likelihood (DPS, DAPS), physical
            units (the others store theirs).
        dps_steps: DPS's number of reverse-diffusion steps.
        guidance: DPS's guidance step size, or "auto" (tuned on held-out observed cells of the
            first fields it imputes: `manifold_aps.DPS`).
        daps_steps: DAPS's annealing levels, its network passes per sample (`manifold_aps.DAPS`).
        daps_covariance: DAPS's inner Gaussian: "white", or "laplacian" / "eof", fitted on the
            prior's training signals read again from its source files
            (`manifold_aps.posterior.engines.daps_inner_covariance`).
        progress: a bar over that fit.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a checkpoint of another kind than `engine`, or not made for a climate field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model checkpoint not found: {path}")
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    state = read_weights_file(path)
    kind = state.get("kind") if isinstance(state, dict) else None
    spec = engine_for_checkpoint(kind) if isinstance(kind, str) else None
    found = "gaussian" if kind == KIND else (spec.name if spec is not None else None)
    if found is None:
        raise ValueError(f"{path} is not a manifold-aps model checkpoint (kind {kind!r})")
    if engine in REGISTRY and spec is not None and REGISTRY[engine].checkpoint_kind == kind:
        found = engine  # another engine of the same checkpoint kind (daps on a score prior)
    if engine is not None and engine != found:
        raise ValueError(f"{path} holds a {found!r} model ({kind}), not a {engine!r} one")
    if found == "gaussian":
        return GaussianImputer.from_state(state)
    dataset, variable, channels = _trained_field(state, path)
    if found in ZERO_SHOT_ENGINES:
        from manifold_aps.priors.train import load_prior

        prior = load_prior(path, dataset.domain)
        inner = None
        if found == "daps":
            inner = daps_inner_covariance(
                daps_covariance, prior, path, daps_steps, progress=progress
            )
        sampler, settings = zero_shot_sampler(
            found,
            prior,
            noise_std,
            dps_steps=dps_steps,
            guidance=guidance,
            daps_steps=daps_steps,
            inner_covariance=inner,
        )
        desc = f"{settings} with the score prior {path.name} of {dataset.name}"
        return ScoreImputer(
            variable, dataset.units, dataset.domain, noise_std, sampler, found, desc, channels
        )
    from manifold_aps.posterior.engines import load_trained_engine

    _, sampler, _, _ = load_trained_engine(path, dataset)
    what = REGISTRY[found].title
    desc = (
        f"{what} {path.name} distilled on {dataset.name} ({state['model_config']['masks']} masks)"
    )
    return ScoreImputer(
        variable,
        dataset.units,
        dataset.domain,
        sampler.noise.sigma,
        sampler,
        found,
        desc,
        channels,
    )
