"""`reconstruct`: the gaussian engine is the exact posterior of the GMRF.

The GMRF is the one fitted to the observed values.
"""

import numpy as np
import pytest

from manifold_aps import MaternGMRF
from manifold_aps.geometry import IcosphereMesh
from manifold_aps.reconstruct import reconstruct


def test_the_gaussian_engine_is_the_dense_posterior_of_its_fit_and_keeps_observed_values():
    domain = IcosphereMesh(3)  # 642 nodes
    n = domain.num_nodes
    truth_prior = MaternGMRF.from_range(domain, range_=0.5, std=2.0, alpha=2)
    rng = np.random.default_rng(0)
    truth = 10.0 + truth_prior.sample(2, rng=rng) + 0.05 * rng.standard_normal((2, n))
    values = np.where(rng.random(truth.shape) < 0.6, np.nan, truth)
    rec = reconstruct(domain, values, samples=4000, seed=1)
    fit, centre, scale = rec.fit
    assert 0.3 < fit.prior.range < 0.8 and 1.3 < scale * fit.prior.std < 3.0  # near the truth
    cov = np.linalg.inv(fit.prior.precision().toarray()) + fit.nugget * np.eye(n)
    for s in range(2):
        obs = np.isfinite(values[s])
        o, h = np.flatnonzero(obs), np.flatnonzero(~obs)
        k = cov[np.ix_(h, o)] @ np.linalg.inv(cov[np.ix_(o, o)])
        mean = centre + scale * (k @ ((values[s, o] - centre) / scale))
        std = scale * np.sqrt(np.diag(cov[np.ix_(h, h)] - k @ cov[np.ix_(o, h)]))
        np.testing.assert_allclose(rec.mean[s, h], mean, rtol=1e-8)
        np.testing.assert_allclose(rec.std[s, h], std, rtol=1e-7)
        np.testing.assert_array_equal(rec.mean[s, o], values[s, o])
        assert (rec.std[s, o] == 0).all() and (rec.samples[:, s, o] == values[s, o]).all()
        # 4000 perturb-and-solve samples: their std within Monte Carlo error (~1.1 %) of the exact
        # one
        np.testing.assert_allclose(rec.samples[:, s, h].std(0), std, rtol=0.06)


def test_bad_values_are_named():
    domain = IcosphereMesh(1)
    with pytest.raises(ValueError, match=r"shape \(S, N=42\)"):
        reconstruct(domain, np.zeros((2, 41)))
    with pytest.raises(ValueError, match="signal 1 has no observed value"):
        reconstruct(domain, np.vstack([np.zeros(42), np.full(42, np.nan)]))
    with pytest.raises(ValueError, match="needs --checkpoint"):
        reconstruct(domain, np.zeros(42), engine="aps")
