"""Operator contracts.

Adjoints in the mass inner product, transposes, pseudo-inverses, generators.
"""

from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

import manifold_aps.operators as ops
from manifold_aps.geometry import HealpixSphere, PlanarGrid, SphereGrid, TriangleMesh
from manifold_aps.operators import (
    BoxMaskGenerator,
    CapMaskGenerator,
    Compose,
    GaussianNoise,
    HeatBlur,
    Identity,
    LinearOperator,
    Mask,
    MixtureMaskGenerator,
    RandomMaskGenerator,
    StationMaskGenerator,
    Subsample,
    SwathMaskGenerator,
)

LATLON = SphereGrid(np.arange(80, -81, -10.0), np.arange(0, 360, 15.0))  # non-uniform masses
HEALPIX = HealpixSphere(4)


def _mesh():
    import trimesh

    ico = trimesh.creation.icosphere(2)
    v = ico.vertices * np.array([1.0, 0.7, 1.3])  # an ellipsoid: obtuse triangles, varied masses
    return TriangleMesh(v, ico.faces)


MESH = _mesh()


class Case(NamedTuple):
    op: LinearOperator
    x_shape: tuple[int, int, int]


def _mask(domain, batch):
    return RandomMaskGenerator(domain, missing=0.6).step(batch, seed=1)["mask"]


OPERATORS: dict[str, Callable[[], Case]] = {
    "identity": lambda: Case(Identity(LATLON), (2, LATLON.num_nodes, 3)),
    "mask": lambda: Case(Mask(LATLON, _mask(LATLON, 2)), (2, LATLON.num_nodes, 3)),
    "mask-shared": lambda: Case(Mask(MESH, _mask(MESH, 1)[0, :, 0]), (3, MESH.num_nodes, 2)),
    "subsample": lambda: Case(Subsample(LATLON, [0, 5, 17, 40, 100]), (2, LATLON.num_nodes, 1)),
    "heatblur-latlon": lambda: Case(HeatBlur(LATLON, 0.02), (2, LATLON.num_nodes, 2)),
    "heatblur-mesh": lambda: Case(HeatBlur(MESH, 0.05), (2, MESH.num_nodes, 1)),
    "compose": lambda: Case(
        Compose(Mask(HEALPIX, _mask(HEALPIX, 2)), HeatBlur(HEALPIX, 0.01)),
        (2, HEALPIX.num_nodes, 1),
    ),
    "compose-subsample": lambda: Case(
        Subsample(MESH, [1, 2, 3, 50]) @ HeatBlur(MESH, 0.01), (2, MESH.num_nodes, 1)
    ),
}


