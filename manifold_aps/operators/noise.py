r"""Observation noise models: :math:`y = A x + \epsilon`."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GaussianNoise"]


class GaussianNoise(nn.Module):
    r"""Independent Gaussian noise of standard deviation `sigma` on each observed entry.

    :math:`y_j = (Ax)_j + \sigma \epsilon_j`, :math:`\epsilon_j \sim N(0, 1)`, for the entries `j`
    that the operator's `range_mask` marks as observed; the others stay zero. The noise is
    per observation (a station reading has error `sigma` whatever the cell's area), so the
    likelihood is a plain Euclidean sum over observations.

    Arguments:
        sigma: noise standard deviation, in the units of the signal, `> 0`.

    Example:
        >>> noise = GaussianNoise(0.1)
        >>> y = noise(torch.zeros(1, 5, 1), rng=torch.Generator().manual_seed(0))
        >>> y.shape
        torch.Size([1, 5, 1])
    """

    def __init__(self, sigma: float):
        super().__init__()
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        self.sigma = float(sigma)

    def extra_repr(self) -> str:
        """The noise level, for `repr`."""
        return f"sigma={self.sigma:g}"

    def forward(
        self,
        y_clean: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Add noise to `y_clean` `(B, N_out, C)` where `mask` (broadcastable, bool) is True."""
        eps = torch.randn(y_clean.shape, generator=rng, dtype=y_clean.dtype, device=y_clean.device)
        y = y_clean + self.sigma * eps
        return y if mask is None else y * mask.to(y.dtype)

    def log_likelihood(
        self, y: torch.Tensor, y_pred: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        r""":math:`\log p(y | x)` with `y_pred = A x`, summed over observed entries; shape `(B,)`.

        Includes the normalising constant :math:`-\tfrac{n}{2}\log(2\pi\sigma^2)`, `n` the number
        of observed entries of each batch element.
        """
        r2 = (y - y_pred) ** 2
        if mask is None:
            count = torch.full((y.shape[0],), y[0].numel(), dtype=y.dtype, device=y.device)
        else:
            maskf = mask.to(y.dtype).expand_as(r2)
            r2 = r2 * maskf
            count = maskf.flatten(1).sum(1)
        return -0.5 * r2.flatten(1).sum(1) / self.sigma**2 - 0.5 * count * math.log(
            2 * math.pi * self.sigma**2
        )
