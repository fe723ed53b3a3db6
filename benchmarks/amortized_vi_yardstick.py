"""MGDM (zero-shot) and the LAVPS-style amortizer against the exact Gaussian posterior.

Problem: the "gaussian-healpix8" dataset (a known Matérn prior on HEALPix nside 8, 768 nodes),
random masks with 50-95 % missing, noise 0.1. The amortizer is trained with the exact prior on
simulated observations (`train_engine("avi", ...)`), then every sampler is evaluated on 16 held-out
observations of the dataset's test signals (`distill.held_out_observations`), `--samples` draws
each, against the exact posterior (`ExactGaussianPosterior`):

* `w2_per_dim`: Wasserstein-2 distance between the Gaussian fit of the samples (mean and FULL
  sample covariance) and the exact posterior, over sqrt(N), averaged over observations; with
  fewer samples than nodes the covariance fit is rank-deficient and the estimate is biased
  upwards, so `exact_floor_w2_per_dim` gives the same estimator on as many exact samples;
* `kl_diag_per_dim`: KL(N(m, diag v) || exact posterior) per dimension for the DIAGONAL Gaussian
  fit of the samples (closed form). The posterior is correlated, so no diagonal Gaussian is
  exact: its minimum over (m, v) is the mean-field optimum (m = mean, v = 1/diag(precision),
  narrower than the marginals), `mean_field_kl_diag_per_dim`; a diagonal fit of exact samples
  (the marginals) scores `exact_floor_kl_diag_per_dim`, higher. Underdispersed samplers can
  therefore score below the exact samples on this metric: read it with `std_ratio`;
* `mean_rmse_vs_exact`, `std_ratio` (mean over nodes of sample std / exact std), the
  area-weighted coverage of the held-out truths by the samples' central 90 % interval;
* `nfe` (denoiser forward passes per sample), `backward` (backward passes through the
  denoiser per sample, not in `nfe`), `seconds_per_sample` (wall time of the batched run over
  samples times observations, one CPU thread; the amortizer's own network passes are included
  in its time but not in its `nfe`).

Writes results/amortized_vi_yardstick.csv. Usage:
  python benchmarks/amortized_vi_yardstick.py [--runs runs] [--steps 2500] [--samples 256]

A finished training run in `--runs` is reused (its training time is read from its log).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from common import training_seconds, write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.metrics import central_interval, interval_coverage
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.amortized_vi import (
    AmortizedVI,
    AmortizedVIConfig,
    AmortizedVIObjective,
)
from manifold_aps.posterior.daps import DAPS
from manifold_aps.posterior.distill import held_out_observations, mask_family
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.posterior.gaussian import ExactGaussianPosterior
from manifold_aps.posterior.mgdm import MGDM
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.posterior.yardstick import gaussian_w2
from manifold_aps.training import TrainConfig


def kl_diagonal_fit(x: torch.Tensor, mean: torch.Tensor, prec: torch.Tensor, logdet_cov) -> float:
    r"""KL(N(m, diag v) || N(mu, Sigma)) of the diagonal Gaussian fit of samples `x` `(S, N)`.

    Against the exact mean `(N,)`, precision `(N, N)` and :math:`\log\det\Sigma`; nats, total.
    """
    m, v = x.mean(0), x.var(0)
    d = m - mean
    n = x.shape[1]
    tr = (torch.diagonal(prec) * v).sum()
    return float(0.5 * (tr + d @ prec @ d - n + logdet_cov - torch.log(v).sum()))


def scores(x: torch.Tensor, exact, truth: torch.Tensor, weight: torch.Tensor) -> dict:
    """Metrics of samples `x` `(S, B, N, 1)` against the exact conditional (module docstring)."""
    x = x.double()
    cov = exact.covariance()  # (B, 1, N, N)
    u = exact.eigenvectors
    chol = exact.cholesky  # (B, 1, N, N), precision in z = U^T x coordinates
    n = x.shape[2]
    w2, kl, kl_mf = [], [], []
    for b in range(x.shape[1]):
        xs, mu = x[:, b, :, 0], exact.mean[b, :, 0]
        w2.append(float(gaussian_w2(xs, mu, cov[b, 0])) / math.sqrt(n))
        prec = u @ (chol[b, 0] @ chol[b, 0].T) @ u.T
        logdet_cov = -2 * torch.log(torch.diagonal(chol[b, 0])).sum()
        kl.append(kl_diagonal_fit(xs, mu, prec, logdet_cov) / n)
        kl_mf.append(float(0.5 * (torch.log(torch.diagonal(prec)).sum() + logdet_cov)) / n)
    lo, hi = central_interval(x, 0.9)
    return {
        "w2_per_dim": sum(w2) / len(w2),
        "kl_diag_per_dim": sum(kl) / len(kl),
        "mean_field_kl_diag_per_dim": sum(kl_mf) / len(kl_mf),
        "mean_rmse_vs_exact": float((x.mean(0) - exact.mean).pow(2).mean().sqrt()),
        "std_ratio": float((x.std(0) / exact.std).mean()),
        "coverage_90": float(interval_coverage(lo, hi, truth.double(), weight)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--dataset", default="gaussian-healpix8")
    parser.add_argument("--steps", type=int, default=2500, help="training steps of the amortizer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=16)
    parser.add_argument("--samples", type=int, default=256, help="samples per held-out observation")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t_total = time.perf_counter()
    ds = build_prior_dataset(args.dataset)
    noise = GaussianNoise(0.1)
    held = held_out_observations(ds, noise, args.held_out, masks="random", seed=2024)
    op = held.operator(ds.domain)
    prior = ds.reference
    exact = ExactGaussianPosterior(prior, noise).condition(held.y.double(), op)
    weight = ds.domain.mass
    n_signals = args.samples * args.held_out

    # -- train the amortizer ----------------------------------------------------------------
    run = args.runs / f"amortized-vi-{args.dataset}"
    vi = AmortizedVIConfig()
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=2e-3,
        warmup=50,
        ema_decay=0.0,
        checkpoint_every=500,
        validate_every=250,
        log_every=50,
    )
    _, result = train_engine("avi", ds, "exact", run, cfg, settings=vi, resume=True, progress=False)
    train_s = training_seconds(run)  # cumulative: also when a finished run is reused
    engine, _, _ = load_engine(run / "checkpoint.pt", ds)
    # loss ratio network / zero-shot on fresh simulated observations (not the training draws)
    stream = SimulatedObservations(ds.source, mask_family("random", ds.domain), noise)
    ratio = AmortizedVIObjective(engine, prior, stream, batch_size=1).loss_ratio(
        stream.batch(torch.Generator().manual_seed(31), 64), seed=32
    )
    print(
        f"trained {result.step} steps in {train_s:.0f} s; "
        f"held-out inner-loss ratio network/zero-shot {ratio:.3f}",
        flush=True,
    )

    # -- the samplers -----------------------------------------------------------------------
    def amortized(**changes):
        cfg_ = AmortizedVIConfig(**{**vi.to_dict(), **changes})
        e = AmortizedVI(ds.domain, ds.channels, prior, noise, cfg_)
        e.load_state_dict(engine.state_dict())
        return e.eval()

    samplers = [
        (
            "mgdm",
            "K=8 M=1 lr=0.01 (equal grid)",
            MGDM(prior, noise, steps=8, inner_steps=1, lr=0.01),
        ),
        (
            "mgdm",
            "K=8 M=50 lr=0.05 (inner VI near converged)",
            MGDM(prior, noise, steps=8, inner_steps=50, lr=0.05),
        ),
        ("mgdm", "K=20 M=10 lr=0.05", MGDM(prior, noise, steps=20, inner_steps=10, lr=0.05)),
        (
            "mgdm",
            "K=50 M=10 lr=0.05 mix",
            MGDM(prior, noise, steps=50, inner_steps=10, lr=0.05, midpoint="mix"),
        ),
        ("daps", "K=20 (exact inner step)", DAPS(prior, noise, steps=20)),
        ("daps", "K=50 (exact inner step)", DAPS(prior, noise, steps=50)),
        ("amortized-vi", "K=8 window=0..3 best-of M_in=0 M_out=1 (default)", amortized()),
        ("amortized-vi", "K=8 window=0..3 no best-of M_in=0 M_out=1", amortized(best_of=False)),
    ]
    ex_samples = exact.sample(args.samples, rng=torch.Generator().manual_seed(7))
    floor = scores(ex_samples, exact, held.truth, weight)
    rows = []
    base = {
        "dataset": args.dataset,
        "nodes": ds.domain.num_nodes,
        "held_out": args.held_out,
        "samples": args.samples,
    }

    def row(method, settings, nfe, backward, seconds, sc, extra=None):
        r = {
            **base,
            "method": method,
            "settings": settings,
            "nfe": nfe,
            "backward": backward,
            "seconds_per_sample": round(seconds / n_signals, 6),
        }
        r.update({k: round(v, 5) for k, v in sc.items()})
        r["exact_floor_w2_per_dim"] = round(floor["w2_per_dim"], 5)
        r["exact_floor_kl_diag_per_dim"] = round(floor["kl_diag_per_dim"], 5)
        r["exact_coverage_90"] = round(floor["coverage_90"], 4)
        r["train_steps"], r["train_seconds"], r["loss_ratio"] = "", "", ""
        if extra:
            r.update(extra)
        print(r, flush=True)
        rows.append(r)
        write_csv(args.out / "amortized_vi_yardstick.csv", rows)

    t0 = time.perf_counter()
    exact.sample(args.samples, rng=torch.Generator().manual_seed(8))
    row("exact", "closed form", 0, 0, time.perf_counter() - t0, floor)
    for method, settings, sampler in samplers:
        t0 = time.perf_counter()
        out = sampler.run(held.y, op, args.samples, generator=torch.Generator().manual_seed(1))
        seconds = time.perf_counter() - t0
        extra = None
        if method == "amortized-vi":
            extra = {
                "train_steps": result.step,
                "train_seconds": round(train_s, 1),
                "loss_ratio": round(ratio, 4),
            }
        row(
            method,
            settings,
            out.nfe,
            out.backward,
            seconds,
            scores(out.sample, exact, held.truth, weight),
            extra,
        )

    # -- ratios -------------------------------------------------------------------------------
    by = {r["settings"]: r for r in rows}
    am = by["K=8 window=0..3 best-of M_in=0 M_out=1 (default)"]
    for key in [
        "K=8 M=1 lr=0.01 (equal grid)",
        "K=8 M=50 lr=0.05 (inner VI near converged)",
        "K=20 M=10 lr=0.05",
        "K=50 M=10 lr=0.05 mix",
    ]:
        r = by[key]
        print(
            f"amortized / MGDM {key}: W2 {am['w2_per_dim'] / r['w2_per_dim']:.3f}, "
            f"KL_diag {am['kl_diag_per_dim'] / r['kl_diag_per_dim']:.3f}, "
            f"mean RMSE {am['mean_rmse_vs_exact'] / r['mean_rmse_vs_exact']:.3f}, "
            f"NFE {am['nfe'] / r['nfe']:.3f} (+backward {am['backward']} vs {r['backward']}), "
            f"seconds {am['seconds_per_sample'] / r['seconds_per_sample']:.3f}"
        )
    print(f"total {time.perf_counter() - t_total:.0f} s")


if __name__ == "__main__":
    main()
