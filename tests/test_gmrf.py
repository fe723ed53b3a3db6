"""The sparse Whittle-Matérn GMRF against dense linear algebra with the same precision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.stats
import torch

from manifold_aps.geometry import HealpixSphere, IcosphereMesh, PlanarGrid, SphereGrid
from manifold_aps.operators import GaussianNoise, Identity, Mask, Subsample
from manifold_aps.posterior import ExactGaussianPosterior
from manifold_aps.posterior.gmrf import GMRFObservation, GMRFPosterior, observed_nodes
from manifold_aps.priors import GaussianPrior
from manifold_aps.priors.gmrf import MaternGMRF, matern_kappa_tau
from manifold_aps.sparse_cholesky import NotPositiveDefiniteError, SparseCholesky

DOMAINS = {
    "healpix4": lambda: HealpixSphere(4),
    "icosphere2": lambda: IcosphereMesh(2),
    "latlon": lambda: SphereGrid(np.linspace(-80, 80, 12), np.arange(0, 360, 20.0)),
    "plane": lambda: PlanarGrid(9, 11),
}


def _random_spd(n: int, rng) -> sp.csc_matrix:
    a = sp.random(
        n, n, density=0.05, random_state=np.random.RandomState(int(rng.integers(1 << 30)))
    )
    return (a @ a.T + sp.eye(n) * 0.5).tocsc()


def test_selected_inversion_completes_a_pattern_superlu_left_short():
    """A near-diagonal matrix: its fill underflows to exact zeros, which SuperLU does not store.

    The Takahashi recursion needs those entries (measured: 408 stored of 1093 on this 12 x 12
    grid); it completes the pattern symbolically and is exact (a degenerate GMRF fit gave such
    a factor in `impute`).
    """
    n = 12
    ring = sp.diags([np.ones(n - 1), np.ones(n - 1)], [-1, 1])
    grid = (sp.kron(sp.eye(n), ring) + sp.kron(ring, sp.eye(n))).tocsc()
    a = (sp.eye(n * n) + 1e-170 * grid).tocsc()
    f = SparseCholesky(a)
    stored = f.lower.nnz
    np.testing.assert_allclose(f.inverse_diagonal(), np.diag(np.linalg.inv(a.toarray())))
    assert f.lower.nnz > stored  # the completed pattern replaced SuperLU's


def test_sparse_cholesky_matches_dense(np_rng):
    a = _random_spd(150, np_rng)
    dense = a.toarray()
    f = SparseCholesky(a)
    b = np_rng.standard_normal((150, 3))
    np.testing.assert_allclose(f.solve(b), np.linalg.solve(dense, b), rtol=1e-10, atol=1e-12)
    assert f.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], rel=1e-12)
    inv = np.linalg.inv(dense)
    np.testing.assert_allclose(f.inverse_diagonal(), np.diag(inv), rtol=1e-10)
    # R R^T = A for the square-root factor
    r = f.sqrt_times(np.eye(150))
    np.testing.assert_allclose(r @ r.T, dense, atol=1e-10)
    # the selected inverse equals the inverse on the pattern of L, so traces with A's pattern are
    # exact
    other = (a + sp.diags(np.arange(150.0))).tocsc()
    assert f.trace_product(other) == pytest.approx(np.trace(inv @ other.toarray()), rel=1e-10)


def test_sparse_cholesky_refuses_indefinite():
    with pytest.raises(NotPositiveDefiniteError):
        SparseCholesky(sp.diags([1.0, -1.0, 2.0]))


@pytest.mark.parametrize("alpha", [1, 2, 3])
@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_precision_is_the_spectral_field(name, alpha):
    """Q^{-1} = Phi diag(tau^-2 (kappa^2 + lambda)^-alpha) Phi^T with the full eigenbasis."""
    d = DOMAINS[name]()
    prior = MaternGMRF(d, alpha=alpha, kappa=3.0, tau=0.7)
    lam, phi = (t.numpy() for t in d.eigenbasis(d.num_nodes))
    cov = phi @ np.diag(prior.spectrum(lam)) @ phi.T
    q = prior.precision().toarray()
    np.testing.assert_allclose(q @ cov, np.eye(d.num_nodes), atol=1e-8)
    assert prior.log_det_precision() == pytest.approx(np.linalg.slogdet(q)[1], rel=1e-10)


@pytest.mark.parametrize("nugget", [0.0, 0.05])
@pytest.mark.parametrize("name", ["healpix4", "latlon", "icosphere2"])
def test_posterior_equals_dense_covariance_form(name, nugget, np_rng):
    """Mean, variances and log p(y) of the sparse precision form equal the dense covariance form."""
    d = DOMAINS[name]()
    n = d.num_nodes
    prior = MaternGMRF.from_range(d, range_=1.0, std=1.3, alpha=2, mean=0.4)
    obs_idx = np.sort(np_rng.choice(n, n // 3, replace=False))
    noise_var = np.full(obs_idx.size, 0.01) + np_rng.uniform(0, 0.02, obs_idx.size)
    values = prior.sample(1, rng=np_rng)[0][obs_idx] + np_rng.standard_normal(obs_idx.size) * 0.1
    obs = GMRFObservation(prior, obs_idx, noise_var, nugget)

    cov_u = np.linalg.inv(prior.precision().toarray())
    cov_x = cov_u + nugget * np.eye(n)  # the truth x = u + e
    h = np.eye(n)[obs_idx]
    s_yy = h @ cov_x @ h.T + np.diag(noise_var)
    gain = cov_x @ h.T @ np.linalg.inv(s_yy)
    mean = 0.4 + gain @ (values - 0.4)
    var = np.diag(cov_x - gain @ h @ cov_x)
    np.testing.assert_allclose(obs.mean(values), mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(obs.variance("exact"), var, rtol=1e-8)
    logp = scipy.stats.multivariate_normal(np.full(obs_idx.size, 0.4), s_yy).logpdf(values)
    assert obs.log_likelihood(values) == pytest.approx(logp, rel=1e-10)


def test_engine_agrees_with_dense_gaussian_prior(rng):
    """Same Q: the GMRF engine and the dense eigenbasis engine agree to 1e-6 (issue 15)."""
    d = HealpixSphere(4)
    gmrf = MaternGMRF.from_range(d, range_=0.9, std=1.0, alpha=2)
    lam, _ = d.eigenbasis(d.num_nodes)
    dense = GaussianPrior(d, spectrum=gmrf.spectrum(lam.numpy()))
    noise = GaussianNoise(0.1)
    x = torch.from_numpy(gmrf.sample(3, rng=np.random.default_rng(1)))[..., None]
    mask = torch.rand(3, d.num_nodes, 1, generator=rng) < 0.4
    a = Mask(d, mask)
    y = noise(a(x), a.range_mask, rng=rng)
    sparse_post = GMRFPosterior(gmrf, noise).condition(y, a)
    dense_post = ExactGaussianPosterior(dense, noise).condition(y, a)
    scale = float(dense_post.std.max())
    assert float((sparse_post.mean - dense_post.mean).abs().max()) / scale < 1e-6
    assert float(((sparse_post.std - dense_post.std) / dense_post.std).abs().max()) < 1e-6


def test_samples_have_the_exact_covariance():
    d = HealpixSphere(2)  # 48 nodes
    prior = MaternGMRF.from_range(d, range_=1.2, std=1.0, alpha=2)
    obs = GMRFObservation(prior, np.arange(0, 48, 4), 0.05, 0.02)
    values = np.linspace(-1, 1, 12)
    draws = obs.sample(values, 40000, rng=np.random.default_rng(0))
    np.testing.assert_allclose(draws.mean(0), obs.mean(values), atol=0.03)
    var = obs.variance("exact")
    emp = draws.var(0)
    # relative standard error of a variance from 40000 draws is sqrt(2/40000) = 0.7 %
    assert np.max(np.abs(emp / var - 1)) < 5 * math.sqrt(2 / 40000)
    cov_u = np.linalg.inv(obs.precision.toarray())
    emp_cov = np.cov(draws.T)
    hidden = np.setdiff1d(np.arange(48), np.arange(0, 48, 4))
    np.testing.assert_allclose(
        emp_cov[np.ix_(hidden, hidden)],
        (cov_u + 0.02 * np.eye(48))[np.ix_(hidden, hidden)],
        atol=0.03,
    )


def test_rbmc_variance_within_its_stated_error():
    d = HealpixSphere(8)
    prior = MaternGMRF.from_range(d, range_=0.5, std=1.0, alpha=2)
    obs = GMRFObservation(prior, np.arange(0, d.num_nodes, 5), 0.01)
    exact = obs.latent_variance("exact")
    est = obs.latent_variance("rbmc", num_samples=200)
    z = (est - exact) / obs.variance_error
    assert np.mean(np.abs(z) < 3) > 0.97  # the stated standard error is honest
    assert np.median(obs.variance_error / exact) < 0.05  # and small


def test_observed_nodes_of_each_operator():
    d = PlanarGrid(3, 4)
    m = torch.zeros(12, dtype=torch.bool)
    m[[1, 5, 7]] = True
    assert observed_nodes(Mask(d, m), 0, 0).tolist() == [1, 5, 7]
    assert observed_nodes(Subsample(d, [4, 2]), 0, 0).tolist() == [4, 2]
    assert observed_nodes(Identity(d), 0, 0).tolist() == list(range(12))


def test_kappa_tau_from_range_and_std():
    kappa, tau = matern_kappa_tau(0.3, 2.0, 3)
    prior = MaternGMRF(HealpixSphere(2), alpha=3, kappa=kappa, tau=tau)
    assert prior.range == pytest.approx(0.3)
    assert prior.std == pytest.approx(2.0)
    with pytest.raises(ValueError, match="alpha must be one of"):
        MaternGMRF(HealpixSphere(2), alpha=4, kappa=1.0, tau=1.0)


@pytest.mark.parametrize("source", ["complete fields", "observed values"])
def test_ml_fit_recovers_known_hyper_parameters(source):
    """Fields drawn from a known GMRF + nugget: the fit is within 3 standard errors of the truth."""
    from manifold_aps.posterior.gmrf_fit import fit_gmrf

    d = HealpixSphere(8)
    rng = np.random.default_rng(0)
    truth = {"range": 0.6, "std": 1.5, "nugget": 0.05}
    prior = MaternGMRF.from_range(d, range_=truth["range"], std=truth["std"], alpha=2)
    fields = prior.sample(20, rng=rng) + rng.standard_normal((20, d.num_nodes)) * math.sqrt(
        truth["nugget"]
    )
    if source == "complete fields":
        fit = fit_gmrf(d, fields, std_errors=True)
    else:  # a geostatistician's case: a few gappy fields, half of the nodes observed
        fit = fit_gmrf(d, fields[:4], rng.random((4, d.num_nodes)) < 0.5, std_errors=True)
    assert fit.source == source
    for name, value in truth.items():
        z = (math.log(fit.params[name]) - math.log(value)) / fit.std_errors[name]
        assert abs(z) < 3, (name, fit.params[name], fit.std_errors[name])
    assert fit.std_errors["range"] < 0.2  # and the data pin the range down
    # the fitted prior's posterior uses the fitted nugget
    assert fit.nugget == pytest.approx(fit.params["nugget"])


def test_profiled_scale_reaches_the_three_parameter_optimum():
    """Without measurement noise the scale is profiled out; the optimum is the full search's."""
    from manifold_aps.posterior.gmrf_fit import fit_gmrf

    d = HealpixSphere(8)
    rng = np.random.default_rng(3)
    prior = MaternGMRF.from_range(d, range_=0.5, std=1.0, alpha=2)
    fields = prior.sample(6, rng=rng) + rng.standard_normal((6, d.num_nodes)) * 0.2
    profiled = fit_gmrf(d, fields)  # noise 0: two parameters searched
    full = fit_gmrf(d, fields, noise_std=1e-9)  # the three-parameter search
    assert profiled.log_likelihood == pytest.approx(full.log_likelihood, abs=0.05)
    # optimiser tolerance, far below the standard errors (range 5 %, std 2.6 %, nugget 43 % here):
    # the likelihood is flat along the nugget, so rounding moves its optimum by a few percent
    for name, rel in (("range", 1e-2), ("std", 1e-2), ("nugget", 5e-2)):
        assert profiled.params[name] == pytest.approx(full.params[name], rel=rel), name
    assert profiled.evaluations < full.evaluations


