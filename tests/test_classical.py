"""Classical gap fillers: harmonic interpolation and nearest neighbour.

Harmonic interpolation reproduces discrete-harmonic fields, nearest neighbour copies the nearest
observed value, observations are kept, errors are clear.
"""

import pytest
import torch

from manifold_aps.geometry import HealpixSphere, PlanarGrid
from manifold_aps.operators import HeatBlur, Mask
from manifold_aps.posterior.classical import HarmonicInterpolation, NearestNeighbour


def test_harmonic_reproduces_a_linear_field_from_its_boundary():
    d = PlanarGrid(12, 15)
    r, c = torch.meshgrid(
        torch.arange(12.0, dtype=torch.float64),
        torch.arange(15.0, dtype=torch.float64),
        indexing="ij",
    )
    x = (
        (0.3 * r - 0.7 * c + 2.0).reshape(1, -1, 1).double()
    )  # discrete-harmonic on the 5-point stencil
    boundary = ((r == 0) | (r == 11) | (c == 0) | (c == 14)).reshape(-1)
    A = Mask(d, boundary)
    est = HarmonicInterpolation(d).estimate(A(x), A)
    assert torch.allclose(est, x, atol=1e-8)
    # an interior-only observation set would not do this: the test can fail
    assert boundary.float().mean() < 0.4


def test_fillers_keep_observations_and_beat_the_constant_on_a_smooth_field():
    d = HealpixSphere(8)
    z = d.positions[:, 2:3].double()
    x = (z + 0.5 * d.positions[:, 0:1].double() ** 2)[None]  # smooth
    observed = torch.rand(d.num_nodes, generator=torch.Generator().manual_seed(0)) < 0.3
    A = Mask(d, observed)
    y = A(x)
    for filler in (HarmonicInterpolation(d), NearestNeighbour(d)):
        est = filler.estimate(y, A)
        assert torch.equal(est[0, observed], y[0, observed])
        err = (est - x)[0, ~observed].pow(2).mean().sqrt()
        const = (x[0, observed].mean() - x)[0, ~observed].pow(2).mean().sqrt()
        assert err < 0.35 * const, (type(filler).__name__, float(err), float(const))
    samples = NearestNeighbour(d).sample(y, A, 3)
    assert samples.shape == (3, 1, d.num_nodes, 1) and torch.equal(samples[0], samples[2])


def test_hidden_group_without_observed_neighbours_takes_the_observed_mean():
    from manifold_aps.geometry import Domain

    # two disconnected strips of three nodes; only the first strip has observations
    pos = [[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 5, 0], [1, 5, 0], [2, 5, 0]]
    edges = [[0, 1, 1, 2, 3, 4, 4, 5], [1, 0, 2, 1, 4, 3, 5, 4]]
    d = Domain(pos, [1.0] * 6, edges, [1.0] * 8)
    A = Mask(d, torch.tensor([True, False, True, False, False, False]))
    y = A(torch.tensor([1.0, 0, 3.0, 0, 0, 0]).reshape(1, 6, 1).double())
    for filler in (HarmonicInterpolation(d), NearestNeighbour(d)):
        est = filler.estimate(y, A)[0, :, 0].tolist()
        assert est[3:] == [2.0, 2.0, 2.0], (type(filler).__name__, est)
    assert HarmonicInterpolation(d).estimate(y, A)[0, 1, 0] == pytest.approx(2.0)


def test_nearest_neighbour_matches_brute_force_mostly():
    d = HealpixSphere(8)
    observed = torch.rand(d.num_nodes, generator=torch.Generator().manual_seed(1)) < 0.2
    values = torch.randn(1, d.num_nodes, 1, generator=torch.Generator().manual_seed(2)).double()
    A = Mask(d, observed)
    est = NearestNeighbour(d).estimate(A(values), A)[0, :, 0]
    pos = d.positions
    nearest = (pos @ pos[observed].T).argmax(1)  # largest cosine = smallest great-circle distance
    brute = values[0, observed, 0][nearest]
    agree = (est == brute).float().mean()
    assert agree > 0.85  # graph distance along edges vs exact great circle: ties and detours differ


def test_errors_are_clear():
    d = PlanarGrid(4, 4)
    with pytest.raises(TypeError, match="fills gaps of a Mask operator, got HeatBlur"):
        HarmonicInterpolation(d).estimate(torch.zeros(1, 16, 1), HeatBlur(d, 0.1))
    m = torch.zeros(2, 16, 1, dtype=torch.bool)
    m[:, 3] = True
    A = Mask(d, m)
    A.mask[1, 3] = (
        False  # a batch element with no observation (the constructor refuses it; fillers must too)
    )
    with pytest.raises(ValueError, match="example 1, channel 0 observes no node"):
        NearestNeighbour(d).estimate(torch.zeros(2, 16, 1), A)
