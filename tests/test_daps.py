"""DAPS: its exact inner step against the dense Gaussian conditional; the sampler end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import masked_gaussian_problem

from manifold_aps.geometry import IcosphereMesh, PlanarGrid
from manifold_aps.operators import GaussianNoise, HeatBlur, Mask, Subsample
from manifold_aps.posterior import ExactGaussianPosterior, operator_matrix
from manifold_aps.posterior.daps import DAPS, distinct_rows
from manifold_aps.posterior.inner_covariance import InnerCovariance
from manifold_aps.priors.score import ChannelNormalizer, ScorePrior


def _scaled_prior(domain):
    """A score prior standardised with mean 2, std 3: denorm(z) = 2 + 3 z (its net is unused)."""
    prior = ScorePrior(domain, 1, normalizer=ChannelNormalizer([2.0], [3.0]))
    return prior.double()


def _dense_conditional(centre, prior_cov, y, a, obs, scale, mu, sigma):
    """Mean `(N,)`, covariance `(N, N)` of N(z; c, prior_cov) N(y; mu + A scale z, sigma^2), obs."""
    ao = a * obs[:, None]  # rows of A that are observed
    inv = torch.linalg.inv(prior_cov)
    cov = torch.linalg.inv(inv + scale**2 * ao.T @ ao / sigma**2)
    rhs = inv @ centre + scale * ao.T @ ((y - a @ torch.full_like(centre, mu)) * obs) / sigma**2
    return cov @ rhs, cov


def _inner_covariance(nodes, rank, generator):
    """A random `InnerCovariance`, the same at DAPS's 3 levels: `(it, its dense matrix (N, N))`."""
    basis = torch.linalg.qr(torch.randn(nodes, rank, generator=generator, dtype=torch.float64))[0]
    c = 0.05 + torch.rand(rank, generator=generator, dtype=torch.float64)
    w = torch.tensor([0.3], dtype=torch.float64)
    dense = basis @ torch.diag(c) @ basis.T + w * (torch.eye(nodes) - basis @ basis.T)
    ts = torch.linspace(1, 1e-3, 3, dtype=torch.float64)
    return InnerCovariance(ts, basis[None], c.expand(3, 1, rank), w.expand(3, 1)), dense


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize(
    ("kind", "solver"), [("mask", "auto"), ("subsample", "auto"), ("blur", "auto"), ("blur", "cg")]
)
def test_inner_step_is_the_exact_gaussian_conditional(kind, solver, structured):
    """With zero noise draws it returns the dense conditional mean; its draws have its covariance.

    On an 8 x 8 grid; the mask's and the subsampling's solves are elementwise, the blur's in the
    dense eigenbasis of A^T A ("auto") or by conjugate gradients; the inner Gaussian white
    (r^2 I) or `structured`, an `InnerCovariance` of rank 10 (Woodbury on the first two, a
    preconditioned-free CG on the last).
    """
    domain = PlanarGrid(8, 8)
    nodes = domain.num_nodes
    prior, noise = _scaled_prior(domain), GaussianNoise(0.2)
    g = torch.Generator().manual_seed(0)
    if kind == "mask":
        op = Mask(domain, torch.arange(nodes) % 3 != 0)
    elif kind == "subsample":
        op = Subsample(domain, torch.arange(0, nodes, 5))
    else:
        op = HeatBlur(domain, t=0.3)
    r, w, c, cov_fit = 0.4, 0.16, None, None  # white: r^2 I
    prior_cov = r**2 * torch.eye(nodes, dtype=torch.float64)
    if structured:
        cov_fit, prior_cov = _inner_covariance(nodes, 10, g)
        w, c = cov_fit.rest[0], cov_fit.variances[0]
    settings = {"solver": solver, "steps": 3, "t_min": 1e-3, "inner_covariance": cov_fit}
    daps = DAPS(prior, noise, cg_tol=1e-12, cg_iter=500, **settings)
    centre = torch.randn(1, nodes, 1, generator=g, dtype=torch.float64)
    truth = 2 + 3 * torch.randn(1, nodes, 1, generator=g, dtype=torch.float64)
    y = noise(op(truth), op.range_mask, rng=g)
    a = operator_matrix(op).double()
    obs = (
        op.mask[0, :, 0].double() if kind == "mask" else torch.ones(a.shape[0], dtype=torch.float64)
    )
    mean, cov = _dense_conditional(centre[0, :, 0], prior_cov, y[0, :, 0], a, obs, 3.0, 2.0, 0.2)
    zero = torch.zeros_like(centre)
    if structured:
        draw = daps.inner_step(y, op, torch.float64, "cpu")
        got, iters = draw(centre, w, c, zero, torch.zeros_like(y))
    else:
        got, iters = daps.conditional_sample(centre, r, y, op, zero, torch.zeros_like(y))
    torch.testing.assert_close(got[0, :, 0], mean, rtol=1e-7, atol=1e-8)
    assert (iters == 0) == (solver == "auto")  # CG only when asked for
    n = 1000
    loose = DAPS(prior, noise, cg_tol=1e-6, **settings)
    draw = loose.inner_step(y.expand(n, -1, -1), op, torch.float64, "cpu")
    many = draw(
        centre.expand(n, -1, -1),
        w,
        c,
        torch.randn(n, nodes, 1, generator=g, dtype=torch.float64),
        torch.randn(n, *y.shape[1:], generator=g, dtype=torch.float64),
    )[0][:, :, 0]
    # whitened by the exact covariance, the draws are white: their covariance is I up to
    # Monte Carlo error (entries' std 1/sqrt(n) = 0.03)
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), (many - mean).T, upper=False)
    assert white.mean(1).abs().max() < 0.2
    assert (torch.cov(white) - torch.eye(nodes, dtype=torch.float64)).abs().max() < 0.25