def _rand(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _range_inner(op, a, b):
    w = op.range_weight.to(a.dtype)
    return torch.einsum("bnc,n,bnc->", a, w, b)


@pytest.mark.parametrize("name", list(OPERATORS), ids=list(OPERATORS))
def test_adjoint_in_weighted_inner_products(name):
    op, shape = OPERATORS[name]()
    x = _rand(shape, 0)
    y = _rand((shape[0], op.num_outputs, shape[2]), 1)
    ax = op(x)
    lhs = _range_inner(op, ax, y)
    rhs = op.domain.inner(x, op.adjoint(y)).sum()
    rel = abs(lhs - rhs) / (torch.linalg.norm(ax) * torch.linalg.norm(y))
    assert rel < 1e-10
    assert torch.equal(op.T(y), op.adjoint(y))


@pytest.mark.parametrize("name", list(OPERATORS), ids=list(OPERATORS))
def test_transpose_is_euclidean_adjoint_and_matches_autograd(name):
    op, shape = OPERATORS[name]()
    x = _rand(shape, 2).requires_grad_(True)
    y = _rand((shape[0], op.num_outputs, shape[2]), 3)
    (grad,) = torch.autograd.grad((op(x) * y).sum(), x)
    assert torch.allclose(grad, op.transpose(y), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", list(OPERATORS), ids=list(OPERATORS))
def test_pinv_solves_on_the_range(name):
    """A A^+ y = y for y in the range of A: exact for closed forms, to 1e-3 for damped CG.

    CG on the normal equations of a heat blur (condition number e^{2 t lambda_max}) converges
    slowly, so its tolerance is looser; it still must beat the trivial answer x = 0 a thousandfold.
    """
    op, shape = OPERATORS[name]()
    y = op(_rand(shape, 4))
    iterative = type(op).pinv is LinearOperator.pinv
    x = op.pinv(y, damping=1e-10, max_iter=500) if iterative else op.pinv(y)
    tol = 1e-3 if iterative else 1e-12
    assert torch.linalg.norm(op(x) - y) <= tol * torch.linalg.norm(y)


@pytest.mark.parametrize("name", list(OPERATORS), ids=list(OPERATORS))
def test_methods_do_not_change_the_operator(name):
    op, shape = OPERATORS[name]()
    before = {k: v.clone() for k, v in op.state_dict().items()}
    y = op(_rand(shape, 5))
    op.adjoint(y)
    op.pinv(y)
    op.transpose(y)
    after = op.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_every_linear_operator_is_registered():
    classes = {
        obj
        for name in ops.__all__
        if inspect.isclass(obj := getattr(ops, name))
        and issubclass(obj, LinearOperator)
        and obj is not LinearOperator
    }
    covered = {type(OPERATORS[k]().op) for k in OPERATORS}
    assert classes <= covered, f"not in OPERATORS: {classes - covered}"


def test_heat_blur_matches_scipy_expm_multiply():
    for domain, t in [(LATLON, 0.05), (MESH, 0.3), (PlanarGrid(5, 6), 2.0)]:
        x = _rand((1, domain.num_nodes, 1), 6)
        ref = spla.expm_multiply(-t * domain.laplacian(), x[0].numpy())
        out = HeatBlur(domain, t)(x)[0].numpy()
        assert np.abs(out - ref).max() < 1e-10 * np.abs(ref).max()


def test_heat_blur_dense_matrix_equals_applying_it_to_every_column():
    from manifold_aps.posterior import operator_matrix

    for domain, t in [(LATLON, 0.05), (MESH, 0.3)]:
        op = HeatBlur(domain, t)
        eye = torch.eye(domain.num_nodes, dtype=torch.float64)[:, :, None]
        by_columns = op(eye)[:, :, 0].T
        dense = operator_matrix(op)  # takes the eigenbasis route
        assert torch.allclose(dense, op.dense_matrix())
        assert (dense - by_columns).abs().max() < 1e-9 * by_columns.abs().max()


def test_heat_blur_preserves_constants_and_area_integral():
    op = HeatBlur(LATLON, 0.1)
    x = _rand((1, LATLON.num_nodes, 1), 7)
    ones = torch.ones_like(x)
    assert torch.allclose(op(ones), ones, atol=1e-12)
    assert LATLON.inner(op(x), ones) == pytest.approx(float(LATLON.inner(x, ones)), rel=1e-10)


def test_heat_blur_gradcheck():
    op = HeatBlur(HealpixSphere(1), 0.1)
    x = _rand((1, 12, 1), 8).requires_grad_(True)
    assert torch.autograd.gradcheck(op, (x,))


def test_mask_errors_and_composition():
    with pytest.raises(ValueError, match="observes nothing for batch element"):
        Mask(HEALPIX, torch.zeros(HEALPIX.num_nodes, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"mask must have shape"):
        Mask(HEALPIX, torch.ones(7, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean or 0/1"):
        Mask(HEALPIX, torch.full((HEALPIX.num_nodes,), 0.5))
    a = Mask(HEALPIX, torch.arange(192) % 2 == 0)
    b = Mask(HEALPIX, torch.arange(192) % 3 == 0)
    ab = a @ b
    assert isinstance(ab, Mask) and torch.equal(ab.mask[0, :, 0], torch.arange(192) % 6 == 0)
    with pytest.raises(ValueError, match=r"shape \(\*, N=192, C\)"):
        a(torch.ones(1, 191, 1))
    batch = Mask(HEALPIX, _mask(HEALPIX, 2))
    with pytest.raises(ValueError, match="mask has a batch of 2"):
        batch(torch.ones(3, 192, 1))
    with pytest.raises(TypeError):
        Mask(HEALPIX, torch.ones(192, dtype=torch.bool), extra=1)


def test_mask_update_uses_generator_keys():
    gen = StationMaskGenerator(HEALPIX, 10)
    op = Mask(HEALPIX, torch.ones(HEALPIX.num_nodes, dtype=torch.bool))
    params = gen.step(4, seed=3)
    assert set(params) == set(gen.param_keys)
    op.update(**params)
    assert op.mask.shape == (4, HEALPIX.num_nodes, 1)
    assert torch.all(op.mask.sum((1, 2)) == 10)


def test_compose_rejects_mismatched_domains():
    with pytest.raises(ValueError, match="cannot compose"):
        Compose(Mask(LATLON, _mask(LATLON, 1)), HeatBlur(HEALPIX, 0.1))


def test_subsample_errors():
    with pytest.raises(ValueError, match="distinct"):
        Subsample(HEALPIX, [1, 1])
    with pytest.raises(ValueError, match="observes nothing"):
        Subsample(HEALPIX, [])
    with pytest.raises(ValueError, match="must lie in"):
        Subsample(HEALPIX, [500])


GENERATORS = {
    "random": lambda d: RandomMaskGenerator(d, missing=(0.5, 0.95)),
    "caps": lambda d: CapMaskGenerator(d, num_caps=2, cap_area=0.1),
    "boxes": lambda d: BoxMaskGenerator(d, num_boxes=2),
    "stations": lambda d: StationMaskGenerator(d, num_stations=(5, 20)),
    "swaths": lambda d: SwathMaskGenerator(d),
    "mixture": lambda d: MixtureMaskGenerator(
        [RandomMaskGenerator(d), CapMaskGenerator(d), SwathMaskGenerator(d)], weights=[1, 1, 2]
    ),
}


@pytest.mark.parametrize("domain", [HEALPIX, LATLON, MESH], ids=["healpix", "latlon", "mesh"])
@pytest.mark.parametrize("name", list(GENERATORS), ids=list(GENERATORS))
def test_generators_are_seeded_and_valid(domain, name):
    gen = GENERATORS[name](domain)
    a = gen.step(5, seed="validation")["mask"]
    b = GENERATORS[name](domain).step(5, seed="validation")["mask"]
    c = gen.step(5, seed="other")["mask"]
    assert a.shape == (5, domain.num_nodes, 1) and a.dtype == torch.bool
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.all(a.sum((1, 2)) > 0)
    Mask(domain, a)  # a valid operator
    # without a seed, the generator's own rng advances
    assert not torch.equal(gen.step(5)["mask"], gen.step(5)["mask"])


def test_random_mask_fraction_and_caps_area():
    gen = RandomMaskGenerator(HEALPIX, missing=0.7)
    m = gen.step(10, seed=0)["mask"]
    assert torch.allclose(
        1 - m.double().mean((1, 2)), torch.full((10,), 0.7, dtype=torch.float64), atol=1 / 192
    )
    caps = CapMaskGenerator(HealpixSphere(16), num_caps=1, cap_area=0.2).step(10, seed=0)["mask"]
    hidden = 1 - caps.double().mean((1, 2))
    assert torch.allclose(hidden, torch.full((10,), 0.2, dtype=torch.float64), atol=0.005)


def test_swath_width_on_the_sphere():
    """One swath of half-width w covers sin(w) of the sphere's area.

    The swath is a band around a great circle.
    """
    d = HealpixSphere(16)
    m = SwathMaskGenerator(d, num_swaths=1, half_width_deg=10.0).step(20, seed=0)["mask"]
    covered = (m[..., 0].double() * d.mass).sum(1) / d.total_area
    assert covered.mean() == pytest.approx(np.sin(np.deg2rad(10.0)), abs=0.01)


def test_swaths_through_the_domain_keep_the_sphere_law_and_fit_a_regional_grid():
    """Circles through area-drawn nodes at uniform headings are uniform great circles.

    So on the sphere they cover sin(w) as before; on a regional box the family fits the box.
    """
    from manifold_aps.geometry import SphereGrid
    from manifold_aps.operators.masks import angular_radius
    from manifold_aps.posterior.distill import mask_family

    d = HealpixSphere(16)
    m = SwathMaskGenerator(d, num_swaths=1, half_width_deg=10.0, through_domain=True).step(
        200, seed=0
    )["mask"]
    covered = (m[..., 0].double() * d.mass).sum(1) / d.total_area
    assert covered.mean() == pytest.approx(np.sin(np.deg2rad(10.0)), abs=0.01)
    assert angular_radius(d) == pytest.approx(180.0, abs=1.0)

    box = SphereGrid(np.arange(58, 49.75, -0.25), np.arange(-10, 2.25, 0.25))  # the UK box
    assert 4.0 < angular_radius(box) < 8.0
    observed = mask_family("swaths", box).step(100, seed=1)["mask"][..., 0].double().mean(1)
    # whole-sphere widths on this box: many masks observe all of it (hide nothing to score)
    whole = SwathMaskGenerator(box, num_swaths=(1, 4), half_width_deg=(5.0, 15.0))
    assert (whole.step(100, seed=1)["mask"][..., 0].all(1)).float().mean() > 0.3
    assert 0.15 < float(observed.mean()) < 0.5 and bool((observed < 1).all())


def test_generator_argument_errors():
    with pytest.raises(ValueError, match="missing must be a fraction"):
        RandomMaskGenerator(HEALPIX, missing=1.5)
    with pytest.raises(ValueError, match="num_stations must lie in"):
        StationMaskGenerator(HEALPIX, 0)
    with pytest.raises(ValueError, match="half_width_deg"):
        SwathMaskGenerator(HEALPIX, half_width_deg=0)
    with pytest.raises(TypeError, match="seed must be an int or a str"):
        RandomMaskGenerator(HEALPIX).step(1, seed=1.5)


def test_gaussian_noise_only_on_observed_entries(rng):
    noise = GaussianNoise(0.5)
    mask = _mask(HEALPIX, 3)
    y = noise(torch.zeros(3, HEALPIX.num_nodes, 1, dtype=torch.float64), mask, rng=rng)
    assert torch.all(y[~mask] == 0)
    assert y[mask].std().item() == pytest.approx(0.5, rel=0.1)
    ll = noise.log_likelihood(y, torch.zeros_like(y), mask)
    n = mask.sum((1, 2)).double()
    expected = -0.5 * (y**2).sum((1, 2)) / 0.25 - 0.5 * n * np.log(2 * np.pi * 0.25)
    assert torch.allclose(ll, expected)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        GaussianNoise(0.0)
