"""Run-away samples: DPS's clipped Tweedie estimate and the divergence warning of every sampler."""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from conftest import masked_gaussian_problem

from manifold_aps.posterior import DPS
from manifold_aps.posterior.divergence import DivergenceWarning, warn_if_diverged


def _fake_sampler(mean: float, std: float):
    return types.SimpleNamespace(norm_mean=torch.tensor([mean]), norm_std=torch.tensor([std]))


def test_samples_far_outside_the_training_range_are_named_and_kept():
    sampler = _fake_sampler(280.0, 20.0)
    samples = torch.full((3, 2, 10, 1), 285.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_diverged(samples, sampler, "APS") == 0
    samples[1, 0, 4, 0] = 280.0 + 20.0 * 50  # 50 training stds away
    samples[2, 1, 0, 0] = float("nan")  # not finite counts as diverged
    before = samples.clone()
    with pytest.warns(DivergenceWarning, match=r"APS: 2 of 6 samples left the prior's range"):
        assert warn_if_diverged(samples, sampler, "APS", hint="; try X") == 2
    assert torch.equal(torch.nan_to_num(samples), torch.nan_to_num(before))
    # an identity normaliser carries no statistics: nothing to compare with
    assert warn_if_diverged(samples * 1e6, _fake_sampler(0.0, 1.0), "APS") == 0


def test_dps_clip_keeps_a_run_away_guidance_in_range():
    _, prior, noise, op, y, g = masked_gaussian_problem(2, 0.7, 0.1, fields=1)
    wild = DPS(prior, noise, steps=10, guidance=200.0, clip=None).run(y, op, 2, generator=g)
    assert wild.sample.abs().max() > 50  # the guidance alone runs away
    tame = DPS(prior, noise, steps=10, guidance=200.0).run(y, op, 2, generator=g)
    assert tame.sample.abs().max() <= 6.0 + 1e-9  # the default clip: +-6 standardised units
    with pytest.raises(ValueError, match="clip must be > 0"):
        DPS(prior, noise, clip=0.0)