def test_structured_inner_step_solves_each_distinct_mask_once_and_right():
    """Copies of two masks, interleaved as `run` batches them: each row as if drawn alone.

    On an icosphere, whose unequal cell areas make a mask's A^T A 1 only up to rounding.
    `distinct_rows` groups the four rows into the two masks; unequal groups fall back to one
    group per row.
    """
    domain = IcosphereMesh(2)
    nodes = domain.num_nodes
    g = torch.Generator().manual_seed(2)
    keep = torch.rand(2, nodes, 1, generator=g) < 0.5
    op = Mask(domain, keep.repeat(2, 1, 1))  # rows: mask 0, mask 1, mask 0, mask 1
    cov, dense_cov = _inner_covariance(nodes, 6, g)
    prior, noise = _scaled_prior(domain), GaussianNoise(0.2)
    daps = DAPS(prior, noise, steps=3, inner_covariance=cov)
    x = torch.randn(4, nodes, 1, generator=g, dtype=torch.float64)
    y = noise(op(x), None, rng=g)
    centre = torch.randn(4, nodes, 1, generator=g, dtype=torch.float64)
    eps = torch.randn(4, nodes, 1, generator=g, dtype=torch.float64), torch.randn_like(y)
    w, c = cov.rest[0], cov.variances[0]
    both = daps.inner_step(y, op, torch.float64, "cpu")(centre, w, c, *eps)[0]
    zero = torch.zeros_like(centre), torch.zeros_like(y)
    means = daps.inner_step(y, op, torch.float64, "cpu")(centre, w, c, *zero)[0]
    a = torch.eye(nodes, dtype=torch.float64)  # a mask: the identity on its observed entries
    for i in range(4):
        alone = Mask(domain, op.mask[i : i + 1])
        draw = daps.inner_step(y[i : i + 1], alone, torch.float64, "cpu")
        one = draw(centre[i : i + 1], w, c, eps[0][i : i + 1], eps[1][i : i + 1])[0]
        torch.testing.assert_close(both[i : i + 1], one)
        obs = op.mask[i, :, 0].double()
        mean, _ = _dense_conditional(centre[i, :, 0], dense_cov, y[i, :, 0], a, obs, 3.0, 2.0, 0.2)
        torch.testing.assert_close(means[i, :, 0], mean, rtol=1e-7, atol=1e-8)
    rows, order = distinct_rows(op.mask.double())
    assert rows.shape[0] == 2 and sorted([order[:2].tolist(), order[2:].tolist()]) == [
        [0, 2],
        [1, 3],
    ]
    _, order = distinct_rows(torch.tensor([[0.0], [0.0], [1.0]]))
    assert order.tolist() == [0, 1, 2]


def _gaussian_problem():
    """`(prior, noise, operator, y)`: two Matérn draws on HEALPix 4, 70 % hidden, noise 0.1."""
    _, prior, noise, op, y, _ = masked_gaussian_problem(4, 0.7, 0.1)
    return prior, noise, op, y


def test_daps_with_the_exact_score_approaches_the_exact_posterior():
    """With the exact score, 20 levels: the sample mean is near the posterior's, the data fitted.

    Measured (32 samples): RMSE to the exact posterior mean 0.12 of the prior mean's, the samples'
    std at hidden cells 0.85 of the exact posterior std's.
    """
    prior, noise, op, y = _gaussian_problem()
    exact = ExactGaussianPosterior(prior, noise).condition(y, op)
    out = DAPS(prior, noise, steps=20).run(y, op, 32, generator=torch.Generator().manual_seed(1))
    assert out.sample.shape == (32, 2, 192, 1) and out.nfe == 20 and out.cg_iterations == 0
    err = (out.sample.mean(0) - exact.mean).pow(2).mean().sqrt()
    assert err < 0.3 * exact.mean.pow(2).mean().sqrt()
    hidden = ~op.range_mask.expand_as(exact.mean)
    ratio = (out.sample.std(0)[hidden] / exact.std[hidden]).mean()
    assert 0.6 < ratio < 1.3, ratio
    m = op.range_mask
    resid = (out.sample - y)[m.expand(32, -1, -1, -1)]
    assert resid.pow(2).mean().sqrt() < 2 * noise.sigma


def test_daps_is_reproducible_needs_no_gradients_and_counts_its_cost():
    prior, noise, op, y = _gaussian_problem()
    daps = DAPS(prior, noise, steps=6, max_batch=3)  # chunks of one copy of the 2 fields
    first = daps.sample(y, op, 3, rng=torch.Generator().manual_seed(5))
    again = daps.sample(y, op, 3, rng=torch.Generator().manual_seed(5))
    other = daps.sample(y, op, 3, rng=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert not first.requires_grad and daps.cost() == (6, 0)
    assert torch.equal(daps.timesteps(), torch.linspace(1, 1e-3, 6, dtype=torch.float64))


def test_daps_bad_input_errors():
    prior, noise, op, y = _gaussian_problem()
    with pytest.raises(ValueError, match="steps"):
        DAPS(prior, noise, steps=2)
    with pytest.raises(ValueError, match="inner_scale"):
        DAPS(prior, noise, inner_scale=0)
    with pytest.raises(ValueError, match="n must be"):
        DAPS(prior, noise).run(y, op, 0)
    bad = y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        DAPS(prior, noise).run(bad, op, 1)
