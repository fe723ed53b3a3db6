r"""The covariance of :math:`z_0` given :math:`z_t`, fitted once per prior for DAPS's inner step.

DAPS (`manifold_aps.posterior.daps`) draws :math:`z_0` at each level from a Gaussian surrogate of
:math:`p(z_0 \mid z_t)` times the likelihood. With the *exact* conditional every level maps the
posterior's marginal at `t` to the next level's, so the sampler is exact at any number of levels
(`benchmarks/daps_exact_covariance.py`: on the HEALPix-8 yardstick it matches exact samples at
K = 5). The default surrogate is white, :math:`N(D(z_t), r_t^2 I)`; this module supplies a
structured one,

.. math::
    \mathrm{Cov}[z_0 \mid z_{t_i}] \approx U\,\mathrm{diag}(c_i)\,U^T + w_i\,(I - U U^T)
    \quad\text{per channel},

with `U` the leading `m` empirical orthogonal functions (EOFs, principal components) of the
standardised training signals and :math:`c_i`, :math:`w_i` the denoiser's mean squared error
along each EOF and off them, at each level :math:`t_i`:

.. math::
    c_{i,k} = E\big[(u_k^T (z_0 - D(\alpha_{t_i} z_0 + \sigma_{t_i}\epsilon)))^2\big],

estimated by Monte Carlo over training signals and noise draws (`fit_inner_covariance`: `draws`
network passes per level, once per prior and level grid; no ground truth of any posterior, no
observation operator: the fit serves every operator). This is the average of
:math:`\mathrm{Cov}[z_0 \mid z_t]` over :math:`z_t` in that basis; for a Gaussian prior whose
covariance has eigenvectors `U` it is exact (`exact_inner_covariance`), the closed form
:math:`c = \lambda\sigma_t^2 / (\alpha_t^2\lambda + \sigma_t^2)` for eigenvalue :math:`\lambda`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manifold_aps.posterior.dps import DPS_CLIP
from manifold_aps.posterior.mgdm import prior_dtype
from manifold_aps.priors.sampling import time_grid

__all__ = ["BASES", "InnerCovariance", "exact_inner_covariance", "fit_inner_covariance"]

BASES = ("eof", "laplacian")  # the bases `fit_inner_covariance` builds itself


@dataclass
class InnerCovariance:
    r"""A low-rank-plus-white covariance of :math:`z_0 \mid z_{t_i}` at each DAPS level.

    Attributes:
        timesteps: the levels `(K,)`, float64, from 1 down to `t_min` (`DAPS.timesteps()`).
        basis: `U`, `(C, N, m)` orthonormal columns per channel (standardised units).
        variances: `c`, `(K, C, m)`, the variance along each column at each level.
        rest: `w`, `(K, C)`, the variance per direction orthogonal to the columns.
    """

    timesteps: torch.Tensor
    basis: torch.Tensor
    variances: torch.Tensor
    rest: torch.Tensor

    def __post_init__(self):
        k = self.timesteps.shape[0]
        c, n, m = self.basis.shape
        if self.variances.shape != (k, c, m) or self.rest.shape != (k, c):
            raise ValueError(
                f"variances {tuple(self.variances.shape)} and rest {tuple(self.rest.shape)} must "
                f"be ({k}, {c}, {m}) and ({k}, {c}) for {k} levels and a basis {(c, n, m)}"
            )
        if not (self.variances > 0).all() or not (self.rest > 0).all():
            raise ValueError("the inner covariance's variances must all be > 0")

    @property
    def rank(self) -> int:
        """`m`, the number of basis columns per channel."""
        return self.basis.shape[2]

    def state_dict(self) -> dict:
        """Plain tensors, for `torch.save` (`from_state_dict` reads them back)."""
        return {
            "timesteps": self.timesteps,
            "basis": self.basis,
            "variances": self.variances,
            "rest": self.rest,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> InnerCovariance:
        """The inverse of `state_dict`."""
        return cls(**{key: state[key] for key in ("timesteps", "basis", "variances", "rest")})


def eof_basis(z: torch.Tensor, rank: int) -> torch.Tensor:
    """The leading `rank` EOFs of signals `z` `(M, N, C)` about their mean: `(C, N, rank)`.

    `rank` is capped at `M - 1` and `N` (the centred signals span at most `M - 1` directions).
    """
    centred = z - z.mean(0, keepdim=True)
    rank = min(rank, z.shape[0] - 1, z.shape[1])
    if rank < 1:
        raise ValueError(f"an EOF basis needs >= 2 signals, got {z.shape[0]}")
    columns = []
    for ch in range(z.shape[2]):
        _, _, vh = torch.linalg.svd(centred[..., ch].double(), full_matrices=False)
        columns.append(vh[:rank].T)
    return torch.stack(columns)


def laplacian_basis(domain, rank: int) -> torch.Tensor:
    """The `rank` lowest Laplace-Beltrami eigenvectors of `domain`, Euclidean-orthonormal: `(N, m)`.

    `domain.eigenbasis` is mass-orthonormal; a QR makes the columns orthonormal in the plain
    inner product the inner Gaussian is written in (same span, float64).
    """
    _, vecs = domain.eigenbasis(min(rank, domain.num_nodes))
    return torch.linalg.qr(vecs.double())[0]


@torch.no_grad()
def fit_inner_covariance(
    prior,
    signals: torch.Tensor,
    *,
    steps: int = 20,
    t_min: float = 1e-3,
    rank: int = 128,
    basis: str | torch.Tensor = "eof",
    draws: int = 256,
    clip: float | None = DPS_CLIP,
    batch: int = 64,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> InnerCovariance:
    r"""Fit :math:`\mathrm{Cov}[z_0 \mid z_{t_i}]` at DAPS's `steps` levels on training signals.

    Arguments:
        prior: a `ScorePrior` or `GaussianPrior` (its `eps`, `sde`, `normalize`).
        signals: training signals `(M, N, C)` in physical units (never held-out ones); the EOFs
            are theirs and each Monte Carlo draw denoises one of them, picked at random.
        steps: `K`, the DAPS levels (`DAPS(steps=)`).
        t_min: the last level (`DAPS(t_min=)`).
        rank: `m`, the basis columns per channel (EOFs: at most `M - 1` and `N`).
        basis: "eof", the leading EOFs of `signals` (they follow the data, also where it is not
            stationary, but `M` signals estimate only about `M` of them); "laplacian", the `m`
            lowest Laplace-Beltrami eigenvectors of the prior's domain, orthonormalised (exact
            for an isotropic Gaussian prior, and not fitted to the signals); or orthonormal
            columns `(C, N, m)` or `(N, m)` (shared by the channels) in standardised units.
        draws: denoised signals per level; the variances' relative error is about
            :math:`\sqrt{2/\text{draws}}`.
        clip: the clamp of the denoised estimate in standardised units (DAPS's `clip`).
        batch: signals per network pass.
        generator: seeds the draws (reproducible fits).
        progress: a progress bar over the levels.

    Returns:
        an `InnerCovariance` in the prior's dtype (float64 for a `GaussianPrior`).
    """
    if signals.ndim != 3 or signals.shape[0] < 2:
        raise ValueError(f"signals must be (M >= 2, N, C), got {tuple(signals.shape)}")
    if not isinstance(draws, int) or draws < 2 or batch < 1:
        raise ValueError(f"draws must be an integer >= 2 and batch >= 1, got {draws}, {batch}")
    dtype = prior_dtype(prior, signals)
    z = prior.normalize(signals.to(dtype))
    if isinstance(basis, str):
        if basis not in BASES:
            raise ValueError(f"basis must be one of {list(BASES)} or a tensor, got {basis!r}")
        if basis == "eof":
            basis = eof_basis(z, rank)  # (C, N, m) float64
        else:
            basis = laplacian_basis(prior.domain, rank).expand(z.shape[2], -1, -1)
    else:
        basis = basis.double()
        basis = basis.expand(z.shape[2], -1, -1) if basis.ndim == 2 else basis
        gram = basis.transpose(1, 2) @ basis
        if basis.shape[:2] != (z.shape[2], z.shape[1]) or not torch.allclose(
            gram, torch.eye(basis.shape[2], dtype=torch.float64).expand_as(gram), atol=1e-6
        ):
            raise ValueError(
                f"basis must be orthonormal columns (C={z.shape[2]}, N={z.shape[1]}, m), got "
                f"{tuple(basis.shape)}"
            )
    u = basis.to(dtype)
    ts = time_grid(steps - 1, t_min)
    variances, rest = [], []
    levels = ts
    if progress:
        from tqdm.auto import tqdm

        levels = tqdm(ts, desc="inner covariance", unit="level")
    sde, n = prior.sde, z.shape[1]
    for t in levels:
        a, s = sde.scale_t(t).to(dtype), sde.sigma_t(t).to(dtype)
        along = torch.zeros(basis.shape[0], basis.shape[2], dtype=torch.float64)
        total = torch.zeros(basis.shape[0], dtype=torch.float64)
        done = 0
        while done < draws:
            b = min(batch, draws - done)
            z0 = z[torch.randint(0, z.shape[0], (b,), generator=generator)]
            zt = a * z0 + s * torch.randn(z0.shape, generator=generator, dtype=dtype)
            centre = (zt - s * prior.eps(zt, t.to(dtype))) / a
            if clip is not None:
                centre = centre.clamp(-clip, clip)
            err = z0 - centre  # (b, N, C)
            coef = torch.einsum("bnc,cnk->bck", err, u).double()
            along += (coef**2).sum(0)
            total += (err.double() ** 2).sum((0, 1))
            done += b
        c = along / draws
        if basis.shape[2] < n:
            off = (total / draws - c.sum(1)) / (n - basis.shape[2])
        else:  # the basis spans every direction: w plays no part; a typical c conditions best
            off = c.median(1).values
        tiny = 1e-12 * (1 + c.max())
        variances.append(c.clamp_min(tiny))
        rest.append(off.clamp_min(tiny))
    return InnerCovariance(
        ts, basis.to(dtype), torch.stack(variances).to(dtype), torch.stack(rest).to(dtype)
    )


def exact_inner_covariance(prior, *, steps: int = 20, t_min: float = 1e-3) -> InnerCovariance:
    r"""The exact :math:`\mathrm{Cov}[z_0 \mid z_{t_i}]` of a `GaussianPrior` (one channel).

    In the eigenbasis of its covariance (all `N` columns, so `rest` plays no part):
    :math:`c_{i,k} = \lambda_k\sigma_{t_i}^2 / (\alpha_{t_i}^2\lambda_k + \sigma_{t_i}^2)`.
    """
    lam = prior.cov_eigenvalues.double().clamp_min(1e-12)
    u = prior.cov_eigenvectors.double()
    ts = time_grid(steps - 1, t_min)
    a2 = prior.sde.scale_t(ts).double() ** 2
    s2 = prior.sde.sigma_t(ts).double() ** 2
    c = lam * s2[:, None] / (a2[:, None] * lam + s2[:, None])  # (K, N)
    return InnerCovariance(ts, u[None], c[:, None], c.min(1).values[:, None])
