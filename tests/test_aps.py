"""The APS engine against closed forms: estimator, exact KL bookkeeping, training, log_prob."""

from __future__ import annotations

import math

import pytest
import torch

from manifold_aps.datasets import GaussianSource
from manifold_aps.flows import FlowConfig
from manifold_aps.geometry import HealpixSphere
from manifold_aps.operators import GaussianNoise, HeatBlur, Mask, RandomMaskGenerator
from manifold_aps.posterior import ExactGaussianPosterior
from manifold_aps.posterior.aps import AmortizedFlowPosterior, APSConfig, ReverseKLObjective
from manifold_aps.posterior.first_estimate import TikhonovEstimate
from manifold_aps.posterior.objective import data_weight
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.posterior.yardstick import gaussian_yardstick
from manifold_aps.priors import GaussianPrior
from manifold_aps.training import TrainConfig, Trainer, step_generator

DOMAIN = HealpixSphere(2)
PRIOR = GaussianPrior(DOMAIN, variance=1.0, length_scale=0.5, smoothness=1.5)
NOISE = GaussianNoise(0.1)
SMALL = APSConfig(
    flow=FlowConfig(couplings=2, width=16, depth=1, num_modes=16),
    cg_iterations=20,
    warmup_fraction=0.0,
)


def _observations():
    return SimulatedObservations(
        GaussianSource(PRIOR), RandomMaskGenerator(DOMAIN, missing=(0.5, 0.9)), NOISE
    )


@pytest.mark.parametrize("dense", [False, True], ids=["pcg", "dense"])
@pytest.mark.parametrize("op_name", ["mask", "blur"])
def test_estimator_with_the_prior_precision_is_the_exact_posterior(op_name, dense):
    """With free gains on all modes set to 1/s_k, Q_theta is the prior precision exactly.

    The estimate is then the exact posterior mean and (dense) L L^T the exact posterior precision.
    """
    est = TikhonovEstimate(DOMAIN, iterations=200, num_modes=DOMAIN.num_nodes, dense=dense).double()
    lam, _ = DOMAIN.eigenbasis(DOMAIN.num_nodes)
    est.fit_to_spectrum(lam, PRIOR.spectrum)
    g = torch.Generator().manual_seed(0)
    x = PRIOR.sample(3, rng=g)
    op = (
        Mask(DOMAIN, RandomMaskGenerator(DOMAIN).step(3, seed=0)["mask"])
        if op_name == "mask"
        else HeatBlur(DOMAIN, 0.01)
    )
    y = NOISE(op(x), op.range_mask, rng=g)
    with torch.no_grad():
        mean, log_var, chol = est(y, op, NOISE.sigma)
    exact = ExactGaussianPosterior(PRIOR, NOISE).condition(y, op)
    assert torch.allclose(mean, exact.mean, atol=1e-6)
    assert log_var.shape == mean.shape
    if dense:
        cov = torch.cholesky_inverse(chol)
        assert torch.allclose(cov, exact.covariance(), atol=1e-8)
    else:
        assert chol is None


def _log_evidence(y, mask):
    """The log p(y) of the observed entries: N(0, H C H^T + sigma^2 I)."""
    out = []
    for b in range(y.shape[0]):
        keep = mask[b, :, 0]
        cov = PRIOR.covariance()[keep][:, keep] + NOISE.sigma**2 * torch.eye(
            int(keep.sum()), dtype=torch.float64
        )
        mvn = torch.distributions.MultivariateNormal(
            torch.zeros(int(keep.sum()), dtype=torch.float64), cov
        )
        out.append(mvn.log_prob(y[b, keep, 0]))
    return torch.stack(out)


def test_objective_is_kl_minus_log_evidence():
    """The objective equals KL(q||p(.|y)) - log p(y), with exact bookkeeping.

    Sums, temperature 1, constants included: for every flow sample,
    log p(y|x) + log p(x) - log p(x|y) = log p(y).
    """
    torch.manual_seed(0)
    engine = AmortizedFlowPosterior(DOMAIN, 1, PRIOR, NOISE, SMALL).double()
    obj = ReverseKLObjective(engine, PRIOR, _observations(), total_steps=10, batch_size=3)
    batch = obj.observations.batch(torch.Generator().manual_seed(1), 3)
    op = batch.operator(DOMAIN)
    with torch.no_grad():
        logq, loglik, logp = obj.terms(batch.y.double(), op, torch.Generator().manual_seed(2))
        # the same generator state gives the same flow samples the objective used
        x1, _ = engine.sample_and_log_prob(
            batch.y.double(), op, 1, generator=torch.Generator().manual_seed(2)
        )
    exact = ExactGaussianPosterior(PRIOR, NOISE).condition(batch.y.double(), op)
    evidence = loglik + logp - exact.log_prob(x1)
    assert torch.allclose(
        evidence, _log_evidence(batch.y.double(), batch.mask)[None].expand_as(evidence), atol=1e-6
    )
    assert torch.allclose(logq, engine.log_prob(x1, batch.y.double(), op), atol=1e-6)


