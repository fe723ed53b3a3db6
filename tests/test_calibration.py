"""Post-hoc spread calibration against the exact Gaussian posterior (closed form)."""

import pytest
import torch

from manifold_aps.datasets import GaussianSource
from manifold_aps.geometry import HealpixSphere
from manifold_aps.metrics import spread_skill_ratio
from manifold_aps.operators import GaussianNoise, RandomMaskGenerator
from manifold_aps.posterior import ExactGaussianPosterior
from manifold_aps.posterior.calibration import SpreadCalibrated, fit_spread_factor
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.priors import GaussianPrior

DOMAIN = HealpixSphere(4)
PRIOR = GaussianPrior(DOMAIN, variance=1.0, length_scale=0.4, smoothness=1.5)
NOISE = GaussianNoise(0.1)


def _batch(seed):
    stream = SimulatedObservations(
        GaussianSource(PRIOR), RandomMaskGenerator(DOMAIN, missing=0.7), NOISE
    )
    return stream.batch(torch.Generator().manual_seed(seed), 16)


def test_the_fitted_factor_undoes_a_known_shrinkage_and_keeps_the_mean():
    exact = ExactGaussianPosterior(PRIOR, NOISE)
    narrow = SpreadCalibrated(exact, 0.2)  # an over-confident engine: 1/5 of the exact spread
    factor = fit_spread_factor(narrow, _batch(0), DOMAIN, samples=32)
    assert factor == pytest.approx(5.0, rel=0.1)
    test = _batch(1)  # other fields: the calibrated engine scores spread/skill ~1 there
    op = test.operator(DOMAIN)
    fixed = SpreadCalibrated(narrow, factor)
    s = fixed.sample(test.y, op, 32, rng=torch.Generator().manual_seed(2))
    hidden = ~test.mask.expand_as(test.truth)
    ratio = spread_skill_ratio(s, test.truth.double(), DOMAIN.mass, hidden)
    assert float(ratio) == pytest.approx(1.0, abs=0.1)
    base = narrow.sample(test.y, op, 32, rng=torch.Generator().manual_seed(2))
    assert torch.allclose(s.mean(0), base.mean(0))  # the mean, hence its RMSE, is unchanged
    with pytest.raises(ValueError, match="factor"):
        SpreadCalibrated(exact, 0.0)