def test_coarser_problem_subsamples_grids_and_pools_meshes():
    from manifold_aps.posterior.gmrf_fit import coarser_problem

    grid = SphereGrid(np.linspace(80, -80, 17), np.arange(0, 360, 10.0))
    fields = np.arange(2 * grid.num_nodes, dtype=float).reshape(2, grid.num_nodes)
    dom, sub, mean, factor = coarser_problem(grid, fields, mean=np.ones(grid.num_nodes))
    assert dom.shape == (9, 18) and factor == 1.0 and mean.shape == (dom.num_nodes,)
    np.testing.assert_array_equal(sub, fields.reshape(2, 17, 36)[:, ::2, ::2].reshape(2, -1))
    mesh = IcosphereMesh(3)
    dom, pooled, _, factor = coarser_problem(mesh, np.ones((1, mesh.num_nodes)))
    assert dom.num_nodes < mesh.num_nodes and factor == mesh.num_nodes / dom.num_nodes
    np.testing.assert_allclose(pooled, 1.0)  # pooling averages


def test_fit_is_the_same_on_one_thread_or_several():
    """The gradient's likelihood evaluations run in threads; the fit does not depend on it."""
    from manifold_aps.posterior.gmrf_fit import fit_gmrf

    d = HealpixSphere(4)
    rng = np.random.default_rng(5)
    prior = MaternGMRF.from_range(d, range_=0.6, std=1.0, alpha=2)
    fields = prior.sample(3, rng=rng) + rng.standard_normal((3, d.num_nodes)) * 0.1
    one, three = fit_gmrf(d, fields, threads=1), fit_gmrf(d, fields, threads=3)
    assert one.params == three.params and one.evaluations == three.evaluations
