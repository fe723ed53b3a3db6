"""Eigenbasis cache: reused only for the same computation, verified before use, and never part of
what a trained network computes (its eigenpairs travel in the checkpoint)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from manifold_aps.flows import ConditionalFlow, FlowCondition, FlowConfig
from manifold_aps.geometry import HealpixSphere, PlanarGrid, eigen
from manifold_aps.geometry.eigen import cache_path, cached_eigenbasis
from manifold_aps.nn import DomainTensors, ScoreNetConfig
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
    "how", ["values-shifted", "vectors-scaled", "vectors-permuted", "forged-checksum", "other-solver-digest"]
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
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a zip" * 50, "empty": b""}[how])
    with pytest.warns(RuntimeWarning, match="unusable"):
        pairs = PlanarGrid(6, 5).eigenbasis(10)
    _assert_same(pairs, _uncached(domain, 10))
    _assert_same(_read_silently(PlanarGrid(6, 5), 10), _uncached(domain, 10))  # rewritten


def _other_machine(monkeypatch, tmp_path):
    """From now on: another, empty cache folder, and a solver that returns another valid
    eigenbasis (every other mode negated), as another machine or scipy may; the cache files it
    writes pass every check."""
    monkeypatch.setenv("MANIFOLD_APS_CACHE", str(tmp_path / "other-cache"))
    solve = eigen.solve_eigenbasis

    def other(stiffness, mass, k):
        vals, vecs = solve(stiffness, mass, k)
        return vals, vecs * np.where(np.arange(k) % 2 == 1, -1.0, 1.0)

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


def test_a_saved_score_prior_does_not_depend_on_the_cache_it_is_loaded_with(tmp_path, monkeypatch, cache):
    prior = _randomize(ScorePrior(HealpixSphere(4), 1, SCORE_NET))
    state = prior.state_dict()
    assert state["net.graphs.0.modes"].shape == (192, 16) and state["net.graphs.0.modes"].dtype == torch.float64
    assert "net.graphs.1.modes" in state  # the coarse level's eigenpairs too
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "kind": KIND, "fingerprint": prior.domain.fingerprint,
                "domain": repr(prior.domain), "model_config": prior.config(), "model": state, "ema": None}, path)
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


@pytest.mark.parametrize("config", [
    FlowConfig(couplings=2, width=8, depth=1, num_modes=8, coupling="spectral"),  # reads the basis
    FlowConfig(couplings=3, width=8, depth=1, num_modes=8, levels=2),  # a coarse DomainTensors too
], ids=["spectral", "multiscale"])
def test_a_saved_flow_does_not_depend_on_the_cache_it_is_loaded_with(tmp_path, monkeypatch, cache, config):
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
