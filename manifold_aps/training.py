"""The one `Trainer` of the project: seeded, resumable, atomic checkpoints, logs, EMA, DDP.

Every model trains through it: an *objective* is an `nn.Module` whose `forward(step, start, stop)`
returns the loss of rows `start:stop` of the global batch of step `step`, and whose `model`
attribute is the module to save (e.g. a `ScorePrior`). The objective draws all its randomness
from `step_generator(seed, step)`, identically on every process, so that

* a run resumed from a checkpoint continues bit for bit like an uninterrupted run, and
* `torchrun --nproc_per_node K` (DistributedDataParallel, gloo on CPU, nccl on GPU) splits each
  global batch into K slices and reproduces single-process training up to float round-off.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import hashlib
import json
import math
import os
import pickle
import signal
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from manifold_aps.checkpoint import atomic_path
from manifold_aps.geometry.spec import DomainSpecError, domain_from_spec, domain_spec

__all__ = [
    "EMA",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "checkpoint_domain",
    "existing_run_files",
    "inference_copy",
    "load_checkpoint",
    "read_weights_file",
    "resume_conflicts",
    "step_generator",
]

CHECKPOINT_FORMAT = 1
RUN_FILES = ("checkpoint.pt", "log.csv", "train.json")
# TrainConfig fields a resumed run may change: they move the end of the run, its bookkeeping or
# the hardware, not the steps already taken (every other field changes what the steps compute).
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "validate_every", "log_every", "device")
_RESUME_ADVICE = (
    "give the same settings, start a new run in another folder, or replace this one (--overwrite)"
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (other domain, other kind, other architecture)."""


def step_generator(seed: int, step: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from `(seed, step)` alone: the randomness of one training step."""
    digest = hashlib.sha256(f"{seed}:{step}".encode()).digest()
    return torch.Generator(device=device).manual_seed(
        int.from_bytes(digest[:8], "little") % (2**63)
    )


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        steps: optimisation steps in total (a resumed run stops at the same total).
        batch_size: global batch size (split across processes under torchrun).
        lr: peak learning rate (Adam), reached after `warmup` steps, then cosine decay to 10 %.
        warmup: linear warm-up steps.
        grad_clip: global gradient-norm clip (0 for none).
        ema_decay: decay of the exponential moving average of the weights (0 for none).
        seed: seed of initialisation and of every step's randomness.
        checkpoint_every: steps between checkpoints (one more is written at the end).
        validate_every: steps between validation losses (0 for none).
        log_every: steps between log rows.
        device: "cpu", "cuda", "cuda:1", ...
    """

    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    validate_every: int = 250
    log_every: int = 25
    device: str = "cpu"

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0 or self.warmup < 0:
            raise ValueError(f"steps, batch_size and lr must be positive, got {self}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 1 or self.log_every < 1 or self.validate_every < 0:
            raise ValueError(f"checkpoint_every and log_every must be >= 1, got {self}")

    def learning_rate(self, step: int) -> float:
        """Learning rate at `step` (1-based)."""
        if step <= self.warmup:
            return self.lr * step / max(self.warmup, 1)
        frac = (step - self.warmup) / max(self.steps - self.warmup, 1)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


@dataclass
class TrainResult:
    """Summary of a run.

    Attributes:
        step: last step done.
        loss: mean training loss over the last `log_every` steps.
        val_loss: last validation loss (NaN if none).
        seconds: wall time of this invocation.
        checkpoint: path of the checkpoint written last.
        history: log rows of this invocation.
    """

    step: int
    loss: float
    val_loss: float
    seconds: float
    checkpoint: Path
    history: list = field(default_factory=list)


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = (
            "nccl"
            if torch.cuda.is_available() and os.environ.get("MANIFOLD_APS_BACKEND") != "gloo"
            else "gloo"
        )
        dist.init_process_group(backend)
        # Ended before the interpreter's finalisation: gloo's worker threads may still hold
        # tensors, and releasing them while the interpreter is torn down aborts the process
        # (SIGABRT, seen on a loaded machine; pytorch/pytorch#179291).
        atexit.register(_end_distributed)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _end_distributed() -> None:
    """Destroy the process group `_distributed` created, if it is still there."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def read_weights_file(path: str | os.PathLike):
    """`torch.load(path, weights_only=True)` on the CPU, with one clear error for anything else.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a torch weights file (a pickle of code, another format,
            a truncated or corrupt file); torch's advice to pass `weights_only=False` is not
            repeated: we never unpickle code.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with (
            warnings.catch_warnings()
        ):  # "Detected pickle protocol 4": a plain pickle, refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        KeyError,
    ) as err:  # KeyError: an unknown pickle opcode (a text file)
        raise CheckpointError(
            f"{path} is not a manifold-aps checkpoint (we never unpickle code)"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"{path} is not a manifold-aps checkpoint (we never unpickle code): "
            "truncated or corrupt"
        ) from err


def load_checkpoint(
    path: str | os.PathLike, *, fingerprint: str | None = None, kind: str | None = None
) -> dict:
    """Read a checkpoint with `weights_only=True`; refuse another domain or kind, clearly."""
    path = Path(path)
    ckpt = read_weights_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a manifold-aps checkpoint (format {CHECKPOINT_FORMAT})"
        )
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} holds a {ckpt['kind']!r}, expected a {kind!r}")
    if fingerprint is not None:
        _refuse_another_domain(ckpt, path, fingerprint, "this domain")
    return ckpt


