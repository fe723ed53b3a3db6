"""The check every learned sampler's output passes: samples far outside the prior's range are named.

A diffusion sampler with too strong a guidance or too few steps can run away (DPS at 20 steps
on the coarsened global ERA5 field drew values of 1e4 K); its samples are still finite, so
nothing downstream notices. `warn_if_diverged` compares samples with the training statistics the
prior was standardised with and warns, naming the sampler, the count and how far they went.
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "DIVERGED_STD",
    "DIVERGENCE_HINTS",
    "DivergenceWarning",
    "sampler_scale",
    "warn_if_diverged",
]

DIVERGED_STD = 10.0  # training standard deviations from the training mean: "left the range by far"
DIVERGENCE_HINTS = {  # engine name -> what to change, appended to the warning
    "dps": "; lower --guidance or raise --dps-steps",
    "daps": "; raise --daps-steps",
}


class DivergenceWarning(UserWarning):
    """Posterior samples far outside the range of the prior's training data."""


def sampler_scale(sampler) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The channel mean and std `(C,)` (physical units) the sampler's prior was trained with.

    Read from `sampler.norm_mean`/`norm_std` (distilled engines) or `sampler.prior.normalizer`
    (DPS, MGDM). None when neither exists or the normaliser is the identity (no statistics).
    """
    normalizer = getattr(getattr(sampler, "prior", None), "normalizer", None)
    mean = getattr(sampler, "norm_mean", getattr(normalizer, "mean", None))
    std = getattr(sampler, "norm_std", getattr(normalizer, "std", None))
    if mean is None or std is None:
        return None
    mean = torch.as_tensor(mean).detach().reshape(-1).double().cpu()
    std = torch.as_tensor(std).detach().reshape(-1).double().cpu()
    if bool(torch.all(mean == 0)) and bool(torch.all(std == 1)):
        return None
    return mean, std


def warn_if_diverged(
    samples: torch.Tensor, sampler, name: str, *, threshold: float = DIVERGED_STD, hint: str = ""
) -> int:
    """Warn when samples `(n, B, N, C)` (physical units) leave the prior's range by far.

    A sample of one field diverged when any of its values lies more than `threshold` training
    standard deviations from the training mean (`sampler_scale`). The samples are not changed.

    Args:
        samples: posterior samples `(n, B, N, C)`.
        sampler: the sampler that drew them (see `sampler_scale`).
        name: the sampler's name, for the message.
        threshold: standard deviations (default `DIVERGED_STD`).
        hint: appended to the message (what to change).

    Returns:
        the number of diverged (sample, field) pairs; 0 when the sampler has no statistics.
    """
    scale = sampler_scale(sampler)
    if scale is None:
        return 0
    mean, std = scale
    z = (samples.detach().double().cpu() - mean) / std
    worst = torch.nan_to_num(z.abs(), nan=float("inf")).flatten(2).amax(2)  # (n, B)
    bad = int((worst > threshold).sum())
    if bad:
        warnings.warn(
            f"{name}: {bad} of {worst.numel()} samples left the prior's range (up to "
            f"{float(worst.max()):.3g} training standard deviations from its mean, more than "
            f"{threshold:g}); their mean and spread are not to be trusted{hint}",
            DivergenceWarning,
            stacklevel=2,
        )
    return bad
