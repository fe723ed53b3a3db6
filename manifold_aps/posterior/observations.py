"""Simulated observation streams `(y, A)` for amortised training and held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manifold_aps.operators import GaussianNoise, Mask, MaskGenerator

__all__ = ["ObservationBatch", "SimulatedObservations"]


@dataclass
class ObservationBatch:
    """A batch of masked, noisy observations.

    Attributes:
        y: observations `(B, N, C)` (zero where not observed), physical units.
        mask: boolean `(B, N, 1)` (True = observed).
        truth: the clean signals `(B, N, C)`, for evaluation only; training never reads it.
    """

    y: torch.Tensor
    mask: torch.Tensor
    truth: torch.Tensor

    def operator(self, domain) -> Mask:
        """The `Mask` operator of this batch."""
        return Mask(domain, self.mask)

    def slice(self, sl: slice) -> ObservationBatch:
        """Rows `sl` of the batch."""
        return ObservationBatch(self.y[sl], self.mask[sl], self.truth[sl])


class SimulatedObservations:
    """Observations `y = m * (x + sigma * eps)` of signals from a source, with masks from a generator.

    Arguments:
        source: an object with `batch(generator, n)` giving clean signals `(n, N, C)` (a
            `TensorSource`, `GaussianSource`, ...).
        masks: a `MaskGenerator` (one family or a `MixtureMaskGenerator`).
        noise: the observation noise.
    """

    def __init__(self, source, masks: MaskGenerator, noise: GaussianNoise):
        self.source, self.masks, self.noise = source, masks, noise

    def batch(self, generator: torch.Generator, n: int) -> ObservationBatch:
        """`n` observations drawn with `generator` (signals, masks and noise all from it)."""
        x = self.source.batch(generator, n)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        mask = self.masks.step(n, seed=seed)["mask"]
        y = self.noise(x, mask, rng=generator)
        return ObservationBatch(y, mask, x)
