"""The Euclidean check: inpainting scikit-learn digits (16x16 PlanarGrid) with APS and DPS.

Needs a digits prior (`manifold-aps train-prior --dataset digits --out RUNS/digits`). Distils an
APS engine (RUNS/aps-digits, resumed when present) on masked training digits (50-95 % of pixels
missing at random, noise 0.05), then on held-out test digits with held-out masks reports RMSE over
the hidden pixels of the APS posterior mean (S samples), of one APS sample, of DPS with the
same S, and of the mean over observed pixels (a trivial fill), and saves a PNG of truth,
observation, three APS samples, the mean and the standard deviation.

Writes results/digits_inpainting.csv and results/digits_inpainting.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.metrics import crps_ensemble, weighted_rmse
from manifold_aps.posterior import DPS
from manifold_aps.posterior.aps import APSConfig
from manifold_aps.posterior.distill import held_out_observations
from manifold_aps.posterior.engines import load_engine, train_engine
from manifold_aps.training import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--observations", type=int, default=16)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--dps-steps", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = build_prior_dataset("digits")
    run = args.runs / "aps-digits"
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=16,
        lr=2e-3,
        warmup=50,
        ema_decay=0.0,
        checkpoint_every=100,
        validate_every=0,
        log_every=25,
    )
    t0 = time.perf_counter()
    train_engine(
        "aps",
        ds,
        args.runs / "digits" / "checkpoint.pt",
        run,
        cfg,
        settings=APSConfig(),
        masks="random",
        noise_std=0.05,
        resume=True,
        progress=False,
    )
    distill_s = time.perf_counter() - t0
    engine, ds, prior = load_engine(run / "checkpoint.pt", ds)
    batch = held_out_observations(ds, engine.noise, args.observations, seed=4242)
    op = batch.operator(ds.domain)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    aps = engine.sample(batch.y, op, args.samples, rng=g).double()
    aps_s = (time.perf_counter() - t0) / (args.samples * args.observations)
    t0 = time.perf_counter()
    dps = (
        DPS(prior, engine.noise, steps=args.dps_steps)
        .sample(batch.y.float(), op, args.samples, rng=g)
        .double()
    )
    dps_s = (time.perf_counter() - t0) / (args.samples * args.observations)
    truth, hidden, w = batch.truth.double(), ~batch.mask, ds.domain.mass
    fill = batch.y.sum((1, 2), keepdim=True) / batch.mask.sum((1, 2), keepdim=True)
    rows = [
        {
            "method": "APS",
            "rmse_mean": float(weighted_rmse(aps.mean(0), truth, w, hidden)),
            "rmse_single": float(weighted_rmse(aps[0], truth, w, hidden)),
            "crps": float(crps_ensemble(aps, truth, w, hidden)),
            "seconds_per_sample": aps_s,
        },
        {
            "method": f"DPS ({args.dps_steps} steps)",
            "rmse_mean": float(weighted_rmse(dps.mean(0), truth, w, hidden)),
            "rmse_single": float(weighted_rmse(dps[0], truth, w, hidden)),
            "crps": float(crps_ensemble(dps, truth, w, hidden)),
            "seconds_per_sample": dps_s,
        },
        {
            "method": "mean of observed pixels",
            "rmse_mean": float(weighted_rmse(fill.double().expand_as(truth), truth, w, hidden)),
            "rmse_single": "",
            "crps": "",
            "seconds_per_sample": "",
        },
    ]
    for r in rows:
        r.update(
            samples=args.samples,
            observations=args.observations,
            missing_fraction=float(hidden.double().mean()),
            aps_distill_seconds_this_run=round(distill_s, 1),
        )
        print(r)
    write_csv(args.out / "digits_inpainting.csv", rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [
        "truth",
        "observed",
        "APS sample 1",
        "APS sample 2",
        "APS sample 3",
        "APS mean",
        "APS std",
        "DPS mean",
    ]
    k = min(6, args.observations)
    fig, axes = plt.subplots(k, len(cols), figsize=(1.6 * len(cols), 1.7 * k))
    for i in range(k):
        obs = np.where(batch.mask[i, :, 0].numpy(), batch.y[i, :, 0].numpy(), np.nan)
        imgs = [
            truth[i, :, 0],
            obs,
            aps[0, i, :, 0],
            aps[1, i, :, 0],
            aps[2, i, :, 0],
            aps[:, i, :, 0].mean(0),
            aps[:, i, :, 0].std(0),
            dps[:, i, :, 0].mean(0),
        ]
        for j, img in enumerate(imgs):
            ax = axes[i, j]
            ax.imshow(
                np.asarray(img).reshape(16, 16),
                cmap="gray_r" if j != 6 else "magma",
                vmin=0 if j != 6 else None,
                vmax=1 if j != 6 else None,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
    fig.suptitle(
        f"digits inpainting, {100 * float(hidden.double().mean()):.0f} % pixels hidden on average",
        fontsize=9,
    )
    fig.savefig(args.out / "digits_inpainting.png", dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
