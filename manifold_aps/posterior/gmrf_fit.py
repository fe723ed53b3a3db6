r"""Maximum-likelihood hyper-parameters of a Whittle-Matérn GMRF, from complete or gappy fields.

Two sources, one likelihood: complete training fields (every node observed), or the observed
values of the gappy field(s) themselves (what a geostatistician does with one field). Either way
the objective is the exact log marginal likelihood of the observed values (`GMRFObservation`),
with the observation noise :math:`s^2` known and the nugget :math:`\eta^2` (white variance of the
truth) fitted; fields that share their observed nodes share one factorisation per evaluation.

Parameterised in :math:`(\log\rho, \log\sigma, \log\eta^2)` for :math:`\alpha \ge 2` (range and
marginal std: better conditioned than :math:`\kappa, \tau`),
:math:`(\log\kappa, \log\tau, \log\eta^2)` for :math:`\alpha = 1`; maximised by L-BFGS-B. Without
measurement noise (complete training fields, the nugget holding all white variance) the covariance
is :math:`\tau^{-2}(HQ_1^{-1}H^T + \lambda I)`, so the scale is profiled out in closed form and
only (range, :math:`\lambda = \eta^2\tau^2`) are searched: about half the likelihood evaluations.
Standard errors of the log-parameters come from the inverse of a central-difference Hessian.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from manifold_aps.geometry import Domain, SphereGrid
from manifold_aps.posterior.gmrf import GMRFObservation
from manifold_aps.priors.gmrf import MaternGMRF, matern_kappa_tau
from manifold_aps.sparse_cholesky import NotPositiveDefiniteError, uses_pardiso

__all__ = ["COARSE_START_NODES", "GMRFFit", "coarser_problem", "fit_gmrf"]

COARSE_START_NODES = 20_000  # above: start the search from a fit on the once-coarsened domain
TOL_NATS = 0.01  # the search stops when an iteration gains less log-likelihood than this


@dataclass
class GMRFFit:
    r"""Result of `fit_gmrf`.

    Attributes:
        prior: the fitted `MaternGMRF`.
        nugget: fitted :math:`\eta^2` (0 unless fitted).
        noise_std: the known observation noise std the fit assumed.
        log_likelihood: maximised log marginal likelihood (nats, all fields).
        params: the fitted parameters by name (`range`, `std` or `kappa`, `tau`; `nugget`).
        std_errors: standard errors of the natural logs of `params` (empty unless asked).
        source: ``"complete fields"`` or ``"observed values"``.
        num_fields, num_values: fields and observed values used.
        evaluations, seconds: likelihood evaluations and wall time of the fit.
    """

    prior: MaternGMRF
    nugget: float
    noise_std: float
    log_likelihood: float
    params: dict
    std_errors: dict = field(default_factory=dict)
    source: str = ""
    num_fields: int = 0
    num_values: int = 0
    evaluations: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        """One line: the parameters and the data they came from."""
        parts = ", ".join(f"{k} {v:.4g}" for k, v in self.params.items())
        return (
            f"GMRF alpha={self.prior.alpha} fitted to {self.source} ({self.num_fields} fields): "
            f"{parts}"
        )


def _groups(values: np.ndarray, observed: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """`[(node indices, values (B_g, n_obs))]`, one entry per distinct observed pattern."""
    if observed is None:
        return [(np.arange(values.shape[1]), values)]
    out: dict[bytes, tuple[np.ndarray, list]] = {}
    for row, mask in zip(values, observed, strict=True):
        idx = np.flatnonzero(mask)
        out.setdefault(idx.tobytes(), (idx, []))[1].append(row[idx])
    return [(idx, np.stack(rows)) for idx, rows in out.values()]


def fit_gmrf(
    domain: Domain,
    values,
    observed=None,
    *,
    alpha: int = 2,
    noise_std: float = 0.0,
    fit_nugget: bool = True,
    mean: float = 0.0,
    init: dict | None = None,
    std_errors: bool = False,
    progress: bool = False,
    threads: int | None = None,
) -> GMRFFit:
    r"""Fit a `MaternGMRF` (and a nugget) by maximum likelihood.

    Arguments:
        domain: the domain.
        values: fields `(B, N)` (or `(N,)`); entries where `observed` is False are ignored.
        observed: boolean `(B, N)`, True = observed; None = complete fields.
        alpha: 1, 2 or 3 (fixed; compare `log_likelihood` across alphas to choose).
        noise_std: known measurement noise std (signal units); with `fit_nugget=False` and
            `noise_std=0` on complete fields, the noise-free prior density is maximised.
        fit_nugget: fit the nugget :math:`\eta^2`.
        mean: the prior mean subtracted (a number or `(N,)`).
        init: starting values, keys `range`, `std` (or `kappa`, `tau` for alpha 1), `nugget`.
        std_errors: also compute standard errors (about 4 p^2 more evaluations, p parameters).
        progress: a tqdm bar over likelihood evaluations.
        threads: likelihood evaluations run at once (the forward-difference gradient's p + 1
            points; SuperLU releases the GIL), default the CPU count up to p + 1, or 1 from
            `PARDISO_MIN_NODES` nodes where PARDISO factors (with every core); 1 = serial.
            The result does not depend on it.

    Returns:
        a `GMRFFit`.
    """
    start = time.perf_counter()
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    n = domain.num_nodes
    if values.ndim != 2 or values.shape[1] != n:
        raise ValueError(f"values must have shape (B, N={n}), got {values.shape}")
    if observed is not None:
        observed = np.atleast_2d(np.asarray(observed, dtype=bool))
        if observed.shape != values.shape:
            raise ValueError(
                f"observed must have the shape of values {values.shape}, got {observed.shape}"
            )
        if not observed.any(axis=1).all():
            raise ValueError("every field needs at least one observed value")
    used = values if observed is None else values[observed]
    if not np.all(np.isfinite(used)):
        raise ValueError("the observed values contain NaN or infinity; hide them with `observed`")
    groups = _groups(values, observed)
    num_values = int(sum(v.size for _, v in groups))
    noise_var = float(noise_std) ** 2
    exact_density = observed is None and not fit_nugget and noise_var == 0
    template = MaternGMRF(domain, alpha=alpha, kappa=1.0, tau=1.0, mean=mean)

    centred = used - (np.mean(template.mean) if np.ndim(template.mean) == 0 else 0.0)
    spread = float(np.std(centred)) or 1.0
    init = dict(init or {})
    size = math.sqrt(domain.total_area)
    if observed is None and n > COARSE_START_NODES and not init and fit_nugget:
        init = _coarse_start(
            domain,
            values,
            alpha=alpha,
            noise_std=noise_std,
            mean=template.mean,
            progress=progress,
            threads=threads,
        )
    if exact_density and not {"range", "std", "kappa", "tau"} & init.keys():
        # without a nugget the profile fit is the exact optimum's neighbourhood; with one it is not
        # (a white nugget pulls the noise-free range towards the grid spacing: 215 km for 1000 km at
        # 0.5 deg)
        init.update(_profile_start(template, values, size))
    if alpha == 1:
        names = ["kappa", "tau"]
        x0 = [math.log(init.get("kappa", 5.0 / size)), math.log(init.get("tau", 1.0 / spread))]
    else:
        names = ["range", "std"]
        x0 = [math.log(init.get("range", size / 5)), math.log(init.get("std", spread))]
    if fit_nugget:
        names.append("nugget")
        x0.append(math.log(init.get("nugget", 0.01 * spread**2)))

    def unpack(theta):
        a, b = math.exp(theta[0]), math.exp(theta[1])
        kappa, tau = (a, b) if alpha == 1 else matern_kappa_tau(a, b, alpha)
        nugget = math.exp(theta[2]) if fit_nugget else 0.0
        return kappa, tau, nugget

    bar = tqdm(desc="GMRF fit (likelihood evaluations)", disable=not progress, unit="eval")
    evaluations = 0
    counting = threading.Lock()

    def count() -> None:
        nonlocal evaluations
        with counting:
            evaluations += 1
            bar.update(1)

    seen: dict = {}  # profiled evaluations by point: the optimum's full parameters are looked up

    def log_likelihood(theta) -> float:
        count()
        if not np.all(np.isfinite(theta)) or np.max(np.abs(theta)) > 60:
            return -np.inf
        kappa, tau, nugget = unpack(theta)
        prior = template.with_params(kappa=kappa, tau=tau)
        try:
            if exact_density:
                return float(prior.log_prob(values).sum())
            log_q = prior.log_det_precision()
            total = 0.0
            for idx, vals in groups:
                obs = GMRFObservation(prior, idx, noise_var, nugget)
                total += float(np.sum(obs.log_likelihood(vals, log_det_prior=log_q)))
            return total
        except NotPositiveDefiniteError:
            return -np.inf

    def profiled(phi) -> tuple[float, np.ndarray]:
        """Log-likelihood maximised over the scale, and the full parameters, at (shape, log lambda).

        With no measurement noise, Cov(y) = tau^-2 (H Q1^-1 H^T + lambda I) (Q1: the precision at
        tau = 1, lambda = nugget tau^2): the scale c = tau^-2 has the closed-form optimum q / n.
        """
        key = np.asarray(phi, dtype=np.float64).tobytes()
        if key in seen:
            return seen[key]
        count()
        if not np.all(np.isfinite(phi)) or np.max(np.abs(phi)) > 60:
            return -np.inf, np.array(x0)
        nu = alpha - 1
        kappa = math.exp(phi[0]) if alpha == 1 else math.sqrt(8 * nu) / math.exp(phi[0])
        lam = math.exp(phi[1])
        unit = template.with_params(kappa=kappa, tau=1.0)
        try:
            log_q = unit.log_det_precision()
            loglik, quad = 0.0, 0.0
            for idx, vals in groups:
                ll, q = GMRFObservation(unit, idx, 0.0, lam).likelihood_terms(
                    vals, log_det_prior=log_q
                )
                loglik, quad = loglik + float(np.sum(ll)), quad + float(np.sum(q))
        except NotPositiveDefiniteError:
            return -np.inf, np.array(x0)
        scale = quad / num_values  # tau^-2
        best = loglik + 0.5 * quad - 0.5 * num_values * math.log(scale) - 0.5 * num_values
        prior = template.with_params(kappa=kappa, tau=scale**-0.5)
        second = prior.tau if alpha == 1 else prior.std
        value = best, np.array([phi[0], math.log(second), math.log(lam * scale)])
        seen[key] = value
        return value

    # The objective is per value, so scipy's tolerances are per value: an iteration gaining less
    # than 1e-7 of |f| or a gradient under 1e-4 stops it. On a million values that is 0.1 nats and
    # 100 nats per unit of log-parameter (a 320k-vertex mesh stopped at twice the range), so both
    # are also capped in total nats (TOL_NATS per iteration, 1 nat per unit). The difference step
    # 1e-4 keeps the likelihood's rounding (~1e-3 nats on a million cells) out of the gradient;
    # its bias moves the optimum by ~5e-5 in log-parameters.
    options = {
        "maxiter": 200,
        "ftol": min(1e-7, TOL_NATS / num_values),
        "gtol": min(1e-4, 1.0 / num_values),
        "eps": 1e-4,
    }
    if fit_nugget and noise_var == 0:  # the scale has a closed form: two parameters left, not three
        _, tau0, nugget0 = unpack(np.array(x0))
        phi0 = np.array([x0[0], math.log(nugget0 * tau0**2)])

        def objective2(phi):
            value = profiled(phi)[0]
            return 1e300 if not np.isfinite(value) else -value / num_values

        res = _lbfgsb(objective2, phi0, options, _workers(n, threads))
        theta = profiled(res.x)[1]
    else:

        def objective(theta):
            value = log_likelihood(theta)
            return 1e300 if not np.isfinite(value) else -value / num_values

        res = _lbfgsb(objective, np.array(x0), options, _workers(n, threads))
        theta = res.x
    errors: dict = {}
    if std_errors:
        hess = _hessian(lambda t: -log_likelihood(t), theta)
        try:
            cov = np.linalg.inv(hess)
            errors = {name: float(math.sqrt(max(cov[i, i], 0.0))) for i, name in enumerate(names)}
        except np.linalg.LinAlgError:
            errors = {name: float("nan") for name in names}
    bar.close()
    kappa, tau, nugget = unpack(theta)
    prior = template.with_params(kappa=kappa, tau=tau)
    params = {name: math.exp(v) for name, v in zip(names, theta, strict=True)}
    return GMRFFit(
        prior=prior,
        nugget=nugget,
        noise_std=float(noise_std),
        log_likelihood=-float(res.fun) * num_values,
        params=params,
        std_errors=errors,
        source="complete fields" if observed is None else "observed values",
        num_fields=values.shape[0],
        num_values=num_values,
        evaluations=evaluations,
        seconds=time.perf_counter() - start,
    )


def _workers(num_nodes: int, threads: int | None) -> int | None:
    """Likelihood evaluations at once, for `_lbfgsb`.

    `threads` if given; else one where PARDISO factors (it threads over every core itself, and
    two evaluations at once would oversubscribe them); else None (p + 1 up to the CPU count).
    """
    if threads is not None:
        return threads
    return 1 if uses_pardiso(num_nodes) else None


def _lbfgsb(objective, x0: np.ndarray, options: dict, threads: int | None):
    """L-BFGS-B on `objective` with its forward-difference gradient evaluated in parallel.

    The gradient uses an absolute step `options["eps"]`, as scipy's own, and is evaluated at the
    p + 1 points at once on `threads` threads.
    """
    workers = min(x0.size + 1, os.cpu_count() or 1) if threads is None else max(1, int(threads))
    eps = options["eps"]

    opts = {k: v for k, v in options.items() if k != "eps"}
    # evaluations in parallel each run BLAS single-threaded (OpenBLAS's own threads on top of the
    # pool's oversubscribed the 2 cores: the demo's fits took 37 s instead of 13)
    limits = threadpool_limits(1) if workers > 1 else contextlib.nullcontext()
    with limits, ThreadPoolExecutor(workers) as pool:  # one pool for the whole search

        def value_and_gradient(x):
            points = [x] + [x + eps * np.eye(x.size)[i] for i in range(x.size)]
            values = (
                list(pool.map(objective, points)) if workers > 1 else [objective(p) for p in points]
            )
            steps = np.array([points[i + 1][i] - x[i] for i in range(x.size)])
            return values[0], (np.array(values[1:]) - values[0]) / steps

        return scipy.optimize.minimize(
            value_and_gradient, x0, jac=True, method="L-BFGS-B", options=opts
        )


def coarser_problem(domain: Domain, fields: np.ndarray, mean=0.0):
    """The same fields on about 4x fewer nodes, for cheap starting values or model choices.

    A latitude-longitude grid is subsampled (every other latitude and longitude: the values are
    the same field's, so range, std and nugget are nearly unbiased; 1-degree global grid, truth
    0.157 rad / 1.0 / 0.010: fitted 0.161 / 0.963 / 0.0108 on the 2-degree subgrid); other domains
    are pooled with `domain.coarsen()` (pooling smooths: a longer range, 0.25 rad for 0.155 at
    1 deg, and a nugget about 4x smaller).

    Returns:
        `(coarse domain, fields (B, N_coarse), mean, nugget factor)` (the factor turns a coarse
        nugget into a fine one), or None if the domain can be neither subsampled nor coarsened.
    """
    import torch

    if isinstance(domain, SphereGrid) and min(domain.shape) >= 8:
        coarse_domain = SphereGrid(domain.lat_deg[::2], domain.lon_deg[::2])
        coarse_fields = fields.reshape(fields.shape[0], *domain.shape)[:, ::2, ::2].reshape(
            fields.shape[0], -1
        )
        coarse_mean = (
            mean if np.ndim(mean) == 0 else np.asarray(mean).reshape(domain.shape)[::2, ::2].ravel()
        )
        return coarse_domain, coarse_fields, coarse_mean, 1.0
    try:
        step = domain.coarsen()
    except (ValueError, NotImplementedError):
        return None
    pool = step.pool_signal
    coarse_fields = pool(torch.from_numpy(np.ascontiguousarray(fields.T))[None]).numpy()[0].T
    coarse_mean = (
        mean
        if np.ndim(mean) == 0
        else pool(torch.from_numpy(np.asarray(mean)[None, :, None]))[0, :, 0].numpy()
    )
    return step.domain, coarse_fields, coarse_mean, domain.num_nodes / step.domain.num_nodes


def _coarse_start(
    domain: Domain,
    fields: np.ndarray,
    *,
    alpha: int,
    noise_std: float,
    mean,
    progress: bool,
    threads: int | None,
) -> dict:
    """Starting values from a fit to `coarser_problem`.

    Range and std carry over between resolutions, the nugget with the problem's factor.

    (A BFGS search at the fine level started from the coarse fit's curvature was tried and dropped:
    no fewer evaluations at 1 degree, more at 0.5, and at 0.25 it stopped 41 nats short.)
    """
    coarser = coarser_problem(domain, fields, mean)
    if coarser is None:
        return {}
    coarse_domain, coarse_fields, coarse_mean, nugget_factor = coarser
    coarse = fit_gmrf(
        coarse_domain,
        coarse_fields,
        alpha=alpha,
        noise_std=noise_std,
        mean=coarse_mean,
        progress=progress,
        threads=threads,
    )
    start = {k: v for k, v in coarse.params.items() if k != "nugget"}
    start["nugget"] = max(coarse.nugget, 1e-12) * nugget_factor
    return start


def _profile_start(template: MaternGMRF, fields: np.ndarray, size: float) -> dict:
    r"""A cheap first fit to complete fields without nugget.

    The range is found by a 1-D search, :math:`\tau` in closed form.

    With :math:`Q = \tau^2\tilde Q(\kappa)` the noise-free log-likelihood of `B` fields is maximised
    over :math:`\tau` by :math:`\tau^2 = BN / \sum_b r_b^T\tilde Q r_b`; what remains needs only the
    factorisation of `K` (a 5- to 7-point stencil) per range tried.
    """
    n = template.domain.num_nodes
    resid = fields - np.broadcast_to(template.mean, (n,))
    nu = template.alpha - 1
    spacing = size / math.sqrt(n)

    def kappa_of(log_range: float) -> float:
        return (math.sqrt(8 * nu) if nu else 1.0) / math.exp(log_range)

    def profile(log_range: float) -> tuple[float, float]:
        prior = template.with_params(kappa=kappa_of(log_range), tau=1.0)
        quad = float(np.einsum("bn,bn->", resid, (prior.precision() @ resid.T).T))
        tau2 = resid.size / quad
        loglik = (
            0.5 * fields.shape[0] * (n * math.log(tau2) + prior.log_det_precision())
            - 0.5 * resid.size
        )
        return -loglik, tau2

    res = scipy.optimize.minimize_scalar(
        lambda r: profile(r)[0] / resid.size,
        bounds=(math.log(2 * spacing), math.log(2 * size)),
        method="bounded",
        options={"xatol": 0.02},
    )
    kappa, tau = kappa_of(res.x), math.sqrt(profile(res.x)[1])
    if nu == 0:
        return {"kappa": kappa, "tau": tau}
    prior = template.with_params(kappa=kappa, tau=tau)
    return {"range": prior.range, "std": prior.std}


def _hessian(func, theta: np.ndarray, step: float = 1e-3) -> np.ndarray:
    """Central-difference Hessian of a scalar function of `theta` `(p,)`, `(p, p)`."""
    p = theta.size
    hess = np.zeros((p, p))
    f0 = func(theta)
    for i in range(p):
        ei = np.zeros(p)
        ei[i] = step
        hess[i, i] = (func(theta + ei) - 2 * f0 + func(theta - ei)) / step**2
        for j in range(i + 1, p):
            ej = np.zeros(p)
            ej[j] = step
            hess[i, j] = hess[j, i] = (
                func(theta + ei + ej)
                - func(theta + ei - ej)
                - func(theta - ei + ej)
                + func(theta - ei - ej)
            ) / (4 * step**2)
    return hess
