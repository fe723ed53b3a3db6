"""The first demo: impute hidden cells of a real ERA5 field, the exact Gaussian beside the APS flow.

Fits a Matérn prior (by maximum likelihood) to the anomalies of the training period about an
hour-of-day climatology, hides a seeded part of each test field, and writes the posterior mean,
standard deviation and samples to netCDF, a map to PNG and the scores to JSON. On the shipped
sample it also imputes the same hidden cells with the APS flow shipped in the package (a small
diffusion prior and its distilled flow, trained on the sample's first 558 hours by `make
demo-models`) and scores it beside the Gaussian and the nearest-neighbour fill.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from climate.era5 import from_signal, grid_domain, open_era5, to_signal
from climate.impute import impute, write_imputation
from climate.masks import EARTH_RADIUS_KM
from climate.model import GaussianImputer, load_model
from climate.plot import plot_imputation
from climate.schema import TIME
from climate.workflow import parse_period
from manifold_aps.checkpoint import atomic_path
from manifold_aps.metrics import crps_ensemble, interval_coverage, spread_skill_ratio, weighted_rmse
from manifold_aps.operators import (
    BoxMaskGenerator,
    RandomMaskGenerator,
    StationMaskGenerator,
    SwathMaskGenerator,
)
from manifold_aps.posterior.engines import ENGINES
from manifold_aps.training import read_weights_file

__all__ = [
    "MASK_KINDS",
    "DemoScores",
    "EngineScores",
    "default_learned_model_path",
    "default_sample_path",
    "run_demo",
]

Z90 = 1.6448536269514722  # standard normal 95 % quantile: mean +- Z90 * std is a 90 % interval

MASK_KINDS = {
    "random": lambda d, frac: RandomMaskGenerator(d, missing=frac),
    "stations": lambda d, frac: StationMaskGenerator(d, max(1, round((1 - frac) * d.num_nodes))),
    "swath": lambda d, frac: SwathMaskGenerator(d, num_swaths=(1, 2), half_width_deg=(1.0, 2.0)),
    "box": lambda d, frac: BoxMaskGenerator(d, num_boxes=1, half_width_deg=(2.0, 3.0)),
}


def default_sample_path() -> Path:
    """The ERA5 sample shipped inside the package (UK t2m, March 2019)."""
    return Path(str(resources.files("manifold_aps") / "data" / "era5_t2m_uk_2019-03.nc"))


def default_learned_model_path() -> Path:
    """The APS flow shipped for the sample (its checkpoint embeds the diffusion prior's weights)."""
    return Path(str(resources.files("manifold_aps") / "data" / "demo_models" / "aps-t2m-uk.pt"))


@dataclass
class EngineScores:
    """One engine's scores over the same hidden cells as the Gaussian's (units of the variable)."""

    engine: str
    checkpoint: str
    rmse_posterior_mean: float
    crps_posterior: float
    coverage_90_analytic: float
    spread_skill: float
    seconds: float


@dataclass
class DemoScores:
    """Scores over the hidden cells of the test fields, area-weighted (units of the variable)."""

    rmse_posterior_mean: float
    rmse_climatology: float
    rmse_nearest_neighbour: float
    crps_posterior: float
    coverage_90_analytic: float
    spread_skill: float
    missing_fraction: float
    num_test_fields: int
    num_train_fields: int
    prior_std: float
    range_km: float
    alpha: int
    nugget: float
    seconds: float
    units: str = ""
    learned: EngineScores | None = None
    learned_skipped: str | None = None


def _learned_model_clash(path: Path, test_times) -> str | None:
    """Why the learned model at `path` may not be scored on `test_times`, or None.

    A model trained on a test hour would be scored on data it has seen: its checkpoint's
    recorded `fit_period` must exclude every test time (a model without one is refused too).
    """
    state = read_weights_file(path)
    source = (state.get("data") or {}).get("source") or {}
    period = (source.get("args") or {}).get("fit_period")
    if not period:
        return f"{path.name} records no training period, so the test hours may be in it"
    trained = parse_period(period, "fit_period").contains(test_times)
    if trained.any():
        return (
            f"{path.name} was trained on {period}, which holds {int(trained.sum())} of the test "
            "hours (give a larger train fraction's complement, or --no-learned)"
        )
    return None


def _learned_checkpoint(given, input_path: Path, test_times) -> tuple[Path, str | None]:
    """The learned engine's checkpoint to score and, when it is not to be scored, why not."""
    if given is not None:
        ckpt = Path(given)
        if not ckpt.is_file():
            raise FileNotFoundError(2, "no such checkpoint", str(ckpt))
    else:
        ckpt = default_learned_model_path()
        if input_path.resolve() != default_sample_path().resolve():
            return ckpt, "the shipped APS flow is for the shipped sample (give a checkpoint)"
        if not ckpt.is_file():
            return ckpt, f"this install ships no {ckpt.name} (`make demo-models` trains it)"
    return ckpt, _learned_model_clash(ckpt, test_times)


def _score_samples(ds, variable, truth, w, hidden) -> tuple[float, float, float, float]:
    """RMSE of the mean, CRPS, 90 % coverage (mean +- Z90 std) and spread/skill of an imputation."""
    samples = torch.from_numpy(
        np.stack([to_signal(s)[0].numpy() for s in ds[f"{variable}_samples"]])
    ).double()
    mean = to_signal(ds[f"{variable}_mean"])[0]
    std = to_signal(ds[f"{variable}_std"])[0]
    lo, hi = mean - Z90 * std, mean + Z90 * std
    return (
        float(weighted_rmse(mean, truth, w, hidden)),
        float(crps_ensemble(samples, truth, w, hidden)),
        float(interval_coverage(lo, hi, truth, w, hidden)),
        float(spread_skill_ratio(samples, truth, w, hidden)),
    )


def run_demo(
    *,
    input_path: str | Path | None = None,
    variable: str = "t2m",
    mask_kind: str = "random",
    missing: float = 0.7,
    num_test: int = 8,
    num_samples: int = 16,
    noise_std: float = 0.1,
    train_fraction: float = 0.75,
    seed: int = 0,
    output_dir: str | Path = "demo_output",
    plot: bool = True,
    learned: bool = True,
    learned_checkpoint: str | Path | None = None,
    log=print,
) -> DemoScores:
    """Run the demo end to end: write `imputed.nc`, `map.png` and `scores.json`, return the scores.

    With `learned`, the same hidden cells are also imputed by a learned engine (the APS flow
    shipped for the sample, or `learned_checkpoint`): `imputed_<engine>.nc`, `map_<engine>.png`
    and its scores in `scores.json`. It is skipped, with a log line saying why, on a file other
    than the sample without `learned_checkpoint`, or when its recorded training period holds a
    test hour.

    Arguments:
        input_path: an ERA5 file (netCDF/GRIB/zarr); default the shipped UK sample.
        variable: the variable to impute.
        mask_kind: one of `MASK_KINDS` ("random", "stations", "swath", "box").
        missing: fraction of cells hidden ("random"; "stations" keeps `1 - missing` of cells).
        num_test: number of test fields, evenly spaced over the held-out period.
        num_samples: posterior samples per field.
        noise_std: observation error standard deviation assumed by the likelihood (variable units).
        train_fraction: leading fraction of time steps used to fit the prior.
        seed: seed of the masks and the samples.
        output_dir: where the outputs go.
        plot: write `map.png` (a cartopy map); False skips it.
        learned: also score a learned engine (above).
        learned_checkpoint: a `distill` (or `train-prior`, for DPS) checkpoint of a field on the
            same grid; default the shipped APS flow (`default_learned_model_path`).
        log: callable for one progress line (e.g. `print`).
    """
    start = time.perf_counter()
    if mask_kind not in MASK_KINDS:
        raise ValueError(f"mask_kind must be one of {sorted(MASK_KINDS)}, got {mask_kind!r}")
    if not 0 < missing < 1:
        raise ValueError(f"missing must lie strictly between 0 and 1, got {missing}")
    path = Path(input_path) if input_path else default_sample_path()
    log(f"reading {path}")
    da = open_era5(path, variables=variable)[variable].load()
    if TIME not in da.dims or da.sizes[TIME] < 2:
        raise ValueError(f"{path}: {variable!r} needs a time dimension with at least 2 steps")
    extra = [d for d in da.dims if d not in (TIME, "latitude", "longitude")]
    if extra:
        raise ValueError(
            f"{variable!r} has extra dimensions {extra}; select one level/member first"
        )
    if bool(da.isnull().any()):
        raise ValueError(
            f"{path}: {variable!r} contains NaN; the demo needs complete fields as truth"
        )
    n_train = int(round(train_fraction * da.sizes[TIME]))
    if not 1 <= n_train < da.sizes[TIME]:
        raise ValueError(f"train_fraction={train_fraction} leaves no training or no test steps")
    train, test_all = da.isel({TIME: slice(0, n_train)}), da.isel({TIME: slice(n_train, None)})
    pick = np.unique(np.linspace(0, test_all.sizes[TIME] - 1, num_test).round().astype(int))
    test = test_all.isel({TIME: pick})
    domain = grid_domain(da)
    log(f"domain: {domain}; train {train.sizes[TIME]} fields, test {test.sizes[TIME]} fields")

    # Prior: hour-of-day climatology + per-cell scale * (Matérn GMRF + nugget), all fitted on
    # training hours.
    model = GaussianImputer.fit(train, noise_std=noise_std, log=log)
    truth, layout = to_signal(test)
    clim = model.standardizer.climatology(test[TIME].values)
    mask = MASK_KINDS[mask_kind](domain, missing).step(truth.shape[0], seed=seed)["mask"]
    observed = from_signal(mask, layout, name="observed").astype(bool)
    observed.attrs["description"] = f"{mask_kind} mask, {missing} missing, seed {seed}"
    ds = impute(test, observed, model, n_samples=num_samples, seed=seed, progress=False)
    hidden = ~mask
    w = domain.mass
    rmse, crps, coverage, spread_skill = _score_samples(ds, variable, truth, w, hidden)
    pos = domain.positions.numpy()
    nn_fill = truth.clone()
    for b in range(truth.shape[0]):
        obs = mask[b, :, 0].numpy()
        idx = cKDTree(pos[obs]).query(pos[~obs])[1]
        nn_fill[b, ~obs, 0] = truth[b, obs, 0][idx]
    prior = model.prior
    scores = DemoScores(
        rmse_posterior_mean=rmse,
        rmse_climatology=float(weighted_rmse(clim, truth, w, hidden)),
        rmse_nearest_neighbour=float(weighted_rmse(nn_fill, truth, w, hidden)),
        crps_posterior=crps,
        coverage_90_analytic=coverage,
        spread_skill=spread_skill,
        missing_fraction=float(hidden.double().mean()),
        num_test_fields=truth.shape[0],
        num_train_fields=train.sizes[TIME],
        prior_std=prior.std if prior.std is not None else float("nan"),
        range_km=prior.range * EARTH_RADIUS_KM,
        alpha=prior.alpha,
        nugget=model.nugget,
        seconds=0.0,
        units=str(test.attrs.get("units", "")),
    )
    engine_ds = None
    if learned:
        ckpt, why_not = _learned_checkpoint(learned_checkpoint, path, test[TIME].values)
        if why_not:
            scores.learned_skipped = why_not
            log(f"learned engine skipped: {why_not}")
        else:
            t0 = time.perf_counter()
            learned_model = load_model(ckpt)
            log(f"learned engine: {learned_model.describe()}")
            engine_ds = impute(
                test, observed, learned_model, n_samples=num_samples, seed=seed, progress=False
            )
            numbers = _score_samples(engine_ds, variable, truth, w, hidden)
            scores.learned = EngineScores(
                getattr(learned_model, "engine", "gaussian"),
                ckpt.name,
                *numbers,
                seconds=time.perf_counter() - t0,
            )

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds[variable] = test.astype(np.float32)
    ds[variable].attrs = {k: v for k, v in test.attrs.items() if k in ("units", "long_name")}
    ds[variable].attrs["long_name"] = f"{test.attrs.get('long_name', variable)} (ERA5, the truth)"
    ds.attrs.update(
        history=f"manifold-aps demo: train_fraction={train_fraction} mask={mask_kind} "
        f"missing={missing} seed={seed} test fields={truth.shape[0]}\n" + ds.attrs["history"],
        source=str(path.name),
        license="CC-BY-4.0 (ERA5): contains modified Copernicus Climate Change Service information",
    )
    write_imputation(ds, out / "imputed.nc")
    if plot:
        plot_imputation(ds, test, variable, out / "map.png", engine="exact Gaussian")
    if engine_ds is not None:
        name = scores.learned.engine
        engine_ds[variable] = ds[variable]
        engine_ds.attrs.update(
            history=f"manifold-aps demo ({name}, {scores.learned.checkpoint}): the hidden cells of "
            "imputed.nc\n" + engine_ds.attrs["history"],
            source=ds.attrs["source"],
            license=ds.attrs["license"],
        )
        write_imputation(engine_ds, out / f"imputed_{name}.nc")
        if plot:
            title = ENGINES[name].title if name in ENGINES else name
            plot_imputation(engine_ds, test, variable, out / f"map_{name}.png", engine=title)
    scores.seconds = time.perf_counter() - start
    with atomic_path(out / "scores.json") as tmp:
        tmp.write_text(json.dumps(asdict(scores), indent=2))
    return scores
