"""Eigenbasis cache: reused only for the same computation, verified before use.

It is never part of what a trained network computes (its eigenpairs travel in the checkpoint).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from manifold_aps.flows import ConditionalFlow, FlowCondition, FlowConfig
from manifold_aps.geometry import HealpixSphere, PlanarGrid, eigen
from manifold_aps.geometry.eigen import cache_path, cached_eigenbasis
from manifold_aps.nn import DomainTensors, ScoreNetConfig
from manifold_aps.operators import GaussianNoise, Mask, RandomMaskGenerator
from manifold_aps.posterior.aps import AmortizedFlowPosterior, APSConfig
from manifold_aps.posterior.first_estimate import TikhonovEstimate
from manifold_aps.priors import GaussianPrior
from manifold_aps.priors.score import ScorePrior
from manifold_aps.priors.train import KIND, load_prior
from manifold_aps.training import CHECKPOINT_FORMAT


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty eigen cache folder for this test."""
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "eigen"


def _uncached(domain, k):
    return cached_eigenbasis(domain, k, use_disk=False)


def _assert_same(pairs, reference):
    vals, vecs = (np.asarray(a) for a in pairs)
    assert np.array_equal(vals, reference[0]) and np.array_equal(vecs, reference[1])


def _read_silently(domain, k):
    """`domain.eigenbasis(k)`, failing on any warning (the cache file must be valid by now)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return domain.eigenbasis(k)


def test_a_bigger_basis_of_the_other_solver_is_not_sliced(cache, monkeypatch):
    """A Gaussian fit's full dense basis (k = N) in the cache does not replace the k = 8 solve."""
    monkeypatch.setattr(eigen, "DENSE_LIMIT", 16)  # k = 8 on 192 nodes takes the sparse solver
    domain = HealpixSphere(4)
    assert eigen.solver_settings(192, 8)["solver"] != eigen.solver_settings(192, 192)["solver"]
    domain.eigenbasis(192)
    assert cache_path(domain, 192).is_file()
    reference = _uncached(HealpixSphere(4), 8)
    _assert_same(HealpixSphere(4).eigenbasis(8), reference)  # a fresh object: the disk cache
    _assert_same(domain.eigenbasis(8), reference)  # the same object: its in-memory cache
    assert cache_path(domain, 8).is_file() and cache_path(domain, 8) != cache_path(domain, 192)


def _rewrite(path, **changes):
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def _tamper(path, how):
    with np.load(path) as data:
        vals, vecs = data["values"], data["vectors"]
    if how == "values-shifted":
        _rewrite(path, values=vals + 1.0)
    elif how == "vectors-scaled":
        _rewrite(path, vectors=vecs * 1.001)
    elif how == "vectors-permuted":
        _rewrite(path, vectors=vecs[:, [0, 1, 2, 5, 4, 3, 6, 7, 8, 9, 10, 11]])
    elif how == "forged-checksum":  # a consistent file whose first and last modes are swapped
        swapped = vecs[:, [11, *range(1, 11), 0]]
        eigen._save(path, eigen.solver_digest(192, 12), vals, swapped)
    elif how == "other-solver-digest":
        _rewrite(path, digest=np.array("0123456789ab"))


@pytest.mark.parametrize(
    "how",
    [
        "values-shifted",
        "vectors-scaled",
        "vectors-permuted",
        "forged-checksum",
        "other-solver-digest",
    ],
)
def test_a_tampered_cache_file_is_detected_and_recomputed(cache, how):
    domain = HealpixSphere(4)
    domain.eigenbasis(12)
    path = cache_path(domain, 12)
    _tamper(path, how)
    with pytest.warns(RuntimeWarning, match="eigenbasis cache file .* is unusable"):
        pairs = HealpixSphere(4).eigenbasis(12)
    _assert_same(pairs, _uncached(domain, 12))
    _assert_same(_read_silently(HealpixSphere(4), 12), _uncached(domain, 12))  # rewritten


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_a_truncated_cache_file_warns_and_is_recomputed(cache, how):
    domain = PlanarGrid(6, 5)
    domain.eigenbasis(10)
    path = cache_path(domain, 10)
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"not a zip" * 50, "empty": b""}[how]
    )
    with pytest.warns(RuntimeWarning, match="unusable"):
        pairs = PlanarGrid(6, 5).eigenbasis(10)
    _assert_same(pairs, _uncached(domain, 10))
    _assert_same(_read_silently(PlanarGrid(6, 5), 10), _uncached(domain, 10))  # rewritten


