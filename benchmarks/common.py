"""Helpers shared by the benchmark scripts: CSV output, training amortized engines, tuning DPS."""

from __future__ import annotations

import csv
import gc
import json
import math
import os
import threading
import time
from pathlib import Path

import torch

__all__ = [
    "ENGINE_METHODS",
    "FIRST_PRIOR_STEPS",
    "PeakMemory",
    "keep_earlier",
    "mask_validation",
    "read_csv",
    "train_amortized_engines",
    "trained_steps",
    "training_seconds",
    "tune_dps",
    "write_csv",
]

ENGINE_METHODS = ("APS", "APS-spectral", "implicit", "AVI")
# the score prior's training steps in the first result rows, which do not name it (others do)
FIRST_PRIOR_STEPS = 1000


def read_csv(path: Path) -> list[dict]:
    """The rows of the CSV at `path` (none if there is no file)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def keep_earlier(earlier: list[dict], rows: list[dict], columns: tuple[str, ...]) -> list[dict]:
    """`earlier` rows that `rows` do not redo, then `rows`: a results file merged with a rerun.

    A row is redone when one of `rows` has the same values in `columns` (compared as text, a
    missing column as empty), so rows of other settings from earlier runs stay beside new ones.
    """

    def key(row: dict) -> tuple[str, ...]:
        return tuple(str(row.get(c, "")) for c in columns)

    redone = {key(r) for r in rows}
    return [r for r in earlier if key(r) not in redone] + rows


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write `rows` to `path`, creating the folder; nothing if empty.

    The columns are every key of any row, in the order they first appear; a row without one leaves
    it empty. Written to a temporary file beside `path` and moved over it, so a run killed while
    writing leaves the earlier file whole (the scripts rewrite their CSV after every row).
    """
    if not rows:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(partial, "w", newline="") as fh:
            writer = csv.DictWriter(
                fh, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval=""
            )
            writer.writeheader()
            writer.writerows(rows)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def table_cell(value, width: int, digits: int = 3) -> str:
    """`value` right-aligned in `width` characters with `digits` decimals, "-" if not a number."""
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:>{width}.{digits}f}"
    return f"{'-':>{width}}"


def target_verdict(
    label: str,
    rmse_ratio: float,
    rmse_target: float,
    coverage: float,
    coverage_range: tuple[float, float],
) -> str:
    """One line: RMSE ratio against its bound and 90 % coverage against its range, met or missed."""
    ok_rmse = rmse_ratio <= rmse_target
    ok_cov = coverage_range[0] <= coverage <= coverage_range[1]
    return (
        f"  {label}: RMSE ratio {rmse_ratio:.3f} ({'met' if ok_rmse else 'missed'}), "
        f"coverage {coverage:.3f} ({'met' if ok_cov else 'missed'})"
    )


def engine_train_config(steps: int, *, aps: bool = True):
    """The benchmarks' training settings of an amortized engine for `steps` steps (batch 8).

    The APS flow trains at lr 2e-3 with 50 warm-up steps, the other engines at 1e-3 with 20.
    """
    from manifold_aps.training import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=8,
        lr=2e-3 if aps else 1e-3,
        warmup=min(50 if aps else 20, steps // 4),
        ema_decay=0.0,
        checkpoint_every=100,
        validate_every=0,
        log_every=25,
    )


def train_amortized_engines(
    ds, prior_arg, run_dir: Path, noise_std: float, steps: int, methods, *, progress: bool = False
) -> tuple[dict, dict]:
    """Train (or resume) the amortized engines among `methods` on random masks (50-95 % missing).

    Each engine goes to `run_dir/<method lower-case>/checkpoint.pt`. Returns `(engines, seconds)`:
    the loaded engines by method and the training wall time of each (`training_seconds`).
    "APS-spectral" is the APS flow with `SpectralCoupling`s (`FlowConfig(coupling="spectral")`).
    """
    from manifold_aps.flows import FlowConfig
    from manifold_aps.posterior.aps import APSConfig
    from manifold_aps.posterior.distill import resolve_prior
    from manifold_aps.posterior.engines import load_engine, train_engine
    from manifold_aps.posterior.implicit import ImplicitConfig

    aps_cfg, cfg = engine_train_config(steps), engine_train_config(steps, aps=False)
    common = {"masks": "random", "noise_std": noise_std, "resume": True, "progress": progress}
    recipes = {  # method -> (registered engine, its training settings, settings)
        "APS": ("aps", aps_cfg, APSConfig(dense_limit=1000)),
        "APS-spectral": (
            "aps",
            aps_cfg,
            APSConfig(dense_limit=1000, flow=FlowConfig(coupling="spectral")),
        ),
        "implicit": ("implicit", cfg, ImplicitConfig(dense_limit=1000)),
        "AVI": ("avi", cfg, None),
    }
    engines, seconds, prior = {}, {}, None
    for method, (name, train_config, settings) in recipes.items():
        if method not in methods:
            continue
        run = Path(run_dir) / method.lower()
        train_engine(name, ds, prior_arg, run, train_config, settings=settings, **common)
        seconds[method] = training_seconds(run)
        # one copy for all engines
        prior = prior if prior is not None else resolve_prior(ds, prior_arg)
        engines[method] = load_engine(run / "checkpoint.pt", ds, prior=prior)[0]
    return engines, seconds


