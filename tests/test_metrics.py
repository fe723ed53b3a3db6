"""Metrics against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_aps.metrics import (
    bootstrap_interval,
    central_interval,
    crps_ensemble,
    interval_coverage,
    pit_coverage,
    rank_histogram,
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


def test_rank_histogram_is_flat_for_exchangeable_truth_and_members():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(9, 4000, 1, generator=g, dtype=torch.float64)  # 8 members + the truth
    hist = rank_histogram(draws[:8], draws[8], torch.ones(4000))
    assert hist.shape == (9,) and float(hist.sum()) == pytest.approx(1.0)
    assert torch.allclose(hist, torch.full((9,), 1 / 9, dtype=torch.float64), atol=0.02)


def test_rank_histogram_of_a_narrow_ensemble_is_u_shaped_and_weights_count():
    g = torch.Generator().manual_seed(1)
    truth = torch.randn(2000, 1, generator=g, dtype=torch.float64)
    narrow = truth + 0.1 * torch.randn(4, 2000, 1, generator=g, dtype=torch.float64) + 1.0
    assert rank_histogram(narrow, truth, torch.ones(2000))[0] > 0.99  # truth below every member
    # two entries, rank 0 and rank 2 of 2 members, weights 3 and 1: (0.75, 0, 0.25)
    samples = torch.tensor([[[1.0], [0.0]], [[2.0], [-1.0]]])
    hist = rank_histogram(samples, torch.tensor([[0.0], [5.0]]), torch.tensor([3.0, 1.0]))
    assert torch.allclose(hist, torch.tensor([0.75, 0.0, 0.25], dtype=torch.float64))
    # a member equal to the truth: half a count below it, half above
    tie = rank_histogram(torch.tensor([[[0.0]], [[1.0]]]), torch.tensor([[0.0]]), torch.ones(1))
    assert torch.allclose(tie, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))


def test_pit_coverage_is_the_nominal_level_for_a_calibrated_ensemble_of_any_size():
    # closed forms: a flat histogram gives the level exactly; all mass at rank 0 of S = 16 members
    # gives the share of [0, 1/17] above 0.05
    for s in (2, 8, 16, 99):
        flat = torch.full((s + 1,), 1 / (s + 1), dtype=torch.float64)
        assert float(pit_coverage(flat, 0.9)) == pytest.approx(0.9, abs=1e-12)
    low = torch.zeros(17, dtype=torch.float64)
    low[0] = 1.0
    assert float(pit_coverage(low, 0.9)) == pytest.approx((1 / 17 - 0.05) * 17)
    # Monte Carlo: 16 exchangeable uniform members and a truth. The members' linearly interpolated
    # 5-95 % interval runs from order statistic 1.75 to 15.25 of 16, whose expected coverage is
    # (15.25 - 1.75) / 17 = 0.9 * 15/17 = 79.4 % exactly for uniform members (about 80.7 % for
    # Gaussian ones); the PIT coverage is 90 % for any distribution; a too narrow ensemble falls
    # below both
    g = torch.Generator().manual_seed(3)
    draws = torch.rand(17, 40000, 1, generator=g, dtype=torch.float64)
    members, truth, w = draws[:16], draws[16], torch.ones(40000)
    assert float(interval_coverage(*central_interval(members), truth, w)) == pytest.approx(
        0.9 * 15 / 17, abs=0.01
    )
    assert float(pit_coverage(rank_histogram(members, truth, w))) == pytest.approx(0.9, abs=0.01)
    gaussian = torch.randn(17, 40000, 1, generator=g, dtype=torch.float64)
    assert float(pit_coverage(rank_histogram(gaussian[:16], gaussian[16], w))) == pytest.approx(
        0.9, abs=0.01
    )
    narrow = 0.5 + 0.5 * (members - 0.5)
    assert float(pit_coverage(rank_histogram(narrow, truth, w))) < 0.7
    with pytest.raises(ValueError, match="level"):
        pit_coverage(low, 1.0)


def test_bootstrap_interval_of_a_mean_matches_the_normal_theory_width():
    values = torch.randn(64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    lo, hi = bootstrap_interval(lambda i: values[i].mean(), 64, draws=2000, level=0.9)
    assert lo < float(values.mean()) < hi
    width = 2 * 1.6449 * float(values.std()) / math.sqrt(64)
    assert (hi - lo) == pytest.approx(width, rel=0.15)
    assert bootstrap_interval(lambda i: values[i].mean(), 64, draws=50, seed=3) == (
        bootstrap_interval(lambda i: values[i].mean(), 64, draws=50, seed=3)
    )
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_interval(lambda i: 0.0, 1)