def _other_machine(monkeypatch, tmp_path):
    """From now on: another, empty cache folder, and a solver that returns another valid eigenbasis.

    The other eigenbasis has every other mode negated, and each pair of modes of one degenerate
    eigenvalue rotated by 0.7 rad within its eigenspace, as another machine or scipy may; the cache
    files it writes pass every check.
    """
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path / "other-cache"))
    solve = eigen.solve_eigenbasis

    def other(stiffness, mass, k):
        vals, vecs = solve(stiffness, mass, k)
        vecs = vecs * np.where(np.arange(k) % 2 == 1, -1.0, 1.0)
        c, s = np.cos(0.7), np.sin(0.7)
        i = 0
        while i + 1 < k:
            if abs(vals[i + 1] - vals[i]) <= 1e-12 * max(1.0, abs(vals[i])):
                vecs[:, [i, i + 1]] = vecs[:, [i, i + 1]] @ np.array([[c, -s], [s, c]])
                i += 1
            i += 1
        return vals, vecs

    monkeypatch.setattr(eigen, "solve_eigenbasis", other)


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return module


def _graphs(module):
    return [m for m in module.modules() if isinstance(m, DomainTensors)]


def _assert_same_spectra(module, reference):
    for a, b in zip(_graphs(module), _graphs(reference), strict=True):
        for name in ("basis", "analysis", "eigenvalues", "positional"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


SCORE_NET = ScoreNetConfig(channels=(8, 16), time_dim=8, num_modes=16, num_positional=4)


def test_a_saved_score_prior_does_not_depend_on_the_cache_it_is_loaded_with(
    tmp_path, monkeypatch, cache
):
    prior = _randomize(ScorePrior(HealpixSphere(4), 1, SCORE_NET))
    state = prior.state_dict()
    assert (
        state["net.graphs.0.modes"].shape == (192, 16)
        and state["net.graphs.0.modes"].dtype == torch.float64
    )
    assert "net.graphs.1.modes" in state  # the coarse level's eigenpairs too
    path = tmp_path / "checkpoint.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "kind": KIND,
            "fingerprint": prior.domain.fingerprint,
            "domain": repr(prior.domain),
            "model_config": prior.config(),
            "model": state,
            "ema": None,
        },
        path,
    )
    x = torch.randn(3, 192, 1, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.1, 0.5, 0.9])
    expected = prior.net(x, t)

    _other_machine(monkeypatch, tmp_path)
    rebuilt = ScorePrior.from_config(HealpixSphere(4), prior.config())  # fills the other cache
    assert not torch.equal(rebuilt.net.graphs[0].positional, prior.net.graphs[0].positional)
    assert cache_path(HealpixSphere(4), 16).is_file()
    loaded = load_prior(path, HealpixSphere(4), ema=False)
    assert torch.equal(loaded.net(x, t), expected)
    _assert_same_spectra(loaded, prior)


@pytest.mark.parametrize(
    "config",
    [
        FlowConfig(
            couplings=2, width=8, depth=1, num_modes=8, coupling="spectral"
        ),  # reads the basis
        FlowConfig(
            couplings=3, width=8, depth=1, num_modes=8, levels=2
        ),  # a coarse DomainTensors too
    ],
    ids=["spectral", "multiscale"],
)
def test_a_saved_flow_does_not_depend_on_the_cache_it_is_loaded_with(
    tmp_path, monkeypatch, cache, config
):
    flow = _randomize(ConditionalFlow(HealpixSphere(2), 1, 2, 3, config)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 48, 1, generator=g, dtype=torch.float64)
    features = torch.randn(2, 48, 2, generator=g, dtype=torch.float64)
    context = torch.randn(2, 3, generator=g, dtype=torch.float64)
    expected = flow.inverse(x, FlowCondition(features, context, flow.graph))

    _other_machine(monkeypatch, tmp_path)
    loaded = ConditionalFlow(HealpixSphere(2), 1, 2, 3, config).double()
    assert not torch.equal(loaded.graph.basis, flow.graph.basis)
    loaded.load_state_dict(flow.state_dict())
    got = loaded.inverse(x, FlowCondition(features, context, loaded.graph))
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    _assert_same_spectra(loaded, flow)