def training_seconds(run: Path) -> float:
    """Training wall time of a `Trainer` run [s].

    That is the cumulative time of the last row of its `log.csv` (all invocations that trained it;
    a finished run reopened later adds nothing), else `train.json`'s `seconds_this_run`.
    """
    log = Path(run) / "log.csv"
    if log.exists():
        with open(log) as fh:
            rows = list(csv.DictReader(fh))
        if rows:
            return float(rows[-1]["seconds"])
    return float(json.loads((Path(run) / "train.json").read_text())["seconds_this_run"])


def trained_steps(run: Path) -> int:
    """The step a `Trainer` run (its folder, or its `checkpoint.pt`) has reached.

    From the run's `train.json`; a checkpoint file without one beside it: its own `step`.
    """
    run = Path(run)
    folder = run.parent if run.suffix == ".pt" else run
    if (folder / "train.json").exists():
        return int(json.loads((folder / "train.json").read_text())["step"])
    return int(torch.load(run, weights_only=True, map_location="cpu")["step"])


def mask_validation(ds, noise, masks: str = "random", n: int = 2, seed: int = 99):
    """`(y, operator, truth, where)`: `n` observations of validation signals through `masks`.

    Never the test fields: what `tune_dps` chooses on. `where` marks the hidden cells.
    """
    from manifold_aps.posterior.distill import held_out_observations

    val = held_out_observations(ds, noise, n, masks=masks, seed=seed, split="validation")
    return val.y, val.operator(ds.domain), val.truth, ~val.mask.expand_as(val.truth)


def tune_dps(
    prior, noise, weight, validation, *, steps: int, choices=(0.1, 0.3, 1.0), samples: int = 2
) -> float:
    """The DPS guidance of lowest RMSE of the `samples`-sample mean on `validation`.

    `validation` is `(y, operator, truth, where)` of validation signals (`mask_validation`, or
    another operator's), scored at the cells `where`. The guidance is a step per reverse step, so
    the best value depends on `steps`: it is required, and must be the step count the tuned
    sampler will run (tuned at 200 and run at 1000, guidance 1.0 and 0.3 won and then diverged).
    """
    from manifold_aps.metrics import weighted_rmse
    from manifold_aps.posterior import DPS

    y, operator, truth, where = validation
    best, best_rmse = choices[-1], float("inf")
    for zeta in choices:
        s = (
            DPS(prior, noise, steps=steps, guidance=zeta)
            .sample(y.float(), operator, samples, rng=torch.Generator().manual_seed(5))
            .double()
        )
        rmse = float(weighted_rmse(s.mean(0), truth.double(), weight, where))
        rmse = rmse if math.isfinite(rmse) else float("inf")
        print(f"  DPS guidance {zeta}: validation RMSE {rmse:.4f}", flush=True)
        if rmse < best_rmse:
            best, best_rmse = zeta, rmse
    return best


def _release_free_memory() -> None:
    """Return freed heap memory to the system (glibc `malloc_trim`).

    Growth is then measured from a low base.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager: the largest growth of this process's resident set size [MB] while inside."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s, self.peak_mb = interval_s, 0.0
        self._page = os.sysconf("SC_PAGE_SIZE") / 2**20

    def _rss_mb(self) -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _poll(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._rss_mb() - self._base)
            time.sleep(self.interval_s)

    def __enter__(self):
        gc.collect()
        _release_free_memory()
        self._base, self._stop = self._rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._rss_mb() - self._base)
