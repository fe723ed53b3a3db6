"""DPS against the exact Gaussian posterior."""

from __future__ import annotations

import pytest
import torch
from conftest import masked_gaussian_problem

from manifold_aps.geometry import HealpixSphere
from manifold_aps.operators import GaussianNoise, Mask
from manifold_aps.posterior import DPS, ExactGaussianPosterior
from manifold_aps.priors import GaussianPrior


def test_dps_mean_approaches_exact_posterior_mean():
    """With the exact score, DPS's sample mean is far closer to the exact posterior mean.

    It is far closer than the prior mean is (measured: 0.17 of the prior's error with 100 steps and
    32 samples; DPS is biased, so the ratio does not go to 0 with more steps).
    """
    domain, prior, noise, op, y, g = masked_gaussian_problem(4, 0.7, 0.1)
    exact = ExactGaussianPosterior(prior, noise).condition(y, op)
    out = DPS(prior, noise, steps=100, guidance=1.0).run(y, op, 32, generator=g)
    assert out.sample.shape == (32, 2, domain.num_nodes, 1)
    assert out.nfe == 101 and DPS(prior, noise, steps=100).cost() == (101, 100)
    err = (out.sample.mean(0) - exact.mean).pow(2).mean().sqrt()
    prior_err = exact.mean.pow(2).mean().sqrt()
    assert err < 0.3 * prior_err, (err, prior_err)
    # the samples explain the data: observed residuals at the noise level
    resid = (op(out.sample.mean(0)) - y)[op.range_mask]
    assert resid.pow(2).mean().sqrt() < 3 * noise.sigma


def test_dps_argument_errors():
    prior = GaussianPrior(HealpixSphere(1))
    with pytest.raises(ValueError, match="steps must be"):
        DPS(prior, GaussianNoise(0.1), steps=0)


def test_auto_guidance_is_the_candidate_best_at_held_out_observed_entries_and_kept():
    from manifold_aps.operators import HeatBlur
    from manifold_aps.posterior.dps import GUIDANCE_CHOICES

    domain, prior, noise, op, y, _ = masked_gaussian_problem(2, 0.5, 0.05)
    dps = DPS(prior, noise, steps=30, guidance="auto", holdout=0.3)
    first = dps.sample(y, op, 2, rng=torch.Generator().manual_seed(1))
    assert sorted(dps.tuning) == sorted(GUIDANCE_CHOICES)
    assert dps.guidance_used == min(dps.tuning, key=dps.tuning.get)
    # the RMSEs differ between candidates: the choice is a real one
    assert dps.tuning[0.01] > 1.1 * min(dps.tuning.values())  # ~unguided: worse
    tuning = dict(dps.tuning)
    again = dps.sample(y, op, 2, rng=torch.Generator().manual_seed(1))  # no tuning this time
    assert torch.equal(first, again)  # tuning leaves the caller's generator alone
    dps.sample(y[:1] * 0.5, Mask(domain, op.mask[:1]), 1)  # later calls keep the choice
    assert dps.tuning == tuning and first.shape == (2, 2, domain.num_nodes, 1)
    with pytest.raises(ValueError, match="Mask"):
        DPS(prior, noise, steps=3, guidance="auto").sample(y, HeatBlur(domain, 0.1), 1)
    with pytest.raises(ValueError, match="'auto'"):
        DPS(prior, noise, guidance="fast")
