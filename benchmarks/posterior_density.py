"""Where do an engine's samples sit under the learned prior's posterior density? Against the truth.

APS fits the posterior p_theta(x | y) ~ p_theta(x) p(y | x) of the trained score prior by reverse
KL, with the DSM evidence lower bound (ELBO) standing in for log p_theta(x). If the flow found
that posterior, its samples would be about as probable under it as the held-out truths the
observations came from (the truth is a draw of the true posterior); if the prior were calibrated
in density, held-out fields would be as probable under p_theta as its own samples. This script
measures both, per dimension (divided by `N C`), on the suite's held-out test fields of one
problem (`suite.test_observations`, 70 % hidden, the suite's noise) for these groups of signals:

* ``test fields``     the truths of the test observations;
* ``training fields`` fields the prior was trained on;
* ``prior samples``   reverse-SDE samples of the prior (200 steps);
* ``engine samples``  the engine's posterior samples for the test observations;
* ``first estimate``  the engine's first estimate (its Gaussian anchor's mean).

Columns: the ELBO (`--elbo-times` (t, eps) pairs per field in `--elbo-repeats` independent
repeats: the mean over the fields, the fields' standard error, and the Monte Carlo standard
error of one field's value from the repeats), `log p(y | x)` for the groups tied to the
observations, their sum (the log posterior density up to a constant shared by every group), and
the probability-flow ODE log-likelihood (`manifold_aps.priors.likelihood.ode_log_likelihood`,
Hutchinson divergence) on the first `--ode-fields` fields of each group: the check of the ELBO's
bias along each group.

Writes `results/posterior_density-<problem>.csv`. Usage:
  python benchmarks/posterior_density.py --problem mesh-spot \
      --engine runs/suite/aps-calibration/mesh-spot/reverse/checkpoint.pt
  python benchmarks/posterior_density.py --quick --out /tmp/o   # smoke test (numbers meaningless)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import keep_earlier, read_csv, trained_steps, write_csv
from suite import PRIOR_STEPS, PROBLEMS, prior_checkpoint, test_observations

from manifold_aps.datasets import build_prior_dataset
from manifold_aps.operators import GaussianNoise
from manifold_aps.posterior.distill import resolve_prior
from manifold_aps.posterior.engines import load_engine
from manifold_aps.priors.likelihood import elbo, ode_log_likelihood
from manifold_aps.priors.sampling import reverse_sde_sample

HERE = Path(__file__).resolve().parent


def elbo_per_dim(prior, x: torch.Tensor, times: int, repeats: int, seed: int) -> torch.Tensor:
    """ELBO / (N C) of each field `x` `(B, N, C)` in `repeats` independent estimates: `(R, B)`."""
    g = torch.Generator().manual_seed(seed)
    d = x[0].numel()
    with torch.no_grad():
        reps = [elbo(prior, x.float(), num_times=times, generator=g) for _ in range(repeats)]
    return torch.stack(reps).double() / d


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problem", default="mesh-spot", choices=list(PROBLEMS))
    parser.add_argument("--runs", type=Path, default=HERE.parent / "runs" / "suite")
    parser.add_argument(
        "--engine",
        type=Path,
        default=None,
        help="checkpoint of a trained engine (default: aps_calibration.py's reverse-KL APS, "
        "<runs>/aps-calibration/<problem>/reverse/checkpoint.pt)",
    )
    parser.add_argument("--fields", type=int, default=16, help="fields per group (default 16)")
    parser.add_argument("--missing", type=float, default=0.7)
    parser.add_argument("--elbo-times", type=int, default=16, help="(t, eps) pairs per repeat")
    parser.add_argument("--elbo-repeats", type=int, default=4)
    parser.add_argument("--ode-fields", type=int, default=4, help="fields per group for the ODE")
    parser.add_argument("--ode-steps", type=int, default=50, help="RK4 steps of the ODE")
    parser.add_argument(
        "--prior-steps", type=int, default=PRIOR_STEPS, help="the suite prior's (default 3000)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--quick", action="store_true", help="tiny settings (numbers meaningless)")
    args = parser.parse_args()
    if args.quick:
        args.fields, args.elbo_times, args.elbo_repeats, args.ode_fields = 2, 2, 2, 1
        args.ode_steps, args.prior_steps = 2, 4
    torch.set_num_threads(1)
    problem = PROBLEMS[args.problem]
    ds = build_prior_dataset(problem.dataset)
    noise = GaussianNoise(problem.noise_std)
    y, operator, truth, _ = test_observations(ds, noise, args.fields, args.missing, seed=2024)
    prior_path, _ = prior_checkpoint(problem, ds, args.runs, args.prior_steps, args.quick)
    prior = resolve_prior(ds, prior_path)
    prior_steps = trained_steps(prior_path)
    engine_path = args.engine or args.runs / "aps-calibration" / args.problem / "reverse"
    engine_path = engine_path / "checkpoint.pt" if engine_path.is_dir() else engine_path
    engine = load_engine(engine_path, ds, prior=prior)[0]
    n, channels = ds.domain.num_nodes, truth.shape[-1]
    with torch.no_grad():
        samples = engine.sample(y.float(), operator, 1, rng=torch.Generator().manual_seed(7))[0]
        dtype = next(engine.parameters()).dtype
        first = engine.from_z(engine.encode(y.to(dtype), operator, dtype).estimate)
        z = reverse_sde_sample(
            prior,
            (args.fields, n, channels),
            steps=200,
            generator=torch.Generator().manual_seed(1),
            progress="prior samples",
        ).sample
    groups = {  # name -> (fields (B, N, C), tied to the observations y)
        "test fields": (truth, True),
        "training fields": (ds.source.batch(torch.Generator().manual_seed(5), args.fields), False),
        "prior samples": (prior.denormalize(z), False),
        "engine samples": (samples, True),
        "first estimate": (first, True),
    }
    d = n * channels
    rows = []
    for name, (x, tied) in groups.items():
        t0 = time.perf_counter()
        x = x.double()
        reps = elbo_per_dim(prior, x, args.elbo_times, args.elbo_repeats, seed=3)
        per_field = reps.mean(0)
        row = {
            "problem": args.problem,
            "prior_steps": prior_steps,
            "engine": str(engine_path),
            "group": name,
            "fields": x.shape[0],
            "elbo_per_dim": float(per_field.mean()),
            "elbo_se_fields": float(per_field.std() / x.shape[0] ** 0.5),
            "elbo_mc_se_one_field": float((reps.std(0) / args.elbo_repeats**0.5).mean()),
            "elbo_times": args.elbo_times * args.elbo_repeats,
        }
        if tied:
            loglik = noise.log_likelihood(y.double(), operator(x), operator.range_mask) / d
            row["log_lik_per_dim"] = float(loglik.mean())
            row["log_posterior_per_dim"] = float((per_field + loglik).mean())
        m = min(args.ode_fields, x.shape[0])
        ode = ode_log_likelihood(
            prior, x[:m].float(), steps=args.ode_steps, generator=torch.Generator().manual_seed(4)
        )
        row["ode_fields"] = m
        row["ode_log_lik_per_dim"] = float(ode.double().mean() / d)
        row["elbo_per_dim_same_fields"] = float(per_field[:m].mean())
        row["seconds"] = round(time.perf_counter() - t0, 1)
        print(row, flush=True)
        rows.append(row)
    out = args.out / f"posterior_density-{args.problem}.csv"
    # rows of another prior length or engine from earlier runs stay beside this run's
    write_csv(out, keep_earlier(read_csv(out), rows, ("prior_steps", "engine")))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
