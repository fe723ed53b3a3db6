"""The Gaussian yardstick against closed forms: density, score, posterior, ML fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from manifold_aps.geometry import HealpixSphere, PlanarGrid, SphereGrid
from manifold_aps.operators import GaussianNoise, HeatBlur, Mask, RandomMaskGenerator, Subsample
from manifold_aps.posterior import ExactGaussianPosterior, operator_matrix
from manifold_aps.priors import VPSDE, GaussianPrior, fit_matern

HEALPIX = HealpixSphere(4)
LATLON = SphereGrid(np.arange(60, 39, -2.0), np.arange(-10, 11, 2.0))  # regional, non-uniform mass

PRIORS = {
    "healpix": lambda: GaussianPrior(HEALPIX, variance=2.0, length_scale=0.4, smoothness=1.5),
    "latlon": lambda: GaussianPrior(
        LATLON, variance=0.5, length_scale=0.05, smoothness=1.0, nugget=0.01
    ),
}


@pytest.mark.parametrize("name", list(PRIORS), ids=list(PRIORS))
def test_log_prob_matches_multivariate_normal(name, rng):
    prior = PRIORS[name]()
    x = prior.sample(4, channels=2, rng=rng)
    mvn = MultivariateNormal(
        torch.zeros(prior.domain.num_nodes, dtype=torch.float64), prior.covariance()
    )
    expected = mvn.log_prob(x.transpose(1, 2)).sum(-1)
    assert torch.allclose(prior.log_prob(x), expected, rtol=1e-10)


@pytest.mark.parametrize("name", list(PRIORS), ids=list(PRIORS))
def test_samples_have_the_prior_covariance(name, rng):
    prior = PRIORS[name]()
    n = 20000
    x = prior.sample(n, rng=rng)[..., 0]
    emp = torch.cov(x.T)
    cov = prior.covariance()
    # Monte Carlo standard error of a covariance entry: sqrt((C_ij^2 + C_ii C_jj) / n)
    se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert torch.all((emp - cov).abs() < 5 * se)


def test_average_pointwise_variance_is_the_variance_parameter():
    prior = GaussianPrior(LATLON, variance=0.7, length_scale=0.1)
    m = LATLON.mass
    avg = (m * prior.covariance().diagonal()).sum() / m.sum()
    assert avg.item() == pytest.approx(0.7, rel=1e-10)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.5, 1.0])
def test_score_is_gradient_of_diffused_log_density(t, rng):
    prior = PRIORS["latlon"]()
    sde = prior.sde
    x0 = prior.sample(2, rng=rng)
    xt = sde.scale_t(torch.tensor(t)) * x0 + sde.sigma_t(torch.tensor(t)) * torch.randn(
        x0.shape, generator=rng, dtype=x0.dtype
    )
    xt.requires_grad_(True)
    (grad,) = torch.autograd.grad(prior.diffused_log_prob(xt, t).sum(), xt)
    assert torch.allclose(prior.score(xt.detach(), t), grad, rtol=1e-8, atol=1e-8)
    # closed form: -(a^2 C + s^2 I)^{-1} x_t for a zero-mean prior
    a, s = float(sde.scale_t(torch.tensor(t))), float(sde.sigma_t(torch.tensor(t)))
    k = a**2 * prior.covariance() + s**2 * torch.eye(LATLON.num_nodes, dtype=torch.float64)
    expected = -torch.linalg.solve(k, xt.detach()[..., 0].T).T
    assert torch.allclose(prior.score(xt.detach(), t)[..., 0], expected, rtol=1e-7, atol=1e-7)


def test_vpsde_schedules():
    for schedule in ("linear", "cosine"):
        sde = VPSDE(schedule=schedule)
        t = torch.linspace(0, 1, 11, dtype=torch.float64)
        a, s = sde.scale_t(t), sde.sigma_t(t)
        assert torch.allclose(a**2 + s**2, torch.ones_like(t))
        assert a[0] == pytest.approx(1.0) and a[-1] < 0.05
        assert torch.all(a[1:] < a[:-1])
        # beta = -2 d log(alpha) / dt, checked by finite differences
        h = 1e-6
        fd = -2 * (sde.log_scale_t(t[1:-1] + h) - sde.log_scale_t(t[1:-1] - h)) / (2 * h)
        assert torch.allclose(sde.beta_t(t[1:-1]), fd, rtol=1e-5)
    with pytest.raises(ValueError, match="schedule must be one of"):
        VPSDE(schedule="quadratic")


def _normal_equations(prior, h, y_obs, sigma):
    cov = prior.covariance()
    precision = torch.linalg.inv(cov) + h.T @ h / sigma**2
    cov_post = torch.linalg.inv(precision)
    return cov_post @ (h.T @ y_obs / sigma**2), cov_post


OPERATORS = {
    "mask": lambda d: Mask(d, RandomMaskGenerator(d, missing=0.7).step(2, seed=0)["mask"]),
    "heatblur": lambda d: HeatBlur(d, 0.002),
    "subsample": lambda d: Subsample(d, torch.arange(0, d.num_nodes, 3)),
}


@pytest.mark.parametrize("op_name", list(OPERATORS), ids=list(OPERATORS))
@pytest.mark.parametrize("name", list(PRIORS), ids=list(PRIORS))
def test_posterior_mean_and_covariance_solve_the_normal_equations(name, op_name, rng):
    prior = PRIORS[name]()
    op = OPERATORS[op_name](prior.domain)
    noise = GaussianNoise(0.1)
    x = prior.sample(2, rng=rng)
    y = noise(op(x), op.range_mask, rng=rng)
    cond = ExactGaussianPosterior(prior, noise).condition(y, op)
    for b in range(2):
        if op.range_mask is not None:
            keep = op.range_mask[b, :, 0]
            h = torch.eye(prior.domain.num_nodes, dtype=torch.float64)[keep]
            y_obs = y[b, keep, 0]
        else:
            h = operator_matrix(op)
            y_obs = y[b, :, 0]
        mean, cov = _normal_equations(prior, h, y_obs, 0.1)
        assert torch.allclose(cond.mean[b, :, 0], mean, rtol=1e-8, atol=1e-8)
        assert torch.allclose(cond.covariance()[b, 0], cov, rtol=1e-8, atol=1e-10)
        assert torch.allclose(cond.std[b, :, 0], cov.diagonal().sqrt(), rtol=1e-8)


def test_posterior_samples_match_mean_and_covariance(rng):
    prior = PRIORS["latlon"]()
    op = OPERATORS["mask"](LATLON)
    noise = GaussianNoise(0.2)
    y = noise(op(prior.sample(2, rng=rng)), op.range_mask, rng=rng)
    cond = ExactGaussianPosterior(prior, noise).condition(y, op)
    n = 20000
    s = cond.sample(n, rng=rng)
    assert s.shape == (n, 2, LATLON.num_nodes, 1)
    cov = cond.covariance()[0, 0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert torch.all((s[:, 0, :, 0].mean(0) - cond.mean[0, :, 0]).abs() < 5 * se_mean)
    emp = torch.cov(s[:, 0, :, 0].T)
    se = ((cov**2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert torch.all((emp - cov).abs() < 5 * se)
    mvn = MultivariateNormal(cond.mean[0, :, 0], cov)
    assert torch.allclose(cond.log_prob(s[:5])[:, 0], mvn.log_prob(s[:5, 0, :, 0]), rtol=1e-9)


def test_posterior_with_prior_mean_and_channels(rng):
    mean = torch.linspace(-1, 1, HEALPIX.num_nodes, dtype=torch.float64)[:, None].repeat(1, 2)
    prior = GaussianPrior(HEALPIX, variance=1.0, length_scale=0.5, mean=mean)
    op = Mask(HEALPIX, RandomMaskGenerator(HEALPIX).step(1, seed=2)["mask"][0].repeat(1, 2))
    noise = GaussianNoise(0.05)
    x = prior.sample(1, channels=2, rng=rng)
    cond = ExactGaussianPosterior(prior, noise).condition(noise(op(x), op.range_mask, rng=rng), op)
    hidden = ~op.mask[0]
    # far from any observation the posterior mean tends to the prior mean; overall it is closer to x
    err_post = (cond.mean[0] - x[0])[hidden].pow(2).mean()
    err_prior = (mean - x[0])[hidden].pow(2).mean()
    assert err_post < err_prior
    assert torch.all(cond.std[0][~hidden] < 0.05 + 1e-9)


def test_fit_matern_recovers_hyperparameters(rng):
    truth = GaussianPrior(LATLON, variance=1.5, length_scale=0.06, smoothness=1.0)
    fit = fit_matern(LATLON, truth.sample(400, rng=rng))
    p = fit.prior
    assert p.variance == pytest.approx(1.5, rel=0.1)
    assert p.length_scale == pytest.approx(0.06, rel=0.1)
    assert p.smoothness == pytest.approx(1.0, rel=0.15)
    assert fit.num_fields == 400


def test_fit_matern_likelihood_is_at_least_the_truth(rng):
    truth = GaussianPrior(HEALPIX, variance=1.0, length_scale=0.3, smoothness=2.0, nugget=0.05)
    data = truth.sample(200, rng=rng)
    fit = fit_matern(HEALPIX, data, fit_nugget=True)
    assert fit.log_likelihood >= truth.log_prob(data).sum().item() - 1e-6
    assert fit.prior.log_prob(data).sum().item() == pytest.approx(fit.log_likelihood, rel=1e-9)
    # with the smoothness known, the white-noise floor is identifiable
    fixed = fit_matern(HEALPIX, data, smoothness=2.0, fit_nugget=True).prior
    assert fixed.nugget == pytest.approx(0.05, rel=0.3)


def test_prior_argument_errors():
    with pytest.raises(ValueError, match="length_scale must be a positive"):
        GaussianPrior(HEALPIX, length_scale=-1.0)
    with pytest.raises(ValueError, match="supports at most"):
        GaussianPrior(PlanarGrid(80, 80))
    with pytest.raises(ValueError, match="mean must be a number or a tensor"):
        GaussianPrior(HEALPIX, mean=torch.zeros(5, 1))
    with pytest.raises(ValueError, match="NaN"):
        fit_matern(HEALPIX, torch.full((2, HEALPIX.num_nodes, 1), float("nan")))
