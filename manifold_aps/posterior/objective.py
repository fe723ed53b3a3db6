"""The shared distillation objective: prior log-density, likelihood weight and scoring.

What every engine's training objective builds on, whatever the engine: `DistillationObjective`
(the engine, the frozen prior, the simulated observations and the schedule, with the
log-likelihood of samples), `prior_log_prob` (exact for a Gaussian prior, the DSM ELBO for a
score prior), the likelihood warm-up `data_weight`, and `prior_signal_bank` (draws of the prior).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from manifold_aps.geometry import Domain
from manifold_aps.operators import LinearOperator, Mask
from manifold_aps.posterior.observations import SimulatedObservations
from manifold_aps.priors.gaussian import GaussianPrior
from manifold_aps.priors.likelihood import elbo

__all__ = ["DistillationObjective", "data_weight", "prior_log_prob", "prior_signal_bank"]


def prior_log_prob(
    prior, x: torch.Tensor, *, generator: torch.Generator | None = None, num_times: int = 1
) -> torch.Tensor:
    """`log p(x)` `(B,)` in physical units: exact for a `GaussianPrior`, the DSM ELBO otherwise."""
    if isinstance(prior, GaussianPrior):
        return prior.log_prob(x)
    return elbo(prior, x, num_times=num_times, generator=generator)


def data_weight(step: int, total: int, warmup_fraction: float) -> float:
    """Sigmoid warm-up of the likelihood weight.

    The weight is 0.5 at `warmup_fraction/2` of training and ~1 at `warmup_fraction`.
    """
    if warmup_fraction <= 0:
        return 1.0
    pivot = 0.5 * warmup_fraction * total
    rate = 12.0 / (warmup_fraction * total)
    return 1.0 / (1.0 + math.exp(-rate * (step - pivot)))


class DistillationObjective(nn.Module):
    """Shared part of the engines' training objectives for the one `Trainer`.

    Holds the engine (`model`, what the `Trainer` optimises and checkpoints), the frozen prior, the
    stream of simulated observations and the schedule; `log_likelihood` scores samples.

    Arguments:
        engine: the engine trained.
        prior: `GaussianPrior` or `ScorePrior` (frozen).
        observations: a `SimulatedObservations` stream.
        total_steps: length of training (for warm-up schedules).
        batch_size: global batch size.
        seed: seed of the per-step randomness.
    """

    def __init__(
        self,
        engine: nn.Module,
        prior,
        observations: SimulatedObservations,
        *,
        total_steps: int,
        batch_size: int,
        seed: int = 0,
    ):
        super().__init__()
        self.model = engine
        self.prior = prior
        for p in self.prior.parameters():
            p.requires_grad_(False)
        self.observations = observations
        self.total_steps, self.batch_size, self.seed = total_steps, batch_size, seed

    def log_likelihood(
        self, y: torch.Tensor, operator: LinearOperator, x: torch.Tensor
    ) -> torch.Tensor:
        r""":math:`\log p(y \mid x)` `(S*B,)` of samples `x` `(S, B, N, C)` (sample-major).

        In physical units.
        """
        s = x.shape[0]
        flat = x.reshape(-1, *x.shape[2:])
        rep_mask = operator.range_mask.repeat(s, 1, 1) if operator.range_mask is not None else None
        rep_op = Mask(operator.domain, rep_mask) if isinstance(operator, Mask) else operator
        return self.model.noise.log_likelihood(
            y.repeat(s, 1, 1).to(flat.dtype), rep_op(flat), rep_mask
        )


@torch.no_grad()
def prior_signal_bank(
    prior, domain: Domain, channels: int, n: int, *, steps: int = 200, seed: int = 0
) -> torch.Tensor:
    """`n` draws of the prior in physical units, `(n, N, C)` float32.

    Exact for a `GaussianPrior`; for a score prior, reverse-SDE samples of `steps` steps, drawn
    in batches of 16 with a progress bar (minutes on a mesh of a few thousand vertices).
    """
    g = torch.Generator().manual_seed(seed)
    if isinstance(prior, GaussianPrior):
        return prior.sample(n, channels=channels, rng=g).float()
    from tqdm.auto import tqdm

    from manifold_aps.priors.sampling import reverse_sde_sample

    draws = []
    for start in tqdm(range(0, n, 16), desc="prior draws", leave=False):
        m = min(16, n - start)
        z = reverse_sde_sample(prior, (m, domain.num_nodes, channels), steps=steps, generator=g)
        draws.append(prior.denormalize(z.sample).float())
    return torch.cat(draws)
