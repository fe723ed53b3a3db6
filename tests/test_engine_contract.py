"""One contract for every registered engine and the two point estimates.

The engines are `manifold_aps.posterior.engines.ENGINES`, run through the one reconstruction
entry point `manifold_aps.reconstruct`.

Each engine (barely trained: the contract is about behaviour, not quality) on a small HEALPix
domain: the shapes, the observed values kept exactly, the same seed giving the same samples and
another seed others, a finite positive std where hidden, and a save/load round trip (the engine
loaded from its checkpoint in a fresh object samples what the trained one does). The gaussian
engine's agreement with the dense closed form is `tests/test_reconstruct.py`; the learned
engines' quality against exact posteriors is the benchmark suite's.
"""

import numpy as np
import pytest
import torch

from manifold_aps.datasets import GaussianSource, PriorDataset
from manifold_aps.flows import FlowConfig
from manifold_aps.geometry import HealpixSphere
from manifold_aps.nn import ScoreNetConfig
from manifold_aps.operators import Mask
from manifold_aps.posterior.amortized_vi import AmortizedVIConfig
from manifold_aps.posterior.aps import APSConfig
from manifold_aps.posterior.engines import ENGINES, load_trained_engine, train_engine
from manifold_aps.posterior.implicit import ImplicitConfig
from manifold_aps.priors import GaussianPrior
from manifold_aps.priors.train import train_prior
from manifold_aps.reconstruct import POINT_ESTIMATES, reconstruct, reconstruction_engines
from manifold_aps.training import TrainConfig

DOMAIN = HealpixSphere(2)
PRIOR = GaussianPrior(DOMAIN, variance=1.0, length_scale=0.6)
CFG = TrainConfig(
    steps=2,
    batch_size=2,
    lr=1e-3,
    warmup=1,
    ema_decay=0.0,
    checkpoint_every=2,
    validate_every=0,
    log_every=1,
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A checkpoint of every registered engine that has one, all from one (tiny) score prior."""
    root = tmp_path_factory.mktemp("contract")
    ds = PriorDataset(
        "contract",
        DOMAIN,
        GaussianSource(PRIOR, num_val=4),
        torch.zeros(0, DOMAIN.num_nodes, 1),
        "1",
        "draws of a Matérn prior",
    )
    train_prior(
        ds,
        root / "dps",
        CFG,
        net=ScoreNetConfig(channels=(8,), num_modes=8, num_positional=2),
        progress=False,
    )
    prior = root / "dps" / "checkpoint.pt"
    trained = {"dps": None, "daps": None}  # the zero-shot engines run the prior as it is
    trained["aps"], _ = train_engine(
        "aps",
        ds,
        prior,
        root / "aps",
        CFG,
        progress=False,
        settings=APSConfig(
            flow=FlowConfig(couplings=1, width=8, depth=1, num_modes=8), cg_iterations=2
        ),
    )
    trained["implicit"], _ = train_engine(
        "implicit",
        ds,
        prior,
        root / "implicit",
        CFG,
        progress=False,
        settings=ImplicitConfig(width=8, depth=1, num_modes=8, cg_iterations=2),
    )
    trained["avi"], _ = train_engine(
        "avi",
        ds,
        prior,
        root / "avi",
        CFG,
        progress=False,
        settings=AmortizedVIConfig(steps=4, window=(0, 2), width=8, depth=1, num_modes=8),
    )
    missing = {name for name, spec in ENGINES.items() if spec.checkpoint_kind} - set(trained)
    assert not missing, f"registered engines without a contract checkpoint: {missing}"
    paths = {name: root / name / "checkpoint.pt" for name in trained}
    paths["daps"] = prior
    return paths, trained


def _problem():
    rng = np.random.default_rng(0)
    truth = PRIOR.sample(2, rng=torch.Generator().manual_seed(1))[..., 0].numpy()
    return np.where(rng.random(truth.shape) < 0.5, np.nan, truth)


@pytest.mark.parametrize("engine", reconstruction_engines())
def test_every_engine_keeps_the_contract(engine, checkpoints):
    paths, _ = checkpoints
    values = _problem()
    seen = np.isfinite(values)
    kwargs = {"checkpoint": paths.get(engine), "samples": 6, "dps_steps": 4}
    a = reconstruct(DOMAIN, values, engine=engine, seed=3, **kwargs)
    b = reconstruct(DOMAIN, values, engine=engine, seed=3, **kwargs)
    assert a.mean.shape == a.std.shape == a.observed.shape == values.shape
    np.testing.assert_array_equal(a.mean[seen], values[seen])
    np.testing.assert_array_equal(a.std[seen], 0.0)
    np.testing.assert_array_equal(a.mean, b.mean)
    if engine in POINT_ESTIMATES:
        assert a.samples.shape == (0, *values.shape) and np.isnan(a.std[~seen]).all()
        return
    assert a.samples.shape == (6, *values.shape)
    np.testing.assert_array_equal(a.samples, b.samples)  # same seed, same samples
    np.testing.assert_array_equal(
        a.samples[:, seen], np.broadcast_to(values[seen], (6, int(seen.sum())))
    )
    assert np.isfinite(a.samples).all() and (a.std[~seen] > 0).all() and np.isfinite(a.std).all()
    other = reconstruct(DOMAIN, values, engine=engine, seed=4, **kwargs)
    assert not np.array_equal(other.samples[:, ~seen], a.samples[:, ~seen])


@pytest.mark.parametrize("engine", [name for name, spec in ENGINES.items() if spec.distilled])
def test_a_distilled_engine_loaded_from_its_checkpoint_samples_as_trained(engine, checkpoints):
    paths, trained = checkpoints
    name, loaded, _, _ = load_trained_engine(paths[engine])
    assert name == engine
    values = _problem()
    seen = torch.from_numpy(np.isfinite(values))[..., None]
    y = torch.from_numpy(np.nan_to_num(values))[..., None].float()
    op = Mask(DOMAIN, seen)
    with torch.no_grad() if engine != "avi" else torch.enable_grad():
        here = trained[engine].sample(y, op, 3, rng=torch.Generator().manual_seed(9))
        there = loaded.sample(y, op, 3, rng=torch.Generator().manual_seed(9))
    torch.testing.assert_close(there, here, rtol=0, atol=0)


def test_every_engine_is_on_every_command_line():
    from manifold_aps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    impute = next(a for a in sub["impute"]._actions if a.dest == "engine").choices
    recon = next(a for a in sub["reconstruct"]._actions if a.dest == "engine").choices
    dist = next(a for a in sub["distill"]._actions if a.dest == "engine").choices
    assert list(impute) == list(ENGINES)
    assert list(recon) == [*ENGINES, *POINT_ESTIMATES]
    assert list(dist) == [name for name, spec in ENGINES.items() if spec.distilled]
    kinds = [spec.checkpoint_kind for spec in ENGINES.values() if spec.checkpoint_kind]
    # one kind per distilled engine; the zero-shot engines share the score prior's
    assert kinds.count("score-prior") == 2 and len(set(kinds)) == len(kinds) - 1
