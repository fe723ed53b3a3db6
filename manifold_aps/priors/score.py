r"""`ScorePrior`: a learned diffusion prior :math:`p_\theta(x)` on a domain (score net + VP-SDE)."""

from __future__ import annotations

import torch
from torch import nn

from manifold_aps.geometry import Domain
from manifold_aps.nn import ScoreNet, ScoreNetConfig
from manifold_aps.priors.sde import VPSDE

__all__ = ["ChannelNormalizer", "ScorePrior", "dsm_loss", "dsm_noise"]


class ChannelNormalizer(nn.Module):
    r"""Per-channel affine standardisation :math:`z = (x - \mu_c) / s_c`, fitted on training data.

    Arguments:
        mean, std: shape `(C,)`, in the units of the signal.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        mean, std = (
            torch.as_tensor(mean, dtype=torch.float64),
            torch.as_tensor(std, dtype=torch.float64),
        )
        if mean.shape != std.shape or mean.dim() != 1 or torch.any(std <= 0):
            raise ValueError(
                "mean and std must be (C,) with std > 0, "
                f"got {tuple(mean.shape)}, {tuple(std.shape)}"
            )
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @classmethod
    def fit(cls, data: torch.Tensor) -> ChannelNormalizer:
        """Mean and standard deviation of each channel of `data` `(B, N, C)` (batch and nodes)."""
        flat = data.reshape(-1, data.shape[-1]).double()
        return cls(flat.mean(0), flat.std(0).clamp_min(1e-12))

    @classmethod
    def identity(cls, channels: int) -> ChannelNormalizer:
        """No change."""
        return cls(torch.zeros(channels), torch.ones(channels))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical units -> standardised, `(*, N, C)`."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised -> physical units, `(*, N, C)`."""
        return z * self.std.to(z.dtype) + self.mean.to(z.dtype)

    def log_abs_det(self, num_nodes: int) -> torch.Tensor:
        r""":math:`\log|\det \partial z/\partial x| = -N\sum_c \log s_c` (for densities in x)."""
        return -num_nodes * torch.log(self.std).sum()


class ScorePrior(nn.Module):
    r"""A diffusion prior on a domain, score :math:`-\hat\epsilon_\theta(z_t, t)/\sigma_t`.

    The diffusion runs on standardised signals `z = normalize(x)` (per-channel mean and std);
    `score`, `eps` and the samplers work in that space, `normalize`/`denormalize` convert. `t` is
    the dimensionless time of `sde` in [0, 1]; `z` is expected to have about unit variance.

    Arguments:
        domain: the domain.
        channels: signal channels `C`.
        config: the `ScoreNet` architecture.
        sde: the diffusion.
        normalizer: the standardisation (default identity).
    """

    def __init__(
        self,
        domain: Domain,
        channels: int = 1,
        config: ScoreNetConfig | None = None,
        sde: VPSDE | None = None,
        normalizer: ChannelNormalizer | None = None,
    ):
        super().__init__()
        self.domain = domain
        self.channels = channels
        self.sde = sde or VPSDE()
        self.net = ScoreNet(domain, channels, config)
        self.normalizer = normalizer or ChannelNormalizer.identity(channels)

    def config(self) -> dict:
        """Everything needed to rebuild the module around a state dict (plain types)."""
        return {
            "channels": self.channels,
            "net": self.net.config.to_dict(),
            "sde": self.sde.config(),
        }

    @classmethod
    def from_config(cls, domain: Domain, config: dict) -> ScorePrior:
        """Rebuild from `config()` (weights are loaded separately)."""
        net = dict(config["net"])
        net["channels"] = tuple(net["channels"])
        return cls(domain, config["channels"], ScoreNetConfig(**net), VPSDE(**config["sde"]))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Physical units -> the diffusion's standardised space."""
        return self.normalizer.normalize(x)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """The diffusion's standardised space -> physical units."""
        return self.normalizer.denormalize(z)

    def log_abs_det_normalize(self) -> torch.Tensor:
        r""":math:`\log|\det\partial z/\partial x|` of `normalize` on one signal `(N, C)`."""
        return self.normalizer.log_abs_det(self.domain.num_nodes)

    def eps(self, z_t: torch.Tensor, t) -> torch.Tensor:
        r"""Predicted noise :math:`\hat\epsilon_\theta(z_t, t)`, `(B, N, C)`."""
        t = torch.as_tensor(t, dtype=z_t.dtype, device=z_t.device)
        return self.net(z_t, t.expand(z_t.shape[0]) if t.dim() == 0 else t)

    def score(self, z_t: torch.Tensor, t) -> torch.Tensor:
        r"""Score :math:`\nabla_z \log p_t(z_t) \approx -\hat\epsilon_\theta(z_t, t)/\sigma_t`."""
        t = torch.as_tensor(t, dtype=z_t.dtype, device=z_t.device)
        sigma = self.sde.sigma_t(t.expand(z_t.shape[0]) if t.dim() == 0 else t)
        return -self.eps(z_t, t) / sigma[:, None, None]

    def sigma_t(self, t):
        """Noise level of the diffusion at `t`."""
        return self.sde.sigma_t(t)

    def scale_t(self, t):
        """Signal scale of the diffusion at `t`."""
        return self.sde.scale_t(t)


def dsm_noise(
    batch_size: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    *,
    t_min: float = 1e-3,
    dtype=torch.float32,
    device=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified times `(B,)` in [t_min, 1] and standard noise `(B, *shape)` for `dsm_loss`.

    Element `i` draws its time in the `i`-th of `B` equal sub-intervals (stratification lowers
    the variance of the loss without biasing it).
    """
    u = (
        torch.arange(batch_size, dtype=dtype, device=device)
        + torch.rand(batch_size, generator=generator, dtype=dtype, device=device)
    ) / batch_size
    eps = torch.randn((batch_size, *shape), generator=generator, dtype=dtype, device=device)
    return t_min + (1 - t_min) * u, eps


def dsm_loss(
    prior: ScorePrior, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    r"""Denoising score matching with the standard (noise-prediction) weighting.

    :math:`\mathbb{E}\|\hat\epsilon_\theta(\alpha_t z+\sigma_t\epsilon, t)-\epsilon\|^2`, averaged
    over batch, nodes and channels, with `z = normalize(x)`; `t` `(B,)` and `eps` `(B, N, C)` come
    from `dsm_noise`.
    """
    z = prior.normalize(x)
    a, s = prior.sde.scale_t(t)[:, None, None], prior.sde.sigma_t(t)[:, None, None]
    return (prior.eps(a * z + s * eps, t) - eps).pow(2).mean()
