"""The implicit generator (DAVI-style) against closed forms.

Also its objective's gradient split, training and loading.
"""

from __future__ import annotations

import pytest
import torch

from manifold_aps.datasets import GaussianSource, PriorDataset
from manifold_aps.geometry import HealpixSphere
from manifold_aps.operators import GaussianNoise, HeatBlur, Mask, RandomMaskGenerator
from manifold_aps.posterior import ExactGaussianPosterior
from manifold_aps.posterior.distill import mask_family, prior_mode_variances
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.posterior.implicit import (
    ImplicitConfig,
    ImplicitGenerator,
    IntegralKLObjective,
)
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.priors import GaussianPrior
from manifold_aps.training import TrainConfig

DOMAIN = HealpixSphere(4)
PRIOR = GaussianPrior(DOMAIN, variance=1.0, length_scale=0.4, smoothness=1.5)
NOISE = GaussianNoise(0.1)
SMALL = ImplicitConfig(width=8, depth=1, num_modes=8, samples_per_observation=2)


def _engine(config=SMALL):
    eng = ImplicitGenerator(DOMAIN, 1, PRIOR, NOISE, config).double()
    lam, var = prior_mode_variances(PRIOR, DOMAIN, DOMAIN.num_nodes)
    eng.estimate.fit_to_spectrum(lam, var)
    return eng


def _observations(n=3, seed=0):
    stream = SimulatedObservations(
        GaussianSource(PRIOR), RandomMaskGenerator(DOMAIN, missing=(0.5, 0.9)), NOISE
    )
    return stream.batch(torch.Generator().manual_seed(seed), n)


def test_fresh_generator_draws_the_exact_posterior_of_its_gaussian_prior():
    """With Q fitted to the prior spectrum and the dense noise shape, the bridge input is exact."""
    eng = _engine()
    batch = _observations()
    op = batch.operator(DOMAIN)
    exact = ExactGaussianPosterior(PRIOR, NOISE).condition(batch.y.double(), op)
    n = 4000
    x = eng.sample(batch.y, op, n, rng=torch.Generator().manual_seed(1))
    assert x.shape == (n, 3, DOMAIN.num_nodes, 1)
    z = (x.mean(0) - exact.mean) / (exact.std / n**0.5)
    assert z.abs().max() < 5  # every node's mean within 5 Monte Carlo standard errors
    ratio = x.std(0) / exact.std
    assert (ratio - 1).abs().max() < 0.1  # sampling error of a std with 4000 draws ~ 1.1 %
    # no noise at the input would collapse the samples: the noise is what makes them differ
    assert x.std(0).min() > 0


def test_objective_splits_gradients_and_warms_up_the_auxiliary_score():
    eng = _engine(ImplicitConfig(width=8, depth=1, num_modes=8, aux_warmup_fraction=0.5))
    stream = SimulatedObservations(GaussianSource(PRIOR), mask_family("random", DOMAIN), NOISE)
    obj = IntegralKLObjective(eng, PRIOR, stream, total_steps=10, batch_size=2)
    gen_params = {n for n, _ in eng.named_parameters() if not n.startswith("aux.")}

    def grads(step):
        eng.zero_grad()
        obj(step, 0, 2).backward()
        return {
            n: (p.grad is not None and bool(p.grad.abs().sum() > 0))
            for n, p in eng.named_parameters()
        }

    early = grads(1)  # warm-up: only the auxiliary score learns
    assert not any(early[n] for n in gen_params)
    assert any(v for n, v in early.items() if n.startswith("aux."))
    late = grads(8)
    assert any(late[n] for n in gen_params)
    # the DSM part alone never reaches the generator: its samples are detached
    eng.zero_grad()
    parts = obj.terms(*_pair(), torch.Generator().manual_seed(0))
    parts["dsm"].sum().backward()
    assert all(
        p.grad is None or p.grad.abs().sum() == 0
        for n, p in eng.named_parameters()
        if n in gen_params
    )


def _dataset() -> PriorDataset:
    """The Gaussian prior's signals as a tiny dataset (its exact prior as the reference)."""
    return PriorDataset(
        "tiny-h4",
        DOMAIN,
        GaussianSource(PRIOR, num_val=4),
        torch.zeros(0, DOMAIN.num_nodes, 1),
        "1",
        "test",
        PRIOR,
    )


def _pair():
    batch = _observations(2, seed=5)
    return batch.y, batch.operator(DOMAIN)