def _train(engine, steps, tmp_path):
    cfg = TrainConfig(
        steps=steps,
        batch_size=8,
        lr=3e-3,
        warmup=10,
        ema_decay=0.0,
        checkpoint_every=1000,
        validate_every=0,
        log_every=50,
    )
    objective = ReverseKLObjective(engine, PRIOR, _observations(), total_steps=steps, batch_size=8)
    Trainer(
        objective, cfg, tmp_path, kind="aps-flow", domain=DOMAIN, model_config={}, progress=False
    ).fit()


@pytest.mark.parametrize("dense", [False, True], ids=["pcg-anchor", "dense-anchor"])
def test_training_and_exact_log_prob(tmp_path, dense):
    """Iterative anchor: training cuts the KL.

    Dense anchor initialised from the prior spectrum: the engine starts at (nearly) the exact
    posterior and training keeps it there.
    """
    torch.manual_seed(0)
    cfg = APSConfig(
        flow=SMALL.flow,
        cg_iterations=20,
        warmup_fraction=0.0,
        dense_limit=DOMAIN.num_nodes if dense else 0,
    )
    engine = AmortizedFlowPosterior(DOMAIN, 1, PRIOR, NOISE, cfg)
    lam, _ = DOMAIN.eigenbasis(DOMAIN.num_nodes)
    engine.estimate.fit_to_spectrum(lam, PRIOR.spectrum)
    held_out = _observations().batch(torch.Generator().manual_seed(99), 4)
    g = torch.Generator().manual_seed(3)
    before = gaussian_yardstick(
        engine, PRIOR, NOISE, held_out, num_samples=256, generator=g
    ).kl_per_dim.mean()
    _train(engine, 150, tmp_path)
    after = gaussian_yardstick(
        engine, PRIOR, NOISE, held_out, num_samples=256, generator=g
    ).kl_per_dim.mean()
    if dense:
        assert abs(before) < 0.005 and after < 0.01, (before, after)
    else:
        assert before < 0.2 and after < 0.8 * before, (before, after)
    op = held_out.operator(DOMAIN)
    with torch.no_grad():
        x, logq = engine.sample_and_log_prob(held_out.y, op, 5, generator=g)
        assert torch.allclose(engine.log_prob(x, held_out.y, op), logq, atol=1e-3)


def test_data_weight_schedule():
    assert data_weight(0, 1000, 0.0) == 1.0
    assert data_weight(100, 1000, 0.2) == pytest.approx(0.5)
    assert data_weight(200, 1000, 0.2) > 0.99
    assert data_weight(0, 1000, 0.2) < 0.01
    assert math.isfinite(data_weight(10**6, 1000, 0.2))


