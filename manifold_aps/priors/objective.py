"""The training objective of a `ScorePrior` (denoising score matching) for the shared `Trainer`."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from manifold_aps.priors.score import ScorePrior, dsm_loss, dsm_noise
from manifold_aps.training import step_generator

__all__ = ["DenoisingObjective", "SignalSource"]


class SignalSource(Protocol):
    """Where training signals come from: a dataset with augmentation, or a generative model."""

    def batch(self, generator: torch.Generator, n: int) -> torch.Tensor:
        """`n` training signals `(n, N, C)` in physical units, drawn with `generator`."""

    def validation(self) -> torch.Tensor:
        """Fixed validation signals `(M, N, C)`."""


class DenoisingObjective(nn.Module):
    """DSM loss of a `ScorePrior` on signals from a `SignalSource`; `forward(step, start, stop)`.

    The whole global batch (signals, times, noise) is drawn from `step_generator(seed, step)`
    and rows `start:stop` are used, so any split across processes gives the same step.

    Arguments:
        prior: the model trained.
        source: training and validation signals.
        batch_size: the global batch size.
        seed: seed of the per-step randomness.
        t_min: smallest diffusion time trained on.
    """

    def __init__(
        self,
        prior: ScorePrior,
        source: SignalSource,
        batch_size: int,
        seed: int = 0,
        t_min: float = 1e-3,
    ):
        super().__init__()
        self.model = prior
        self.source = source
        self.batch_size = batch_size
        self.seed = seed
        self.t_min = t_min

    def forward(self, step: int, start: int, stop: int) -> torch.Tensor:
        """DSM loss (0-d) of the rows `start:stop` of the global batch of `step` (seeded by it)."""
        g = step_generator(self.seed, step)
        x = self.source.batch(g, self.batch_size)
        t, eps = dsm_noise(self.batch_size, tuple(x.shape[1:]), g, t_min=self.t_min)
        dev = next(self.model.parameters()).device
        sl = slice(start, stop)
        return dsm_loss(self.model, x[sl].to(dev), t[sl].to(dev), eps[sl].to(dev))

    def validation_loss(self, model: ScorePrior, repeats: int = 4) -> float:
        """DSM loss on the validation signals with fixed noise (seeded), averaged over `repeats`."""
        x = self.source.validation()
        dev = next(model.parameters()).device
        g = torch.Generator().manual_seed(987654321)
        total = 0.0
        for _ in range(repeats):
            t, eps = dsm_noise(x.shape[0], tuple(x.shape[1:]), g, t_min=self.t_min)
            total += float(dsm_loss(model, x.to(dev), t.to(dev), eps.to(dev)))
        return total / repeats