def test_train_load_and_unseen_operators(tmp_path):
    ds = _dataset()
    cfg = TrainConfig(
        steps=3,
        batch_size=2,
        lr=1e-3,
        warmup=1,
        ema_decay=0.0,
        checkpoint_every=3,
        validate_every=0,
        log_every=1,
    )
    eng, result = train_engine(
        "implicit", ds, "exact", tmp_path, cfg, settings=SMALL, progress=False, dtype=torch.float64
    )
    assert result.step == 3 and torch.isfinite(torch.tensor(result.loss))
    again, _, _ = load_engine(tmp_path / "checkpoint.pt", ds)
    y, op = _pair()
    a = eng.sample(y, op, 4, rng=torch.Generator().manual_seed(3))
    b = again.sample(y, op, 4, rng=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # an operator family never seen in training: a heat blur of the whole field
    blur = HeatBlur(DOMAIN, 0.01)
    x = PRIOR.sample(2, rng=torch.Generator().manual_seed(4))
    yb = NOISE(blur(x), None, rng=torch.Generator().manual_seed(5))
    out = again.sample(yb, blur, 3, rng=torch.Generator().manual_seed(6))
    assert out.shape == (3, 2, DOMAIN.num_nodes, 1) and torch.isfinite(out).all()
    mask_op = Mask(DOMAIN, torch.ones(DOMAIN.num_nodes, dtype=torch.bool))
    assert torch.isfinite(again.sample(mask_op(x), mask_op, 2)).all()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="0 < t_min < t_max <= 1"):
        ImplicitConfig(t_min=0.5, t_max=0.1)
    with pytest.raises(ValueError, match="must be >= 1"):
        ImplicitConfig(samples_per_observation=0)
    eng = _engine()
    y, op = _pair()
    with pytest.raises(ValueError, match="n must be >= 1"):
        eng.sample(y, op, 0)


@pytest.mark.parametrize("engine", ["implicit", "avi"])
def test_distill_and_sample_cli_for_the_sibling_engines(tmp_path, engine):
    """`distill --engine` and `sample` for every sibling engine, as a user runs them.

    The settings are tiny.
    """
    import numpy as np
    from conftest import run_cli

    out = tmp_path / engine
    res = run_cli(
        "distill",
        "--engine",
        engine,
        "--dataset",
        "gaussian-healpix8",
        "--prior",
        "exact",
        "--steps",
        "2",
        "--width",
        "8",
        "--out",
        out,
        "--quiet",
        "--log-every",
        "1",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    res = run_cli(
        "sample",
        "--checkpoint",
        out / "checkpoint.pt",
        "--out",
        tmp_path / "s.npz",
        "--n",
        "3",
        "--observations",
        "2",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    z = np.load(tmp_path / "s.npz")
    assert z["samples"].shape == (3, 2, 768, 1) and np.isfinite(z["samples"]).all()


def test_trainer_applies_the_generators_learning_rate_scale(tmp_path):
    """`optimizer_groups`: with a zero scale the generator never moves.

    Its auxiliary score learns meanwhile.
    """
    ds = _dataset()
    cfg = TrainConfig(
        steps=4,
        batch_size=2,
        lr=1e-2,
        warmup=1,
        ema_decay=0.0,
        checkpoint_every=4,
        validate_every=0,
        log_every=1,
    )
    frozen = ImplicitConfig(
        width=8, depth=1, num_modes=8, aux_warmup_fraction=0.0, generator_lr_scale=0.0
    )
    eng, _ = train_engine(
        "implicit", ds, "exact", tmp_path, cfg, settings=frozen, progress=False, dtype=torch.float64
    )
    fresh = ImplicitGenerator(DOMAIN, 1, PRIOR, NOISE, frozen).double()
    torch.manual_seed(0)
    for (name, p), (_, q) in zip(
        eng.generator.named_parameters(), fresh.generator.named_parameters(), strict=True
    ):
        if name.startswith("out."):  # zero-initialised, so comparable with a fresh generator
            assert torch.equal(p, q), name
    assert any(p.abs().sum() > 0 for n, p in eng.aux.named_parameters() if n.startswith("out."))


def test_anchor_variances_from_signals_are_the_spectrum_of_the_fields_they_are_drawn_from():
    from manifold_aps.nn import ScoreNetConfig
    from manifold_aps.priors.score import ChannelNormalizer, ScorePrior

    # a (here untrained) score prior standardising by mean 2, std 3: the variances are of z
    net = ScoreNetConfig(channels=(8, 16), time_dim=8, num_modes=16, num_positional=4)
    normalizer = ChannelNormalizer(torch.tensor([2.0]), torch.tensor([3.0]))
    score = ScorePrior(DOMAIN, 1, net, normalizer=normalizer)
    fields = 2.0 + 3.0 * PRIOR.sample(4000, rng=torch.Generator().manual_seed(0))
    lam, var = prior_mode_variances(score, DOMAIN, 32, signals=fields)
    exact_lam, exact = prior_mode_variances(PRIOR, DOMAIN, 32)
    assert torch.allclose(lam, exact_lam)
    assert torch.allclose(var, exact, rtol=0.1)  # 4000 fields: a few % sampling error per mode


def test_an_unknown_anchor_is_refused_before_any_training(tmp_path):
    cfg = TrainConfig(steps=1, batch_size=2, validate_every=0, log_every=1)
    with pytest.raises(ValueError, match="anchor must be one of"):
        train_engine("implicit", _dataset(), "exact", tmp_path, cfg, anchor="nope", progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()
