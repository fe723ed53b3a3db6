"""Flow layers: exact inverses, log-determinants against autograd, Stiefel orthogonality."""

from __future__ import annotations

import geoopt
import pytest
import torch

from manifold_aps.flows import (
    ActNorm,
    AffineCoupling,
    CoarseCoupling,
    ConditionalAffine,
    ConditionalFlow,
    FlowConfig,
    SpectralCoupling,
    SpectralScale,
    SplineCoupling,
    StiefelChannelMix,
    rational_quadratic,
)
from manifold_aps.geometry import HealpixSphere, TriangleMesh
from manifold_aps.geometry.domain import cluster_coarsening
from manifold_aps.nn import DomainTensors

DOMAIN = HealpixSphere(1)  # 12 nodes: full Jacobians are cheap
GRAPH = DomainTensors(DOMAIN, num_modes=8, num_positional=0)


def _randomize(module, std=0.3):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if not isinstance(p, geoopt.ManifoldParameter):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return module


def _cond(channels=2, features=3, b=2):
    from manifold_aps.flows import FlowCondition

    g = torch.Generator().manual_seed(1)
    return FlowCondition(
        torch.randn(b, 12, features, generator=g, dtype=torch.float64),
        torch.randn(b, 4, generator=g, dtype=torch.float64),
        GRAPH,
    )


def _coarse_coupling():
    coarsening = cluster_coarsening(DOMAIN, 4)
    graph = DomainTensors(coarsening.domain, 3, num_positional=0)
    return CoarseCoupling(torch.arange(12) % 2 == 0, 2, 3, 4, coarsening, graph, width=8, depth=1)


LAYERS = {
    "conditional-affine": lambda: ConditionalAffine(2, 3, 4, width=8, depth=1),
    "coupling": lambda: AffineCoupling(torch.arange(12) % 2 == 0, 2, 3, 4, width=8, depth=1),
    "spectral-coupling": lambda: SpectralCoupling(
        torch.arange(12) % 3 == 0, 2, 3, 4, num_modes=6, width=5
    ),
    "spectral-scale": lambda: SpectralScale(2, 4),
    "actnorm": lambda: ActNorm(2),
    "coarse-coupling": lambda: _coarse_coupling(),
    "spline-coupling": lambda: SplineCoupling(
        torch.arange(12) % 2 == 1, 2, 3, 4, width=8, depth=1, bins=5, bound=1.5
    ),
    "spline-flow": lambda: ConditionalFlow(
        DOMAIN,
        2,
        3,
        4,
        FlowConfig(
            couplings=2, width=8, depth=1, num_modes=8, transform="spline", bins=4, actnorm=True
        ),
    ),
    "stiefel-mix": lambda: StiefelChannelMix(2, torch.Generator().manual_seed(3)),
    "flow": lambda: ConditionalFlow(
        DOMAIN, 2, 3, 4, FlowConfig(couplings=3, width=8, depth=1, num_modes=8)
    ),
    "spectral-flow": lambda: ConditionalFlow(
        DOMAIN, 2, 3, 4, FlowConfig(couplings=3, width=8, depth=1, num_modes=8, coupling="spectral")
    ),
}


