"""Closed-form checks of a learned prior against a known Gaussian: score error and spectra."""

from __future__ import annotations

import torch

from manifold_aps.priors.gaussian import GaussianPrior
from manifold_aps.priors.score import ScorePrior

__all__ = ["band_power", "reference_in_normalized_space", "score_relative_error"]


def reference_in_normalized_space(reference: GaussianPrior, prior: ScorePrior) -> GaussianPrior:
    """The Gaussian law of `prior.normalize(x)` when `x ~ reference` (one-channel priors)."""
    if prior.channels != 1:
        raise ValueError("the closed-form check supports one-channel priors")
    mu, sd = float(prior.normalizer.mean[0]), float(prior.normalizer.std[0])
    if reference.custom_spectrum is not None:
        shape = {"spectrum": reference.custom_spectrum / sd**2}
    else:
        shape = {
            "variance": reference.variance / sd**2,
            "length_scale": reference.length_scale,
            "smoothness": reference.smoothness,
        }
    return GaussianPrior(
        reference.domain,
        **shape,
        nugget=reference.nugget / sd**2,
        mean=(reference.mean - mu) / sd,
        sde=prior.sde,
    )


@torch.no_grad()
def score_relative_error(
    prior: ScorePrior,
    reference: GaussianPrior,
    times: torch.Tensor,
    *,
    num_samples: int = 64,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Relative L2 error :math:`\|s_\theta - s\|/\|s\|` of the learned score at each of `times`.

    Signals are drawn from `reference`, normalised as the prior does, diffused to each `t`; the
    error is pooled over samples (ratio of sums of squares). Returns shape `(len(times),)`.
    """
    exact = reference_in_normalized_space(reference, prior)
    z = exact.sample(num_samples, rng=generator)
    out = []
    for t in times:
        t = torch.as_tensor(t, dtype=torch.float64)
        zt = exact.sde.scale_t(t) * z + exact.sde.sigma_t(t) * torch.randn(
            z.shape, generator=generator, dtype=z.dtype
        )
        s_true = exact.score(zt, t)
        s_model = prior.score(zt.float(), t.float()).double()
        out.append(((s_model - s_true).pow(2).sum() / s_true.pow(2).sum()).sqrt())
    return torch.stack(out)


def band_power(
    domain, x: torch.Tensor, num_modes: int, bands: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean power of signals `x` `(B, N, 1)` in bands of Laplace-Beltrami modes 1..K-1.

    Coefficients :math:`a_k = \phi_k^T M x`; bands are equal-count groups of consecutive modes
    (degenerate multiplets of the sphere stay together only approximately). Returns the mean
    eigenvalue `(bands,)` and mean power `(bands,)` of each band.
    """
    lam, phi = domain.eigenbasis(num_modes)
    coef = torch.einsum("nk,n,bn->bk", phi, domain.mass, x[..., 0].double())[:, 1:]
    power = coef.pow(2).mean(0)
    groups = torch.tensor_split(torch.arange(num_modes - 1), bands)
    return torch.stack([lam[1:][g].mean() for g in groups]), torch.stack(
        [power[g].mean() for g in groups]
    )