def inference_copy(ckpt: dict) -> dict:
    """A checkpoint reduced to what sampling needs: the weights it samples with, no training state.

    The EMA weights (or the raw ones without EMA) become the `model` entry; the optimizer and
    EMA state go (about 3/4 of a trained file), and so does any embedded prior's EMA copy; the
    embedded prior's tensors that equal the engine's (the eigenbasis both saved) are stored
    once. The result loads wherever the full file does (`load_prior`, `load_engine`, `impute
    --checkpoint`) and samples the same numbers; it cannot resume training (`Trainer.resume`
    says so).

    Arguments:
        ckpt: a checkpoint dictionary as `load_checkpoint` returns it.

    Returns:
        A new dictionary (the tensors are shared with `ckpt`, not copied).
    """
    out = dict(ckpt)
    out["model"] = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]
    out["ema"] = None
    out["ema_state"] = None
    out["optimizer"] = None
    prior = ckpt.get("prior")
    if isinstance(prior, dict):
        weights = prior["ema"] if prior.get("ema") is not None else prior["model"]
        # tensors the engine holds too (the same eigenbasis) are stored once
        out["prior"] = {**prior, "model": _shared_with(weights, out["model"]), "ema": None}
    return out


def _shared_with(state: dict, other: dict) -> dict:
    """`state` with each tensor equal to one of `other` replaced by that one (saved once)."""
    pool: dict[tuple, list[torch.Tensor]] = {}
    for t in other.values():
        if torch.is_tensor(t):
            pool.setdefault((t.shape, t.dtype), []).append(t)
    out = {}
    for key, t in state.items():
        twins = pool.get((t.shape, t.dtype), []) if torch.is_tensor(t) else []
        out[key] = next((u for u in twins if torch.equal(u, t)), t)
    return out


def _refuse_another_domain(ckpt: dict, path, fingerprint: str, other: str) -> None:
    """A `CheckpointError` naming both domains when `ckpt` was trained on another than `other`."""
    if ckpt["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"{path} was trained on domain {ckpt['domain']} (fingerprint {ckpt['fingerprint']}), "
            f"not on {other} (fingerprint {fingerprint}); "
            "a model cannot run on another mesh or grid"
        )


def checkpoint_domain(ckpt: dict, path: str | os.PathLike, domain=None):
    """The domain of a loaded checkpoint.

    That is `domain` checked against its fingerprint, or (None) the one its `domain_spec`
    rebuilds.

    Raises:
        CheckpointError: `domain` is another geometry (both named), or the checkpoint predates
            domain specs and no `domain` was given.
    """
    if domain is not None:
        _refuse_another_domain(ckpt, path, domain.fingerprint, repr(domain))
        return domain
    if "domain_spec" not in ckpt:
        raise CheckpointError(
            f"{path} was written before checkpoints described their domain ({ckpt['domain']}); "
            "pass the domain it was trained on (its dataset's) or train it again"
        )
    try:
        return domain_from_spec(ckpt["domain_spec"])
    except DomainSpecError as err:
        raise CheckpointError(f"{path}: {err}") from err


def _differences(saved: dict, current: dict, keys) -> str:
    """`"key: A in the checkpoint, B now; ..."` for the `keys` whose values differ."""
    return "; ".join(
        f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
        for k in keys
        if saved.get(k) != current.get(k)
    )