@pytest.mark.parametrize("name", list(LAYERS), ids=list(LAYERS))
def test_inverse_and_log_determinant(name):
    layer = _randomize(LAYERS[name]()).double()
    cond = _cond()
    x = torch.randn(2, 12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    fwd = layer.transform if name.endswith("flow") else layer.forward
    inv = layer.inverse
    y, ld = fwd(x, cond)
    x2, ld_inv = inv(y, cond)
    assert torch.allclose(x2, x, atol=1e-10)
    assert torch.allclose(ld, -ld_inv, atol=1e-10)
    for b in range(2):

        def f(v, b=b):
            full = x.clone()
            full[b] = v.reshape(12, 2)
            return fwd(full, cond)[0][b].reshape(-1)

        jac = torch.autograd.functional.jacobian(f, x[b].reshape(-1))
        assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(ld[b].item(), abs=1e-9)


def test_flow_sample_log_prob_agree_and_base_respects_area():
    mesh_like = TriangleMesh(*_ellipsoid())
    flow = _randomize(
        ConditionalFlow(mesh_like, 1, 2, 3, FlowConfig(couplings=2, width=8, depth=1, num_modes=8)),
        0.1,
    ).double()
    from manifold_aps.flows import FlowCondition

    g = torch.Generator().manual_seed(5)
    cond = FlowCondition(
        torch.randn(2, mesh_like.num_nodes, 2, generator=g, dtype=torch.float64),
        torch.randn(2, 3, generator=g, dtype=torch.float64),
        flow.graph,
    )
    x, logq = flow.sample_and_log_prob(cond, 3, generator=g)
    assert x.shape == (3, 2, mesh_like.num_nodes, 1)
    assert torch.allclose(flow.log_prob(x, cond), logq, atol=1e-8)
    # white noise w.r.t. area: base variance times node area is constant
    var_area = flow.base_std.double() ** 2 * mesh_like.mass
    assert torch.allclose(var_area, var_area.mean().expand_as(var_area), rtol=1e-6)


@pytest.mark.parametrize("coupling", ["graph", "spectral"])
def test_many_samples_in_chunks_are_the_one_batch_draw_with_one_conditioner_pass(
    coupling, monkeypatch
):
    """A large draw without autograd runs in chunks, with the numbers of one batch.

    The same samples and log q as one batch; each condition-only conditioner runs once (not once
    per chunk).
    """
    import manifold_aps.flows.flow as flow_module
    from manifold_aps.flows import FlowCondition

    mesh_like = TriangleMesh(*_ellipsoid())
    cfg = FlowConfig(couplings=2, width=8, depth=1, num_modes=8, coupling=coupling)
    flow = _randomize(ConditionalFlow(mesh_like, 1, 2, 3, cfg), 0.1).double()
    g = torch.Generator().manual_seed(5)
    cond = FlowCondition(
        torch.randn(2, mesh_like.num_nodes, 2, generator=g, dtype=torch.float64),
        torch.randn(2, 3, generator=g, dtype=torch.float64),
        flow.graph,
    )
    with torch.enable_grad():  # autograd on: one batch, as in training
        x1, lq1 = flow.sample_and_log_prob(cond, 7, generator=torch.Generator().manual_seed(1))
    calls = []
    first = flow.layers[0].net
    first.register_forward_hook(lambda *a: calls.append(1))
    # 3 samples of both conditions per chunk: chunks of 3, 3, 1
    monkeypatch.setattr(flow_module, "SAMPLE_CHUNK_ELEMENTS", 3 * 2 * mesh_like.num_nodes)
    with torch.no_grad():
        x2, lq2 = flow.sample_and_log_prob(cond, 7, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 1
    torch.testing.assert_close(x2, x1, rtol=0, atol=1e-12)
    torch.testing.assert_close(lq2, lq1, rtol=1e-12, atol=1e-9)
    assert torch.allclose(flow.log_prob(x2, cond), lq2, atol=1e-8)


def _ellipsoid():
    import trimesh

    ico = trimesh.creation.icosphere(1)
    return ico.vertices * torch.tensor([1.0, 0.6, 1.4]).numpy(), ico.faces


def test_stiefel_mixing_stays_orthogonal_under_riemannian_adam():
    layer = StiefelChannelMix(4, torch.Generator().manual_seed(0))
    opt = geoopt.optim.RiemannianAdam(layer.parameters(), lr=0.05)
    target = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))[0]
    x = torch.randn(64, 12, 4)
    for _ in range(200):
        loss = (layer(x, None)[0] - x @ target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = layer.weight.detach().double()
    assert torch.allclose(w.T @ w, torch.eye(4, dtype=torch.float64), atol=1e-5)
    assert loss.item() < 0.5  # it did move towards the target


def test_fresh_spectral_coupling_is_the_identity_and_trainable():
    """Zero loadings: the identity; the summary MLP starts random, so the loadings get gradients.

    A coupling with both factors at zero would never leave the identity.
    """
    layer = SpectralCoupling(torch.arange(12) % 2 == 0, 2, 3, 4, num_modes=6, width=5).double()
    cond = _cond()
    x = torch.randn(2, 12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    y, ld = layer(x, cond)
    assert torch.equal(y, x) and torch.equal(ld, torch.zeros(2, dtype=torch.float64))
    (y.pow(2).sum() + ld.sum()).backward()
    assert layer.loadings.out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="coupling must be one of"):
        FlowConfig(coupling="dense")


def test_flow_config_round_trips_and_old_checkpoints_compare_equal():
    """`coupling` is omitted at its default, so settings saved before it existed still match."""
    old = {"couplings": 4, "width": 32, "depth": 2, "num_modes": 64, "spectral_every": 1}
    assert FlowConfig().to_dict() == old
    for cfg in (
        FlowConfig(),
        FlowConfig(coupling="spectral", width=8),
        FlowConfig(transform="spline", bins=5, actnorm=True),
    ):
        assert FlowConfig(**cfg.to_dict()) == cfg
    assert FlowConfig(coupling="spectral").to_dict()["coupling"] == "spectral"


def test_rational_quadratic_spline():
    """Zero parameters: the identity; random ones: monotonic and invertible.

    Random ones are inverse to 1e-10 inside and outside the interval, with log-derivative = log of
    the finite-difference slope.
    """
    g = torch.Generator().manual_seed(8)
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    zeros = torch.zeros(601, 6, dtype=torch.float64)
    y, ld = rational_quadratic(x, zeros, zeros, zeros[:, :5], 2.0)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ld, torch.zeros_like(x), rtol=0, atol=1e-12)
    w, h, d = (
        torch.randn(1, 6, generator=g, dtype=torch.float64).expand(601, -1) * 2 for _ in range(3)
    )
    y, ld = rational_quadratic(x, w, h, d[:, :5], 2.0)
    assert torch.all(y[1:] > y[:-1])  # monotonic
    back, ld_inv = rational_quadratic(y, w, h, d[:, :5], 2.0, inverse=True)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(ld_inv, -ld, rtol=0, atol=1e-10)
    eps = 1e-6
    slope = (
        rational_quadratic(x + eps, w, h, d[:, :5], 2.0)[0]
        - rational_quadratic(x - eps, w, h, d[:, :5], 2.0)[0]
    ) / (2 * eps)
    inner = x.abs() < 1.99  # away from the kinks of the finite difference at the bounds
    torch.testing.assert_close(ld[inner], torch.log(slope[inner]), rtol=0, atol=1e-5)
    assert not torch.allclose(y, x)