def test_distill_and_sample_cli(tmp_path):
    """The two APS commands as a user runs them (tiny settings)."""
    import subprocess
    import sys

    import numpy as np

    exe = [sys.executable, "-m", "manifold_aps.cli"]
    out = tmp_path / "aps"
    res = subprocess.run(
        exe
        + [
            "distill",
            "--dataset",
            "gaussian-healpix8",
            "--prior",
            "exact",
            "--steps",
            "3",
            "--couplings",
            "2",
            "--width",
            "8",
            "--out",
            str(out),
            "--quiet",
            "--log-every",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert "nats/dim" in res.stdout
    npz = tmp_path / "s.npz"
    res = subprocess.run(
        exe
        + [
            "sample",
            "--checkpoint",
            str(out / "checkpoint.pt"),
            "--out",
            str(npz),
            "--n",
            "6",
            "--observations",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    z = np.load(npz)
    assert z["samples"].shape == (6, 2, 768, 1)
    assert np.isfinite(z["samples"]).all()
    # a dataset without a closed-form prior is refused with exit 2 (in this process: `run_cli`)
    from conftest import refused, run_cli

    res = run_cli("distill", "--dataset", "digits", "--prior", "exact", "--out", "x", cwd=tmp_path)
    refused(res, "has no exact prior")


def test_prior_variance_of_the_estimator_matches_the_prior():
    """With all modes fitted to the prior's spectrum, the prior marginal variances are the prior's.

    The estimator's prior marginal variances are the Gaussian prior's (the variance proxy of the
    iterative anchor starts from them).
    """
    est = TikhonovEstimate(
        DOMAIN, num_modes=DOMAIN.num_nodes, variance_modes=DOMAIN.num_nodes
    ).double()
    lam, _ = DOMAIN.eigenbasis(DOMAIN.num_nodes)
    est.fit_to_spectrum(lam, PRIOR.spectrum)
    assert torch.allclose(
        est.prior_variance(torch.float64), PRIOR.covariance().diagonal(), rtol=1e-6
    )


def test_the_spectrum_fit_recovers_a_polynomial_spectrum_on_a_small_region_scale():
    """A spectrum p = 3 lambda^2 at small-region eigenvalues (x 240: lambda_1 ~ 480, as on UK).

    The fit used to run in log a_j from the estimator's start (log a = [11.4, -2.3, -18.3] on the
    UK grid): L-BFGS stopped at a misfit of 0.49 here, and on a UK prior ran log a_0 to -123,
    whose exp is 0 in float32, so p(0) = 0 on the constant mode, its gain inf and every APS loss
    NaN at step 1. The fit must reach the exact polynomial (a_0, a_1 left free by the modes), keep
    finite float32 parameters and the exact precisions 1 / v_k on the gain modes, lambda_0 = 0
    included.
    """
    est = TikhonovEstimate(DOMAIN, num_modes=8)
    with torch.no_grad():
        est.log_a.copy_(torch.tensor([11.4013, -2.3026, -18.3091]))  # the UK grid's start
    lam, _ = DOMAIN.eigenbasis(DOMAIN.num_nodes)
    lam = lam * 240.0
    assert float(lam[0]) == pytest.approx(0.0, abs=1e-6)
    var = 1.0 / (3.0 * lam.clamp_min(float(lam[1])) ** 2)
    misfit = est.fit_to_spectrum(lam, var)
    assert misfit < 1e-10
    assert torch.isfinite(est.log_a).all() and torch.isfinite(est.log_gain).all()
    assert float(est.log_a[2].exp()) == pytest.approx(3.0, rel=1e-4)
    precision = est._poly(lam[:8]) * est.log_gain.exp()  # e^{g_k}: the gain modes' precision
    assert torch.allclose(precision.double(), 1.0 / var[:8], rtol=1e-4)


def test_a_spectrum_that_is_not_finite_is_refused():
    est = TikhonovEstimate(DOMAIN, num_modes=8)
    lam, _ = DOMAIN.eigenbasis(DOMAIN.num_nodes)
    var = torch.ones_like(lam)
    var[20] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite"):
        est.fit_to_spectrum(lam, var)


@pytest.mark.parametrize("signals", ["data", "prior"])
def test_forward_kl_term_adds_weight_times_minus_log_q_of_the_pairs(signals):
    from dataclasses import replace

    torch.manual_seed(0)
    on = replace(SMALL, forward_kl_weight=0.5, forward_kl_signals=signals, prior_bank=64)
    engine = AmortizedFlowPosterior(DOMAIN, 1, PRIOR, NOISE, on).double()
    obj = ReverseKLObjective(engine, PRIOR, _observations(), total_steps=10, batch_size=4)
    with torch.no_grad():
        with_term = obj(3, 0, 4)
        engine.config = SMALL  # the same step without the term
        alone = obj(3, 0, 4)
        engine.config = on
        # the pairs the term used: the step's own batch ("data") or the bank's, drawn after it
        g = step_generator(obj.seed, 3)
        batch = obj.observations.batch(g, 4)
        if signals == "prior":
            obj.terms(batch.y, batch.operator(DOMAIN), g)
            batch = obj.pairs.batch(g, 4)
        minus_logq = -engine.log_prob(batch.truth[None].double(), batch.y, batch.operator(DOMAIN))
    dims = DOMAIN.num_nodes
    assert float(with_term - alone) == pytest.approx(
        0.5 * float(minus_logq.mean()) / dims, rel=1e-9
    )


def test_the_prior_bank_of_a_gaussian_prior_has_its_covariance():
    from manifold_aps.posterior.objective import prior_signal_bank

    bank = prior_signal_bank(PRIOR, DOMAIN, 1, 4000, seed=1).double()[..., 0]
    assert bank.shape == (4000, DOMAIN.num_nodes)
    cov = torch.cov(bank.T)
    assert torch.allclose(cov, PRIOR.covariance(), atol=0.1)  # 4000 draws: max error ~0.07


def test_forward_kl_settings_are_recorded_only_when_the_term_is_on():
    from dataclasses import replace

    assert "forward_kl_weight" not in SMALL.to_dict()  # old checkpoints' configs stay equal
    on = replace(SMALL, forward_kl_weight=1.0, forward_kl_signals="data")
    assert APSConfig.from_dict(on.to_dict()) == on
    assert APSConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="forward_kl_signals"):
        APSConfig(forward_kl_signals="truth")
    with pytest.raises(ValueError, match="forward_kl_weight"):
        APSConfig(forward_kl_weight=-1.0)


def test_fewer_variance_modes_make_a_smaller_engine_and_are_recorded_only_when_not_the_default():
    from dataclasses import replace

    iterative = replace(SMALL, dense_limit=0)  # 48 nodes: the iterative estimate, not the dense
    assert "variance_modes" not in iterative.to_dict()  # old checkpoints' configs stay equal
    fewer = replace(iterative, variance_modes=40)
    assert fewer.to_dict()["variance_modes"] == 40 and APSConfig.from_dict(fewer.to_dict()) == fewer
    default = AmortizedFlowPosterior(DOMAIN, 1, PRIOR, NOISE, iterative)
    small = AmortizedFlowPosterior(DOMAIN, 1, PRIOR, NOISE, fewer)
    assert default.estimate.variance_modes.shape == (48, 48)  # 256 clipped to the 48 nodes
    assert small.estimate.variance_modes.shape == (48, 40)
    # the prior-variance expansion is truncated, so the proxy changes, but stays positive
    v_small = small.estimate.prior_variance(torch.float64)
    assert (v_small > 0).all() and not torch.allclose(
        v_small, default.estimate.prior_variance(torch.float64)
    )
