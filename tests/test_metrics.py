"""Metrics against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_aps.metrics import (
    central_interval,
    crps_ensemble,
    interval_coverage,
    spread_skill_ratio,
    weighted_mean,
    weighted_rmse,
)


def test_weighted_mean_over_selected_cells():
    values = torch.tensor([[[1.0], [2.0], [10.0]]])
    weight = torch.tensor([1.0, 3.0, 100.0])
    where = torch.tensor([[[True], [True], [False]]])
    # (1*1 + 3*2) / (1 + 3): the unselected cell does not count, however heavy
    assert weighted_mean(values, weight, where).item() == pytest.approx(7 / 4)
    with pytest.raises(ValueError, match="selects no entry"):
        weighted_mean(values, weight, torch.zeros_like(where))


def test_rmse_is_root_of_weighted_mean_square():
    pred = torch.tensor([[[1.0], [0.0]]])
    truth = torch.zeros_like(pred)
    assert weighted_rmse(pred, truth, torch.tensor([3.0, 1.0])).item() == pytest.approx(
        math.sqrt(3 / 4)
    )


def test_crps_of_one_member_is_absolute_error():
    x = torch.randn(1, 2, 5, 1, dtype=torch.float64)
    y = torch.randn(2, 5, 1, dtype=torch.float64)
    w = torch.rand(5, dtype=torch.float64)
    assert torch.allclose(crps_ensemble(x, y, w), weighted_mean((x[0] - y).abs(), w))


def test_crps_pair_term_matches_brute_force():
    x = torch.randn(7, 1, 4, 1, dtype=torch.float64)
    y = torch.randn(1, 4, 1, dtype=torch.float64)
    w = torch.ones(4, dtype=torch.float64)
    pairs = (x[:, None] - x[None, :]).abs().sum((0, 1)) / (2 * 7 * 6)
    expected = ((x - y).abs().mean(0) - pairs).mean()
    assert crps_ensemble(x, y, w).item() == pytest.approx(expected.item(), rel=1e-12)


def test_fair_crps_is_unbiased_for_gaussian_closed_form():
    """E[fair CRPS] of N(0, s^2) members at y equals s[z(2Phi(z)-1) + 2phi(z) - 1/sqrt(pi)]."""
    g = torch.Generator().manual_seed(0)
    s, n_points, members = 1.3, 20000, 4
    y = torch.tensor([0.0, 0.5, -2.0], dtype=torch.float64)
    x = s * torch.randn(members, n_points, 3, 1, generator=g, dtype=torch.float64)
    w = torch.ones(3, dtype=torch.float64)
    z = y / s
    normal = torch.distributions.Normal(0.0, 1.0)
    exact = s * (
        z * (2 * normal.cdf(z) - 1) + 2 * normal.log_prob(z).exp() - 1 / math.sqrt(math.pi)
    )
    got = crps_ensemble(x, y[None, :, None].expand(n_points, 3, 1), w)
    assert got.item() == pytest.approx(exact.mean().item(), rel=0.02)


def test_coverage_and_spread_skill_of_a_calibrated_ensemble():
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(200, 50, 1, generator=g, dtype=torch.float64)
    ens = torch.randn(21, 200, 50, 1, generator=g, dtype=torch.float64)
    w = torch.ones(50, dtype=torch.float64)
    lo, hi = central_interval(ens, 0.9)
    # with 21 members the 5 and 95 % quantiles are the 2nd and 20th order statistics, which
    # bracket a new draw from the same distribution with probability (20 - 2) / 22
    assert interval_coverage(lo, hi, truth, w).item() == pytest.approx(18 / 22, abs=0.01)
    analytic = interval_coverage(
        -1.6449 * torch.ones_like(truth), 1.6449 * torch.ones_like(truth), truth, w
    )
    assert analytic.item() == pytest.approx(0.9, abs=0.01)
    assert spread_skill_ratio(ens, truth, w).item() == pytest.approx(1.0, abs=0.03)
    assert spread_skill_ratio(0.5 * ens, truth, w).item() < 0.6  # under-dispersed
    with pytest.raises(ValueError, match="level must lie"):
        central_interval(ens, 1.5)