def test_a_checkpoint_without_eigenpairs_still_loads_with_a_warning(cache):
    prior = _randomize(ScorePrior(HealpixSphere(2), 1, SCORE_NET))
    old = {k: v for k, v in prior.state_dict().items() if not k.endswith(DomainTensors.SPECTRUM)}
    fresh = ScorePrior(HealpixSphere(2), 1, SCORE_NET)
    with pytest.warns(RuntimeWarning, match="no DomainTensors eigenpairs"):
        fresh.load_state_dict(old)  # strict: the missing eigenpairs are not an error
    x, t = torch.randn(2, 48, 1), torch.tensor([0.2, 0.7])
    assert torch.equal(fresh.net(x, t), prior.net(x, t))  # same computation here, same result


ENGINE_FLOW = FlowConfig(couplings=2, width=8, depth=1, num_modes=8)


def _engine(dense_limit):
    """A float64 APS engine on HEALPix nside 2 (48 nodes) with random weights.

    Its first estimate is dense (Cholesky) for `dense_limit` >= 48, iterative (PCG, prior-variance
    modes) for 0.
    """
    domain = HealpixSphere(2)
    config = APSConfig(flow=ENGINE_FLOW, cg_iterations=5, dense_limit=dense_limit)
    engine = AmortizedFlowPosterior(
        domain, 1, GaussianPrior(domain), GaussianNoise(0.1), config
    ).double()
    return _randomize(engine, seed=3)


def _engine_outputs(engine):
    """Samples `(2, 2, 48, 1)` and their log q `(2, 2)` for fixed observations and seed."""
    g = torch.Generator().manual_seed(5)
    domain = engine.domain
    operator = Mask(domain, RandomMaskGenerator(domain).step(2, seed=0)["mask"])
    y = torch.randn(2, domain.num_nodes, 1, generator=g, dtype=torch.float64)
    with torch.no_grad():
        return engine.sample_and_log_prob(y, operator, 2, generator=g)


@pytest.mark.parametrize("dense_limit", [2000, 0], ids=["dense", "pcg"])
def test_a_saved_aps_engine_does_not_depend_on_the_cache_it_is_loaded_with(
    tmp_path, monkeypatch, cache, dense_limit
):
    """The first estimate's free gains belong to its own eigenbasis.

    A loaded engine uses the saved one, not the other machine's rotation of the degenerate
    eigenspaces.
    """
    engine = _engine(dense_limit)
    state = engine.state_dict()
    assert (
        state["estimate.modes"].shape == (48, 32) and state["estimate.modes"].dtype == torch.float64
    )
    assert ("estimate.variance_modes" in state) == (dense_limit == 0)
    path = tmp_path / "engine.pt"
    torch.save(state, path)
    expected = _engine_outputs(engine)
    phi = HealpixSphere(2).eigenbasis(32)[1]

    _other_machine(monkeypatch, tmp_path)
    assert not torch.allclose(
        HealpixSphere(2).eigenbasis(32)[1].abs(), phi.abs()
    )  # really another basis
    loaded = _engine(dense_limit)
    loaded.load_state_dict(torch.load(path))
    got = _engine_outputs(loaded)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_an_engine_state_dict_without_estimate_eigenpairs_loads_with_a_warning(cache):
    """An engine checkpoint from before either module saved its eigenpairs."""
    engine = _engine(0)
    spectra = TikhonovEstimate.SPECTRUM + DomainTensors.SPECTRUM
    old = {k: v for k, v in engine.state_dict().items() if not k.endswith(spectra)}
    assert any(k.startswith("estimate.") for k in old) and not any(
        k.startswith("estimate.var") for k in old
    )
    fresh = _engine(0)
    with pytest.warns(RuntimeWarning) as record:
        fresh.load_state_dict(old)  # strict: the missing eigenpairs are not an error
    messages = " ".join(str(w.message) for w in record)
    assert (
        "no TikhonovEstimate eigenpairs" in messages and "no DomainTensors eigenpairs" in messages
    )
    got, expected = _engine_outputs(fresh), _engine_outputs(engine)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])  # same solve here
