"""Check trained diffusion priors: closed-form score errors, spectra of samples, likelihood bounds.

For each dataset with a checkpoint in RUNS/<dataset>/checkpoint.pt (train them with
`manifold-aps train-prior --dataset <dataset> --out RUNS/<dataset>`):

* Gaussian datasets (gaussian-healpix8, gaussian-bumpy): relative L2 error of the learned score
  against the exact one at 20 times in [0.05, 1]; Laplace-Beltrami band power of samples against
  the exact spectrum; the DSM ELBO against the ODE log-likelihood of the same model.
* Real datasets: band power of samples against the held-out test signals, mean and spread of
  the values, and for WMAP the healpy angular power spectrum.

Writes results/prior_summary.csv, results/prior_scores.csv, results/prior_spectra.csv and prints
a table. Usage: python benchmarks/prior_checks.py --runs /path/to/runs [--datasets ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch
from common import write_csv

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.priors.checks import band_power, score_relative_error
from manifold_aps.priors.likelihood import elbo, ode_log_likelihood
from manifold_aps.priors.sampling import reverse_sde_sample
from manifold_aps.priors.train import load_prior

ALL = [
    "gaussian-healpix8",
    "gaussian-bumpy",
    "era5-uk",
    "era5-global",
    "wmap",
    "mesh-bunny",
    "mesh-spot",
    "digits",
]


def check(name: str, runs: Path, num_samples: int, sde_steps: int, seed: int):
    ds = build_prior_dataset(name)
    run = runs / name
    prior = load_prior(run / "checkpoint.pt", ds.domain)
    info = json.loads((run / "train.json").read_text())
    log = list(csv.DictReader(open(run / "log.csv")))
    g = torch.Generator().manual_seed(seed)
    summary = {
        "dataset": name,
        "domain": repr(ds.domain),
        "nodes": ds.domain.num_nodes,
        "steps": info["step"],
        "train_seconds": round(float(log[-1]["seconds"]), 1),
        "final_loss": round(info["loss"], 4),
        "val_loss": round(info["val_loss"], 4),
    }
    scores, spectra = [], []
    t0 = time.perf_counter()
    out = reverse_sde_sample(
        prior, (num_samples, ds.domain.num_nodes, ds.channels), steps=sde_steps, generator=g
    )
    samples = prior.denormalize(out.sample).double()
    summary["sample_seconds_per_sample"] = round((time.perf_counter() - t0) / num_samples, 3)
    num_modes = min(65, ds.domain.num_nodes)
    lam, p_model = band_power(ds.domain, samples, num_modes)
    if ds.reference is not None:
        times = torch.linspace(0.05, 1.0, 20)
        err = score_relative_error(prior, ds.reference, times, num_samples=64, generator=g)
        scores = [
            {"dataset": name, "t": round(float(t), 4), "relative_error": float(e)}
            for t, e in zip(times, err, strict=True)
        ]
        summary["score_rel_error_mean"] = round(float(err.mean()), 4)
        summary["score_rel_error_max"] = round(float(err.max()), 4)
        s = ds.reference.spectrum[1:num_modes]
        groups = torch.tensor_split(torch.arange(num_modes - 1), 8)
        p_ref = torch.stack([s[gr].mean() for gr in groups])
        x = ds.test[:8].double()
        reps = 128  # ELBO draws per signal, in chunks of 16
        with torch.no_grad():
            b = torch.cat(
                [
                    elbo(prior, x.repeat(16, 1, 1).float(), generator=g).double().reshape(16, -1)
                    for _ in range(reps // 16)
                ]
            )
        ode = ode_log_likelihood(
            prior, x.float(), steps=40, exact_trace=False, probes=4, generator=g
        ).double()
        exact = ds.reference.log_prob(x)
        summary["elbo_mean"] = round(float(b.mean()), 1)
        # standard error of the mean over the 8 signals' Monte Carlo averages
        summary["elbo_se"] = round(float(b.var(0).mean().sqrt() / math.sqrt(b.numel())), 1)
        summary["ode_loglik_mean"] = round(float(ode.mean()), 1)
        summary["exact_loglik_mean"] = round(float(exact.mean()), 1)
        summary["elbo_gap_to_ode"] = round(float(ode.mean() - b.mean()), 1)
        reference_name = "exact spectrum"
    else:
        _, p_ref = band_power(ds.domain, ds.test.double(), num_modes)
        reference_name = "test signals"
        summary["value_mean_ratio"] = round(float(samples.mean() / ds.test.double().mean()), 4)
        summary["value_std_ratio"] = round(float(samples.std() / ds.test.double().std()), 4)
    ratio = p_model / p_ref
    summary["band_power_max_abs_log2_ratio"] = round(float(ratio.log2().abs().max()), 3)
    spectra = [
        {
            "dataset": name,
            "band": i,
            "mean_eigenvalue": float(eigenvalue),
            "power_samples": float(pm),
            "power_reference": float(pr),
            "ratio": float(r),
            "reference": reference_name,
        }
        for i, (eigenvalue, pm, pr, r) in enumerate(zip(lam, p_model, p_ref, ratio, strict=True))
    ]
    if name == "wmap":
        import healpy as hp

        cl_map = hp.anafast(ds.extra["map"], lmax=40)
        cl_s = torch.tensor([hp.anafast(m, lmax=40) for m in samples[..., 0].numpy()]).mean(0)
        bands = [(2, 5), (6, 10), (11, 20), (21, 40)]
        for lo, hi in bands:
            summary[f"wmap_cl_ratio_l{lo}-{hi}"] = round(
                float(cl_s[lo : hi + 1].sum() / cl_map[lo : hi + 1].sum()), 3
            )
    return summary, scores, spectra


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", required=True, type=Path, help="folder with one training run per dataset"
    )
    parser.add_argument("--datasets", nargs="+", default=ALL)
    parser.add_argument(
        "--samples", type=int, default=64, help="prior samples per dataset (default 64)"
    )
    parser.add_argument(
        "--sde-steps", type=int, default=300, help="reverse-SDE steps (default 300)"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    summaries, scores, spectra = [], [], []
    for name in args.datasets:
        if not (args.runs / name / "checkpoint.pt").exists():
            print(f"skip {name}: no checkpoint in {args.runs / name}")
            continue
        s, sc, sp = check(name, args.runs, args.samples, args.sde_steps, args.seed)
        print(json.dumps(s))
        summaries.append(s)
        scores += sc
        spectra += sp
    keys = sorted({k for s in summaries for k in s}, key=lambda k: (k not in summaries[0], k))
    write_csv(args.out / "prior_summary.csv", [{k: s.get(k, "") for k in keys} for s in summaries])
    write_csv(args.out / "prior_scores.csv", scores)
    write_csv(args.out / "prior_spectra.csv", spectra)


if __name__ == "__main__":
    main()
