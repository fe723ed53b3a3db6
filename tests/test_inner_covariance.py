"""The fitted inner covariance of DAPS against the closed form of a Gaussian prior."""

from __future__ import annotations

import pytest
import torch
from conftest import masked_gaussian_problem

from manifold_aps.posterior import ExactGaussianPosterior
from manifold_aps.posterior.daps import DAPS
from manifold_aps.posterior.inner_covariance import (
    InnerCovariance,
    eof_basis,
    exact_inner_covariance,
    fit_inner_covariance,
)


def _problem():
    domain, prior, noise, op, y, g = masked_gaussian_problem(2, 0.6, 0.1)
    return domain, prior, noise, op, y, g


def test_fit_in_the_prior_eigenbasis_is_the_closed_form():
    """Denoising errors of the exact denoiser, along the prior's eigenvectors: the exact variances.

    c = lambda s^2 / (a^2 lambda + s^2) at each of 6 levels, 3000 draws of 3000 prior samples
    (Monte Carlo relative error about sqrt(2/3000) = 2.6 % per entry); white variances would be
    off by up to the prior's eigenvalue spread.
    """
    _, prior, *_ = _problem()
    exact = exact_inner_covariance(prior, steps=6)
    signals = prior.sample(3000, rng=torch.Generator().manual_seed(1))
    fit = fit_inner_covariance(
        prior,
        signals,
        steps=6,
        basis=prior.cov_eigenvectors,
        draws=3000,
        batch=500,
        clip=None,
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(fit.timesteps, exact.timesteps)
    ratio = fit.variances / exact.variances
    assert (ratio - 1).abs().median() < 0.05 and (ratio - 1).abs().max() < 0.2
    # the eigenvalues span a factor > 10 at t = 1: a white covariance could not match them
    assert exact.variances[0].max() / exact.variances[0].min() > 10


def test_daps_with_the_exact_inner_covariance_is_exact_at_few_levels():
    """With Cov[x0 | z_t] exact, DAPS at K = 5 samples the exact posterior.

    64 samples of 2 fields on HEALPix 2: mean within 0.1 of the posterior std of the exact mean,
    std ratio 0.8-1.2 at hidden cells; the white width at K = 5 is further off (checked: its mean
    error is > 2x as large).
    """
    _, prior, noise, op, y, _ = _problem()
    exact = ExactGaussianPosterior(prior, noise).condition(y, op)
    hidden = ~op.range_mask.expand_as(exact.mean)

    def errors(cov):
        s = DAPS(prior, noise, steps=5, inner_covariance=cov).sample(
            y, op, 256, rng=torch.Generator().manual_seed(3)
        )
        err = ((s.mean(0) - exact.mean) / exact.std)[hidden].pow(2).mean().sqrt()
        return float(err), float((s.std(0)[hidden] / exact.std[hidden]).mean())

    err, ratio = errors(exact_inner_covariance(prior, steps=5))
    white_err, _ = errors(None)
    assert err < 0.15 and 0.85 < ratio < 1.15, (err, ratio)
    assert white_err > 2 * err, (white_err, err)


def test_eof_basis_and_a_fitted_covariance_are_sound():
    _, prior, *_ = _problem()
    signals = prior.sample(10, rng=torch.Generator().manual_seed(1))
    basis = eof_basis(signals, 64)
    assert basis.shape == (1, 48, 9)  # capped at M - 1 directions
    torch.testing.assert_close(basis[0].T @ basis[0], torch.eye(9, dtype=torch.float64))
    fit = fit_inner_covariance(prior, signals, steps=4, rank=4, draws=8)
    assert fit.variances.shape == (4, 1, 4) and fit.rest.shape == (4, 1) and fit.rank == 4
    again = InnerCovariance.from_state_dict(fit.state_dict())
    assert torch.equal(again.variances, fit.variances)
    # the variances shrink along the annealing: the denoiser is better at low noise
    assert (fit.variances[-1] < fit.variances[0]).all() and fit.rest[-1] < fit.rest[0]
    # a basis of every direction leaves nothing to `rest`: a typical variance, not ~0
    full = fit_inner_covariance(prior, signals, steps=4, basis="laplacian", rank=48, draws=8)
    assert full.rank == 48
    torch.testing.assert_close(full.rest[:, 0], full.variances[:, 0].median(1).values)


def test_inner_covariance_bad_input_errors():
    _, prior, noise, *_ = _problem()
    signals = prior.sample(10, rng=torch.Generator().manual_seed(1))
    fit = fit_inner_covariance(prior, signals, steps=4, rank=4, draws=8)
    with pytest.raises(ValueError, match="fitted for 4 levels"):
        DAPS(prior, noise, steps=5, inner_covariance=fit)
    with pytest.raises(ValueError, match="orthonormal"):
        fit_inner_covariance(prior, signals, steps=4, basis=torch.ones(48, 3), draws=8)
    with pytest.raises(ValueError, match="signals must be"):
        fit_inner_covariance(prior, signals[:1], steps=4)
    with pytest.raises(ValueError, match="> 0"):
        InnerCovariance(fit.timesteps, fit.basis, 0 * fit.variances, fit.rest)