def test_multiscale_flow_on_a_mesh():
    """`levels=3`: couplings on the mesh and on two coarser levels; exact inverse and log-det."""
    mesh = TriangleMesh(*_ellipsoid())
    flow = _randomize(
        ConditionalFlow(
            mesh, 1, 2, 3, FlowConfig(couplings=3, width=8, depth=1, num_modes=8, levels=3)
        ),
        0.1,
    ).double()
    kinds = [type(layer).__name__ for layer in flow.layers]
    assert kinds.count("CoarseCoupling") == 2 and kinds.count("AffineCoupling") == 1
    from manifold_aps.flows import FlowCondition

    g = torch.Generator().manual_seed(9)
    cond = FlowCondition(
        torch.randn(2, mesh.num_nodes, 2, generator=g, dtype=torch.float64),
        torch.randn(2, 3, generator=g, dtype=torch.float64),
        flow.graph,
    )
    x, logq = flow.sample_and_log_prob(cond, 3, generator=g)
    assert torch.allclose(flow.log_prob(x, cond), logq, atol=1e-8)
    z = torch.randn(1, mesh.num_nodes, 1, generator=g, dtype=torch.float64)
    one = FlowCondition(cond.features[:1], cond.context[:1], flow.graph)
    jac = torch.autograd.functional.jacobian(
        lambda v: flow.transform(v.reshape(1, -1, 1), one)[0].reshape(-1), z.reshape(-1)
    )
    assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(
        flow.transform(z, one)[1].item(), abs=1e-8
    )
