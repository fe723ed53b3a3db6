"""Simulated observation streams `(y, A)` for amortised training and held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manifold_aps.operators import GaussianNoise, Mask, MaskGenerator

__all__ = ["ObservationBatch", "SimulatedObservations", "check_observations"]


def check_observations(y: torch.Tensor, operator, name: str = "y") -> None:
    """Raise a clear ValueError unless `y` `(B, N_out, C)` fits `operator` and is finite.

    Every engine calls this where observations enter it. A NaN or ±inf observation would turn
    the posterior of its whole field into NaN; entries outside the operator's `range_mask` carry
    no data but must be 0 (as the operator's output is there), not NaN.

    Arguments:
        y: observations `(B, N_out, C)`.
        operator: the `LinearOperator` that made them.
        name: what to call `y` in the message.
    """
    operator.check_output(y, name)
    bad = ~torch.isfinite(y)
    if not bool(bad.any()):
        return
    observed = operator.range_mask
    observed = torch.ones_like(bad) if observed is None else observed.to(torch.bool).expand_as(bad)
    n_obs, n_bad = int((bad & observed).sum()), int(bad.sum())
    raise ValueError(
        f"{name} holds {n_bad} non-finite value(s) (NaN or inf): {n_obs} at observed entries, "
        f"{n_bad - n_obs} at entries the operator does not observe; observations must be finite "
        "(hide missing values with the mask and set them to 0)"
    )


@dataclass
class ObservationBatch:
    """A batch of masked, noisy observations.

    Attributes:
        y: observations `(B, N, C)` (zero where not observed), physical units.
        mask: boolean `(B, N, 1)` (True = observed).
        truth: the clean signals `(B, N, C)`, for evaluation; the reverse-KL objectives never
            read it (APS's optional forward-KL term on the training signals does).
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
    """Observations `y = m * (x + sigma * eps)` of signals from a source, masks from a generator.

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