def resume_conflicts(saved: dict, config: TrainConfig) -> str:
    """The settings of `config` that a resumed run may not change, as one phrase; "" if none.

    They are compared with the checkpoint's `saved` train config (`asdict` of a `TrainConfig`).

    Only `RESUMABLE_CHANGES` may differ (the total steps, checkpoint/log/validation intervals,
    device); a new seed, batch size, learning rate, warm-up, EMA decay or gradient clip would make
    the resumed run another run than the one the checkpoint started.
    """
    current = asdict(config)
    # a field newer than the checkpoint is not compared: the checkpoint cannot say what it was
    return _differences(
        saved, current, [k for k in current if k in saved and k not in RESUMABLE_CHANGES]
    )


def existing_run_files(out_dir: str | os.PathLike) -> list[Path]:
    """The files of a training run (`checkpoint.pt`, `log.csv`, `train.json`) in `out_dir`."""
    return [Path(out_dir) / name for name in RUN_FILES if (Path(out_dir) / name).exists()]


class EMA:
    """Exponential moving average of a model's parameters (with the usual warm-up of the decay).

    The decay at update `n` is `min(decay, (1 + n) / (10 + n))`, so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current parameters into the average."""
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for n, p in model.named_parameters():
            self.shadow[n].mul_(d).add_(p.detach(), alpha=1 - d)

    def model_state(self, model: nn.Module) -> dict:
        """`model.state_dict()` with the averaged parameters in place of the live ones."""
        state = model.state_dict()
        return {k: (self.shadow[k].clone() if k in self.shadow else v) for k, v in state.items()}

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        """Temporarily put the averaged parameters into `model`."""
        live = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.shadow[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(live[n])

    def state_dict(self) -> dict:
        """Shadow parameters and update count."""
        return {"shadow": self.shadow, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        for n, v in state["shadow"].items():
            self.shadow[n].copy_(v)
        self.num_updates = int(state["num_updates"])


class Trainer:
    """Runs an objective for `config.steps` steps with checkpoints in `out_dir`.

    Arguments:
        objective: an `nn.Module` with `forward(step, start, stop) -> loss`, a `model` attribute
            (the module saved) and optionally `validation_loss(model) -> float`.
        config: a `TrainConfig`.
        out_dir: folder of `checkpoint.pt`, `log.csv` and `train.json`.
        kind: what the model is (stored and checked on load), e.g. "score-prior".
        domain: the domain (its fingerprint and repr go into the checkpoint).
        model_config: plain-type description of the model, stored with the weights (a resumed
            run must have the same).
        described: more plain-type entries of the checkpoint that loading needs but resuming does
            not compare (e.g. `data`: what the training signals were; `prior`: the weights an
            engine was distilled from). The domain's `domain_spec` is always stored.
        optimizer: optional factory `params -> torch.optim.Optimizer` (default
            `geoopt.optim.RiemannianAdam`: Adam for ordinary parameters, and it keeps
            `geoopt.ManifoldParameter`s on their manifold).
        progress: show a tqdm bar (rank 0 only).
    """

    def __init__(
        self,
        objective: nn.Module,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        *,
        kind: str,
        domain,
        model_config: dict,
        described: dict | None = None,
        optimizer: Callable | None = None,
        progress: bool = True,
    ):
        reserved = {
            "format",
            "kind",
            "step",
            "fingerprint",
            "domain",
            "domain_spec",
            "model_config",
            "train_config",
            "model",
            "ema",
            "ema_state",
            "optimizer",
        } & set(described or {})
        if reserved:
            raise ValueError(
                f"described may not set the checkpoint's own entries {sorted(reserved)}"
            )
        self.described = dict(described or {})
        self.config = config
        self.out_dir = Path(out_dir)
        self.kind = kind
        self.domain = domain
        self.domain_spec = domain_spec(domain)  # computed once: every checkpoint stores it
        self.model_config = model_config
        self.progress = progress
        self.rank, self.world = _distributed()
        if config.batch_size % self.world:
            raise ValueError(
                f"batch_size={config.batch_size} must be divisible by the {self.world} processes"
            )
        self.device = torch.device(config.device)
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeError("device 'cuda' was asked for but torch sees no GPU")
            if self.world > 1:
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
                torch.cuda.set_device(self.device)
        self.objective = objective.to(self.device)
        self.model = objective.model
        params = [p for p in objective.parameters() if p.requires_grad]
        groups = self._parameter_groups(params)
        if optimizer is None:
            import geoopt

            # Adam on Euclidean parameters, Riemannian Adam on manifold ones (Stiefel mixings)
            self.optimizer = geoopt.optim.RiemannianAdam(groups, lr=config.lr)
        else:
            self.optimizer = optimizer(groups)
        self.ema = EMA(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.runner = objective
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Geometry buffers are identical on every process and partly sparse: never synchronised.
            # Buffers listed here are left out of DDP's initial broadcast, so the deprecated
            # `broadcast_buffers` flag is not needed.
            objective._ddp_params_and_buffers_to_ignore = [n for n, _ in objective.named_buffers()]
            self.runner = DistributedDataParallel(
                objective, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.step = 0
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        self.resumed: dict | None = (
            None  # set by `resume`: the step it started from, the settings changed
        )

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        """The checkpoint dictionary (plain types and tensors only: loads with weights_only)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": self.kind,
            "step": self.step,
            "fingerprint": self.domain.fingerprint,
            "domain": repr(self.domain),
            "domain_spec": self.domain_spec,
            **self.described,
            "model_config": self.model_config,
            "train_config": asdict(self.config),
            "model": self.model.state_dict(),
            "ema": self.ema.model_state(self.model) if self.ema is not None else None,
            "ema_state": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
        }

    def save(self) -> Path:
        """Write `checkpoint.pt` atomically (rank 0 only)."""
        if self.rank == 0:
            with atomic_path(self.checkpoint_path) as tmp:
                torch.save(self.state(), tmp)
        return self.checkpoint_path

    def resume(self, path: str | os.PathLike | None = None) -> int:
        """Load weights, EMA, optimizer and step from a checkpoint; returns the step reached.

        Raises:
            CheckpointError: another domain or kind, another model configuration, or training
                settings that may not change on resume (see `resume_conflicts`); the message
                names each differing setting with its value in the checkpoint and now.
        """
        path = Path(path or self.checkpoint_path)
        ckpt = load_checkpoint(path, fingerprint=self.domain.fingerprint, kind=self.kind)
        if ckpt.get("optimizer") is None:
            raise CheckpointError(
                f"cannot resume {path}: it is an inference copy (`manifold-aps export`: weights "
                "only, no optimizer state); resume from the training run's own checkpoint.pt"
            )
        if ckpt["model_config"] != self.model_config:
            keys = list(dict.fromkeys([*ckpt["model_config"], *self.model_config]))
            raise CheckpointError(
                f"cannot resume {path}: the checkpoint's model config differs from this one "
                f"({_differences(ckpt['model_config'], self.model_config, keys)}); {_RESUME_ADVICE}"
            )
        conflicts = resume_conflicts(ckpt["train_config"], self.config)
        if conflicts:
            raise CheckpointError(
                f"cannot resume {path}: "
                f"the checkpoint's training settings differ from these ({conflicts}); "
                f"only {', '.join(RESUMABLE_CHANGES)} may change on resume: {_RESUME_ADVICE}"
            )
        self.resumed = {
            "from_step": int(ckpt["step"]),
            "changed": {
                k: [v, getattr(self.config, k)]
                for k, v in ckpt["train_config"].items()
                if k in RESUMABLE_CHANGES and v != getattr(self.config, k)
            },
        }
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and ckpt["ema_state"] is not None:
            self.ema.load_state_dict(ckpt["ema_state"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if type(self.optimizer).__module__.startswith("geoopt"):
            # torch turns the per-parameter "step" into a float32 tensor on load; geoopt keeps a
            # Python int, and the float32 bias correction would change the next steps by an ulp.
            for state in self.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = int(state["step"].item())
        self.step = int(ckpt["step"])
        return self.step

    # ------------------------------------------------------------------ training
    def _log_rows(self, rows: list[dict]) -> None:
        if self.rank != 0 or not rows:
            return
        path = self.out_dir / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "loss", "val_loss", "lr", "seconds"])
            if new:
                writer.writeheader()
            writer.writerows(rows)

    def _truncate_log(self) -> float:
        """Drop log rows past the resumed step (they belong to work that was lost).

        Returns the training seconds logged up to that step (the last kept row's; 0 without one),
        from which a resumed invocation's rows continue, so `seconds` is the run's total.
        """
        path = self.out_dir / "log.csv"
        if not path.exists():
            return 0.0
        with open(path) as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= self.step]
        earlier = float(rows[-1]["seconds"]) if rows else 0.0
        if self.rank != 0:
            return earlier
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["step", "loss", "val_loss", "lr", "seconds"])
            writer.writeheader()
            writer.writerows(rows)
        return earlier

    def _global_mean(self, value: torch.Tensor) -> float:
        """Mean of a per-process loss over processes (equal slices: the global batch's loss)."""
        if self.world > 1:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value /= self.world
        return float(value)

    def validation_loss(self) -> float:
        """The objective's validation loss with the EMA weights (or the live ones)."""
        fn = getattr(self.objective, "validation_loss", None)
        if fn is None:
            return float("nan")
        with (
            torch.no_grad(),
            self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext(),
        ):
            return float(fn(self.model))

    def _parameter_groups(self, params: list) -> list[dict]:
        """One optimiser group, or those of the model's own `optimizer_groups()`.

        `optimizer_groups()` returns `[(parameters, lr_scale)]` (e.g. a slower generator than its
        auxiliary network), with every trainable parameter exactly once.
        """
        make = getattr(self.model, "optimizer_groups", None)
        if make is None:
            return [{"params": params, "lr_scale": 1.0}]
        groups = [
            {"params": [p for p in ps if p.requires_grad], "lr_scale": float(scale)}
            for ps, scale in make()
        ]
        listed = [id(p) for g in groups for p in g["params"]]
        if sorted(listed) != sorted(id(p) for p in params):
            raise ValueError(
                "the model's optimizer_groups() must list every trainable parameter exactly once"
            )
        return groups

    def fit(self, *, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train until `config.steps` (or until `stop_after` steps in total, for tests).

        With `resume=True` it continues from `out_dir/checkpoint.pt` when it exists. Ctrl-C
        (SIGINT) or SIGTERM ends the current step, writes a checkpoint and returns.
        """
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        earlier = 0.0  # seconds of the invocations before this one (the log's time is cumulative)
        if resume and self.checkpoint_path.exists():
            self.resume()
            earlier = self._truncate_log()
        elif not resume and (self.out_dir / "log.csv").exists() and self.rank == 0:
            (self.out_dir / "log.csv").unlink()
        last = min(cfg.steps, stop_after or cfg.steps)
        local = cfg.batch_size // self.world
        start, stop = self.rank * local, (self.rank + 1) * local
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=last, initial=self.step, desc=self.kind, dynamic_ncols=True)
        history, window, val = [], [], float("nan")
        t_start = time.perf_counter()
        interrupted = {"flag": False}

        def _stop(signum, frame):
            interrupted["flag"] = True  # finish the current step, then checkpoint and stop

        import threading

        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while self.step < last and not interrupted["flag"]:
                step = self.step + 1
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.learning_rate(step) * group.get("lr_scale", 1.0)
                self.runner.train()
                loss = self.runner(step, start, stop)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {step}; lower the learning rate"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.objective.parameters(), cfg.grad_clip)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.step = step
                window.append(self._global_mean(loss.detach()))
                if cfg.validate_every and step % cfg.validate_every == 0:
                    val = self.validation_loss()
                if step % cfg.log_every == 0 or step == last:
                    row = {
                        "step": step,
                        "loss": sum(window) / len(window),
                        "val_loss": val,
                        "lr": cfg.learning_rate(step),
                        "seconds": round(earlier + time.perf_counter() - t_start, 3),
                    }
                    history.append(row)
                    self._log_rows([row])
                    window = []
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", val=f"{val:.4f}")
                if step % cfg.checkpoint_every == 0 or step == last:
                    self.save()
                if bar is not None:
                    bar.update(1)
        finally:
            if interrupted["flag"]:
                self.save()
            if bar is not None:
                bar.close()
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        seconds = time.perf_counter() - t_start
        result = TrainResult(
            step=self.step,
            loss=history[-1]["loss"] if history else float("nan"),
            val_loss=val,
            seconds=seconds,
            checkpoint=self.checkpoint_path,
            history=history,
        )
        if self.rank == 0:
            summary = {
                "kind": self.kind,
                "domain": repr(self.domain),
                "fingerprint": self.domain.fingerprint,
                "step": self.step,
                "loss": result.loss,
                "val_loss": val,
                "seconds_this_run": seconds,
                "processes": self.world,
                "train_config": asdict(cfg),
                "model_config": self.model_config,
                "interrupted": interrupted["flag"],
            }
            if (
                self.resumed is not None
            ):  # e.g. {"from_step": 500, "changed": {"steps": [1000, 2000]}}
                summary["resumed"] = self.resumed
            with atomic_path(self.out_dir / "train.json") as tmp:
                tmp.write_text(json.dumps(summary, indent=2, default=str))
        return result
