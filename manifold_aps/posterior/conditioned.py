"""The shared base of the conditional engines: prior units, first estimate, observation encoding.

`ConditionedEngine` is what the APS flow, the implicit generator and amortized VI build on: it
maps observations into the prior's standardised units, runs the `TikhonovEstimate`, and encodes
`(y, A)` as per-node features and a global context (`ObservationEncoding`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from manifold_aps.geometry import Domain
from manifold_aps.operators import GaussianNoise, LinearOperator
from manifold_aps.posterior.first_estimate import TikhonovEstimate
from manifold_aps.posterior.observations import check_observations

__all__ = ["VARIANCE_MODES", "ConditionedEngine", "ObservationEncoding"]

VARIANCE_MODES = 256  # the first estimate's prior-variance modes unless an engine says otherwise


@dataclass
class ObservationEncoding:
    r"""What an engine knows of `(y, A)`, in the prior's standardised units.

    Attributes:
        features: per-node features `(B, N, F)`: :math:`A^Ty_z`, coverage
            :math:`A^T\mathbf 1_{obs}`, and (with a first estimate) the estimate and its log
            variance proxy.
        context: global context `(B, 3)`: observed fraction, :math:`\log\sigma_z`, 1.
        estimate: the first estimate `(B, N, C)` or None.
        log_var: log posterior-variance proxy `(B, N, C)` or None.
        cholesky: Cholesky factors `(B, C, N, N)` of the estimate's precision (dense mode) or None.
    """

    features: torch.Tensor
    context: torch.Tensor
    estimate: torch.Tensor | None = None
    log_var: torch.Tensor | None = None
    cholesky: torch.Tensor | None = None


class ConditionedEngine(nn.Module):
    r"""Shared part of the amortized engines: units, first estimate and observation encoding.

    Works in the prior's standardised space `z = prior.normalize(x)` (identity for a Gaussian
    prior): `y` is mapped to :math:`y_z = (y - A\mu)/s` with noise :math:`\sigma/s`.

    Arguments:
        domain: the domain.
        channels: `C`.
        prior: the prior whose normaliser defines the standardised space.
        noise: the observation noise model (its sigma is in physical units).
        cg_iterations: iterations of the `TikhonovEstimate` (0: no first estimate).
        dense_limit: domains up to this many nodes use the dense estimate (Cholesky).
        variance_modes: Laplace-Beltrami modes of the iterative estimate's prior-variance
            expansion (`TikhonovEstimate`; saved with the weights, float64: `N x` this many).
    """

    CONTEXT = 3

    def __init__(
        self,
        domain: Domain,
        channels: int,
        prior,
        noise: GaussianNoise,
        cg_iterations: int,
        dense_limit: int,
        variance_modes: int = VARIANCE_MODES,
    ):
        super().__init__()
        self.domain, self.channels, self.noise = domain, channels, noise
        std = getattr(getattr(prior, "normalizer", None), "std", None)
        mean = getattr(getattr(prior, "normalizer", None), "mean", None)
        self.register_buffer(
            "norm_std", (std if std is not None else torch.ones(channels)).double().clone()
        )
        self.register_buffer(
            "norm_mean", (mean if mean is not None else torch.zeros(channels)).double().clone()
        )
        self.estimate = (
            TikhonovEstimate(
                domain,
                cg_iterations,
                dense=domain.num_nodes <= dense_limit,
                variance_modes=variance_modes,
            )
            if cg_iterations
            else None
        )

    @property
    def num_features(self) -> int:
        """`F`, the per-node features of `encode`."""
        return 4 * self.channels if self.estimate is not None else 2 * self.channels

    # -- unit conversions (physical <-> standardised) ------------------------------------------
    def to_z(self, x):
        """Physical -> standardised."""
        return (x - self.norm_mean.to(x.dtype)) / self.norm_std.to(x.dtype)

    def from_z(self, z):
        """Standardised -> physical."""
        return z * self.norm_std.to(z.dtype) + self.norm_mean.to(z.dtype)

    def log_abs_det_to_z(self) -> torch.Tensor:
        """log|det dz/dx| for one signal."""
        return -self.domain.num_nodes * torch.log(self.norm_std).sum()

    def encode(
        self, y: torch.Tensor, operator: LinearOperator, dtype: torch.dtype
    ) -> ObservationEncoding:
        """Features of observations `y` `(B, N_out, C)` made with `operator`."""
        check_observations(y, operator)
        y = y.to(dtype)
        obs = operator.range_mask
        obs = torch.ones_like(y) if obs is None else obs.to(dtype).expand_as(y)
        mean_obs = operator(
            self.norm_mean.to(dtype).expand(y.shape[0], self.domain.num_nodes, -1).contiguous()
        )
        y_z = (y - mean_obs) / self.norm_std.to(dtype) * obs
        sigma_z = self.noise.sigma / self.norm_std.to(dtype)
        feats = [operator.transpose(y_z), operator.transpose(obs)]
        estimate = log_var = chol = None
        if self.estimate is not None:
            estimate, log_var, chol = self.estimate(y_z, operator, sigma_z)
            feats.extend([estimate, log_var])
        frac = obs.flatten(1).mean(1)
        context = torch.stack(
            [frac, torch.log(sigma_z.mean()).expand_as(frac), torch.ones_like(frac)], dim=1
        )
        return ObservationEncoding(torch.cat(feats, dim=-1), context, estimate, log_var, chol)
