r"""Invertible layers of the conditional flow on signals `(B, N, C)`.

Every layer maps `x -> y` with `forward(x, cond) -> (y, log|det dy/dx|)` and back with
`inverse(y, cond) -> (x, log|det dx/dy|)`; log-determinants are per batch element, `(B,)`, with
respect to Lebesgue measure on the node values. `cond` is a `FlowCondition`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import geoopt
import torch
from torch import nn

from manifold_aps.flows.conditioner import GraphConditioner, add_per_condition
from manifold_aps.nn import DomainTensors

__all__ = [
    "ActNorm",
    "AffineCoupling",
    "AnchorAffine",
    "CoarseCoupling",
    "ConditionalAffine",
    "FlowCondition",
    "SpectralCoupling",
    "SpectralScale",
    "StiefelChannelMix",
    "bounded_log_scale",
]

LOG_SCALE_BOUND = 6.0


def bounded_log_scale(raw: torch.Tensor, bound: float = LOG_SCALE_BOUND) -> torch.Tensor:
    """`bound * tanh(raw / bound)`: the identity near 0, never beyond +-bound (stable training)."""
    return bound * torch.tanh(raw / bound)


@dataclass
class FlowCondition:
    """What a conditional layer sees besides the signal.

    Everything is stored once per distinct condition (`B0` rows); a batch of signals holds
    `repeats` samples of each condition, sample-major (`B = repeats * B0` rows), and layers tile
    or broadcast the per-condition tensors to it, so drawing many samples of one observation
    never copies its features.

    Attributes:
        features: per-node conditioning features `(B0, N, F)` (e.g. A^T y, coverage, an estimate).
        context: a global vector per condition `(B0, D)` (e.g. observed fraction, noise level).
        graph: the domain's `DomainTensors`.
        anchor_shift, anchor_log_scale: optional Gaussian anchor `(B0, N, C)` (see `AnchorAffine`).
        repeats: samples per condition in the signal batch.
        anchor_cholesky: optional Cholesky factors `(B0, C, N, N)` of the anchor's precision.
        memo: None, or a dictionary in which layers keep what they compute from the condition
            alone (`once`), so that a draw made in several chunks of samples runs each
            conditioner once (`ConditionalFlow.sample_and_log_prob` sets it, without autograd).
    """

    features: torch.Tensor
    context: torch.Tensor
    graph: DomainTensors
    anchor_shift: torch.Tensor | None = None
    anchor_log_scale: torch.Tensor | None = None
    repeats: int = 1
    anchor_cholesky: torch.Tensor | None = None
    memo: dict | None = None

    def repeat(self, n: int) -> FlowCondition:
        """The condition for `n` samples of each of its conditions (no tensor is copied)."""
        return dataclasses.replace(self, repeats=self.repeats * n)

    def tile(self, t: torch.Tensor) -> torch.Tensor:
        """A per-condition tensor `(B0, ...)` repeated for the signal batch: `(repeats*B0, ...)`."""
        return t if self.repeats == 1 else t.repeat(self.repeats, *([1] * (t.dim() - 1)))

    def per_condition(self, fn):
        """Evaluate `fn(features, context)` once per distinct condition and tile it over repeats.

        Layers whose parameters depend on the condition only (not on the signal) use it, so `n`
        samples of one observation cost one conditioner pass, not `n`.
        """
        return self.tile(fn(self.features, self.context))

    def once(self, layer: nn.Module, fn):
        """`fn()`, a function of the condition only, computed once per `memo` for `layer`."""
        if self.memo is None:
            return fn()
        if id(layer) not in self.memo:
            self.memo[id(layer)] = fn()
        return self.memo[id(layer)]

    def per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """A signal batch `(repeats*B0, ...)` as the view `(repeats, B0, ...)` (no copy).

        A per-condition tensor `(B0, ...)` then broadcasts against it, so layers whose parameters
        depend on the condition only never tile them over the samples.
        """
        return x.view(self.repeats, -1, *x.shape[1:])


class AnchorAffine(nn.Module):
    r"""Parameter-free Gaussian anchor carried by the condition; the last layer of the flow.

    Mean-field: :math:`y = \mu + x\,e^{\ell}`. Full (with `anchor_cholesky` `L`, the Cholesky
    factor of a posterior precision :math:`P = LL^T`): :math:`y = \mu + L^{-T}(x\,e^{\ell})`, so
    that a base sample of the right scale becomes an exact draw of :math:`N(\mu, P^{-1})`;
    :math:`\log|\det| = \sum\ell - \sum\log\mathrm{diag}\,L`. The engine passes a first estimate
    of the posterior (e.g. `TikhonovEstimate`), so a fresh flow starts at that Gaussian and the
    learned layers only refine it. Without an anchor it is the identity.
    """

    @staticmethod
    def _tri(cond, v, transpose_solve: bool):
        """Apply L^{-T} (solve) or L^T (multiply) per channel.

        Repeats become extra right-hand sides, so the factors are never copied per sample.
        """
        chol = cond.anchor_cholesky.to(v.dtype)  # (B0, C, N, N)
        b0, c, n = chol.shape[0], v.shape[2], v.shape[1]
        cols = v.reshape(-1, b0, n, c).permute(1, 3, 2, 0)  # (B0, C, N, R)
        if transpose_solve:
            out = torch.linalg.solve_triangular(chol.transpose(-1, -2), cols, upper=True)
        else:
            out = chol.transpose(-1, -2) @ cols
        return out.permute(3, 0, 2, 1).reshape(v.shape)

    def _logdet_chol(self, cond, x):
        if cond.anchor_cholesky is None:
            return x.new_zeros(x.shape[0])
        ld = torch.log(torch.diagonal(cond.anchor_cholesky.to(x.dtype), dim1=-2, dim2=-1)).sum(
            (1, 2)
        )
        return ld.repeat(x.shape[0] // ld.shape[0])

    def forward(self, x, cond):
        """`(y, log|det dy/dx|)`: `x` `(B, N, C)` moved to the anchor's Gaussian; `(B,)`."""
        if cond.anchor_shift is None:
            return x, x.new_zeros(x.shape[0])
        ls = cond.anchor_log_scale.to(x.dtype)  # (B0, N, C), broadcast over the samples
        v = (cond.per_sample(x) * torch.exp(ls)).view(x.shape)
        if cond.anchor_cholesky is not None:
            v = self._tri(cond, v, transpose_solve=True)
        return add_per_condition(v, cond.anchor_shift.to(x.dtype)), cond.tile(
            ls.sum((1, 2))
        ) - self._logdet_chol(cond, x)

    def inverse(self, y, cond):
        """`(x, log|det dx/dy|)`: the inverse of `forward` for `y` `(B, N, C)`."""
        if cond.anchor_shift is None:
            return y, y.new_zeros(y.shape[0])
        ls = cond.anchor_log_scale.to(y.dtype)  # (B0, N, C)
        v = add_per_condition(y, -cond.anchor_shift.to(y.dtype))
        if cond.anchor_cholesky is not None:
            v = self._tri(cond, v, transpose_solve=False)
        x = (cond.per_sample(v) * torch.exp(-ls)).view(y.shape)
        return x, -cond.tile(ls.sum((1, 2))) + self._logdet_chol(cond, y)


class ConditionalAffine(nn.Module):
    r"""Elementwise :math:`y = x\,e^{s(c)} + t(c)`, `s, t` from a conditioner of the features only.

    Arguments:
        channels: `C`.
        features: `F`.
        context_dim: `D`.
        width, depth: conditioner size.
    """

    def __init__(
        self, channels: int, features: int, context_dim: int, width: int = 32, depth: int = 2
    ):
        super().__init__()
        self.net = GraphConditioner(features, 2 * channels, context_dim, width, depth)
        self.channels = channels

    def _params(self, cond: FlowCondition):
        """Log-scale and shift `(B0, N, C)`, once per condition (broadcast over its samples)."""

        def params():
            s, t = self.net(cond.features, cond.context, cond.graph).split(self.channels, dim=-1)
            return bounded_log_scale(s), t

        return cond.once(self, params)

    def forward(self, x, cond):
        """`(y, log|det dy/dx|)` for `x` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        s, t = self._params(cond)
        y = cond.per_sample(x) * torch.exp(s) + t
        return y.view(x.shape), cond.tile(s.sum((1, 2)))

    def inverse(self, y, cond):
        """`(x, log|det dx/dy|)` for `y` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        s, t = self._params(cond)
        x = (cond.per_sample(y) - t) * torch.exp(-s)
        return x.view(y.shape), -cond.tile(s.sum((1, 2)))


class _PartitionLayer(nn.Module):
    """Shared part of the couplings over a node partition.

    It holds the `part` buffer (nodes transformed), builds the conditioner input from the
    untouched nodes, and restricts outputs to `part`.
    """

    def __init__(self, part: torch.Tensor):
        super().__init__()
        self.register_buffer("part", part.bool().clone())

    def untouched_input(self, x: torch.Tensor) -> torch.Tensor:
        r""":math:`[x \odot 1_a, 1_a]` `(B, N, C + 1)`: untouched nodes' values and indicator."""
        keep = (~self.part).to(x.dtype)[None, :, None]
        return torch.cat([x * keep, keep.expand(x.shape[0], -1, 1)], dim=-1)

    def on_part(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounded log-scale and shift, zero outside `part`."""
        on = self.part.to(s.dtype)[None, :, None]
        return bounded_log_scale(s) * on, t * on


class _Coupling(_PartitionLayer):
    """Shared forward/inverse of the affine couplings.

    `_params(x, cond)` returns `(s, t)`, zero on the untouched nodes and computed from them only,
    so the same call serves both ways.
    """

    def forward(self, x, cond):
        s, t = self._params(x, cond)
        return x * torch.exp(s) + t, s.sum((1, 2))

    def inverse(self, y, cond):
        s, t = self._params(y, cond)  # the untouched nodes are the same in x and y
        return (y - t) * torch.exp(-s), -s.sum((1, 2))


class AffineCoupling(_Coupling):
    r"""Affine coupling over a node partition: nodes in `part` are transformed given the others.

    :math:`y_b = x_b e^{s(x_a, c)} + t(x_a, c)`, :math:`y_a = x_a`, with the conditioner a graph
    network of :math:`[x \odot 1_a, 1_a, c]`, so each transformed node sees its neighbours' values
    (diffusion convolutions) and the whole field (spectral filters). The features' part of the first
    linear layer is computed once per condition and broadcast over the samples.

    Arguments:
        part: boolean `(N,)`, the nodes transformed by this layer.
        channels, features, context_dim, width, depth: as `ConditionalAffine`.
    """

    def __init__(
        self,
        part: torch.Tensor,
        channels: int,
        features: int,
        context_dim: int,
        width: int = 32,
        depth: int = 2,
    ):
        super().__init__(part)
        self.net = GraphConditioner(channels + 1, 2 * channels, context_dim, width, depth)
        # the features' share of the first linear layer, computed once per condition
        self.lift_features = nn.Linear(features, width, bias=False)
        self.channels = channels

    def _params(self, x, cond):
        static = self.lift_features(cond.features.to(x.dtype))
        out = self.net(self.untouched_input(x), cond.tile(cond.context), cond.graph, static=static)
        return self.on_part(*out.split(self.channels, dim=-1))


class CoarseCoupling(_Coupling):
    r"""Affine coupling whose conditioner runs on a coarser level of the domain's hierarchy.

    The untouched nodes' values and the features are pooled to the coarse domain of a
    `Coarsening` (mass-weighted means over clusters), a `GraphConditioner` on the coarse graph
    maps them to `(s, t)`, which are unpooled (constant over each cluster) to the transformed
    nodes. Long-range dependence at a fraction of the cost: the multiscale layers of the flow
    (`FlowConfig(levels=...)`). Exact inverse and log-determinant as for `AffineCoupling`.

    Arguments:
        part: boolean `(N,)`, the nodes transformed by this layer.
        channels, features, context_dim, width, depth: as `AffineCoupling`.
        coarsening: a `Coarsening` of the domain (`Domain.hierarchy`; compose levels beforehand).
        coarse_graph: the `DomainTensors` of `coarsening.domain` (shared by the layers of a level).
    """

    def __init__(
        self,
        part: torch.Tensor,
        channels: int,
        features: int,
        context_dim: int,
        coarsening,
        coarse_graph: DomainTensors,
        width: int = 32,
        depth: int = 2,
    ):
        super().__init__(part)
        from manifold_aps.geometry.domain import sparse_to_torch

        self.channels = channels
        self.coarse_graph = coarse_graph
        unpool = coarsening.unpool.tocsr()
        if not (unpool.getnnz(axis=1) == 1).all():
            raise ValueError(
                "CoarseCoupling needs an unpooling that copies one coarse node to each fine node"
            )
        self.register_buffer(
            "pool", sparse_to_torch(coarsening.pool, torch.float64), persistent=False
        )
        self.register_buffer(
            "unpool_index", torch.as_tensor(unpool.indices, dtype=torch.long), persistent=False
        )
        self.net = GraphConditioner(channels + 1, 2 * channels, context_dim, width, depth)
        self.lift_features = nn.Linear(features, width, bias=False)

    def _pool(self, h):
        """`(B, N, F)` -> `(B, Nc, F)`, mass-weighted cluster means (one sparse product)."""
        b, n, f = h.shape
        flat = h.transpose(0, 1).reshape(n, b * f)
        return torch.sparse.mm(self.pool.to(h.dtype), flat).reshape(-1, b, f).transpose(0, 1)

    def _params(self, x, cond):
        static = self.lift_features(self._pool(cond.features.to(x.dtype)))
        out = self.net(
            self._pool(self.untouched_input(x)),
            cond.tile(cond.context),
            self.coarse_graph,
            static=static,
        )
        return self.on_part(*out[:, self.unpool_index].split(self.channels, dim=-1))


class SpectralCoupling(_Coupling):
    r"""Affine coupling over a node partition whose per-sample work is two small matrix products.

    :math:`y_b = x_b e^{s} + t`, :math:`y_a = x_a`, with, at node `n` and channel `c`,

    .. math::
        (s, t)_{n} = U_n(c)\,h + v_n(c), \qquad
        h = \mathrm{MLP}\big(\Phi_K^T M (x \odot 1_a),\ \text{context}\big) \in \mathbb R^{w}:

    `h` summarises the untouched nodes by their `K` lowest Laplace-Beltrami coefficients (one
    `(N, K)` product per sample), and the per-node loadings `U` `(N, 2C, w)` and offsets `v` come
    from a `GraphConditioner` of the features run once per condition, so `n` samples of one
    observation cost one graph network and `n` cheap passes. It couples nodes through the smooth
    part of the field only (the graph `AffineCoupling` also sees neighbours' values); it is the
    coupling of the flow's fast configuration (`FlowConfig(coupling="spectral")`). The loadings
    start at zero (the layer starts as the identity) and the MLP at random (so gradients reach
    `U`).

    Arguments:
        part: boolean `(N,)`, the nodes transformed by this layer.
        channels, features, context_dim: as `ConditionalAffine`.
        num_modes: `K`, at most the modes of the condition's `DomainTensors`.
        width: `w`, size of the summary `h` and of the conditioner.
        depth: residual blocks of the conditioner.
    """

    def __init__(
        self,
        part: torch.Tensor,
        channels: int,
        features: int,
        context_dim: int,
        num_modes: int,
        width: int = 16,
        depth: int = 1,
    ):
        super().__init__(part)
        self.channels, self.num_modes, self.width = channels, num_modes, width
        self.summary = nn.Sequential(
            nn.Linear(num_modes * channels + context_dim, 2 * width),
            nn.SiLU(),
            nn.Linear(2 * width, width),
            nn.Tanh(),
        )
        self.loadings = GraphConditioner(
            features, 2 * channels * (width + 1), context_dim, width, depth
        )

    def _part_params(self, x, cond):
        """Log-scale and shift `(R, B0, P, C)` at the `P` transformed nodes only, and their indices.

        Computed on the transformed nodes alone (the untouched ones keep their values), so the
        per-sample work is one `(N, K)` product and a few passes over half the nodes.
        """
        k = self.num_modes

        def condition_terms():  # what depends on the condition and the layer, not on x
            untouched = (~self.part).to(x.dtype)
            # the untouched nodes' coefficients: the indicator folded into the analysis operator
            masked_analysis = cond.graph.analysis[:k].to(x.dtype) * untouched  # (K, N)
            index = torch.nonzero(self.part).squeeze(1)  # (P,)
            load = self.loadings(cond.features.to(x.dtype), cond.context.to(x.dtype), cond.graph)
            b0 = load.shape[0]  # (B0, P, 2C, w + 1): the loadings at the transformed nodes
            load = load[:, index].reshape(b0, index.numel(), 2 * self.channels, self.width + 1)
            return masked_analysis, index, load

        masked_analysis, index, load = cond.once(self, condition_terms)
        coef = torch.einsum("kn,bnc->bkc", masked_analysis, x)  # (B, K, C)
        h = self.summary(
            torch.cat([coef.flatten(1), cond.tile(cond.context).to(x.dtype)], dim=1)
        )  # (B, w)
        b0 = load.shape[0]
        out = (
            torch.einsum("bpjw,rbw->rbpj", load[..., :-1], h.reshape(-1, b0, self.width))
            + load[..., -1]
        )  # (R, B0, P, 2C)
        s, t = out.split(self.channels, dim=-1)
        return bounded_log_scale(s), t, index

    def forward(self, x, cond):
        """`(y, log|det dy/dx|)` for `x` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        s, t, index = self._part_params(x, cond)
        xs = x.view(*s.shape[:2], *x.shape[1:])
        y = xs.index_copy(2, index, xs.index_select(2, index) * torch.exp(s) + t)
        return y.view(x.shape), s.sum((2, 3)).reshape(-1)

    def inverse(self, y, cond):
        """`(x, log|det dx/dy|)` for `y` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        s, t, index = self._part_params(y, cond)  # the untouched nodes are the same in x and y
        ys = y.view(*s.shape[:2], *y.shape[1:])
        x = ys.index_copy(2, index, (ys.index_select(2, index) - t) * torch.exp(-s))
        return x.view(y.shape), -s.sum((2, 3)).reshape(-1)


class SpectralScale(nn.Module):
    r"""Rescale the `K` lowest Laplace-Beltrami modes of the signal: a global, cheap, exact layer.

    :math:`y = x + \Phi\big((d - 1)\odot\Phi^T M x\big)`, :math:`d = e^{g(\lambda_k, c)} > 0`: the
    component of `x` in the span of the first `K` eigenfunctions is scaled mode by mode, the
    M-orthogonal rest is unchanged, so :math:`\log|\det| = C' \sum_k \log d_k` exactly (summed over
    channels) and the inverse replaces `d` by `1/d`. It gives the flow long-range correlations
    (smooth fields) in one step.

    Arguments:
        channels: `C`.
        context_dim: `D`.
        hidden: width of the MLP of `g`.
    """

    def __init__(self, channels: int, context_dim: int, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1 + context_dim, hidden), nn.SiLU(), nn.Linear(hidden, channels)
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _log_d(self, cond, dtype):
        lam = torch.log1p(cond.graph.eigenvalues.to(dtype))

        def fn(features, context):
            b, k = context.shape[0], lam.shape[0]
            feats = torch.cat(
                [
                    lam[None, :, None].expand(b, k, 1),
                    context[:, None, :].to(dtype).expand(-1, k, -1),
                ],
                dim=-1,
            )
            return bounded_log_scale(self.net(feats))  # (B, K, C)

        return cond.per_condition(fn)

    def _scale(self, x, cond, sign):
        log_d = sign * self._log_d(cond, x.dtype)
        coef = torch.einsum("kn,bnc->bkc", cond.graph.analysis.to(x.dtype), x)
        y = x + torch.einsum("nk,bkc->bnc", cond.graph.basis.to(x.dtype), coef * torch.expm1(log_d))
        return y, log_d.sum((1, 2))

    def forward(self, x, cond):
        """`(y, log|det dy/dx|)` for `x` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        return self._scale(x, cond, 1.0)

    def inverse(self, y, cond):
        """`(x, log|det dx/dy|)` for `y` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        return self._scale(y, cond, -1.0)


class ActNorm(nn.Module):
    r"""Per-channel affine map :math:`y = x\,e^{s} + b`, `s, b` `(C,)` learned (Glow's ActNorm).

    :math:`\log|\det| = N\sum_c s_c`. Glow initialises `s, b` from the first data batch; APS is
    trained by reverse KL on its own samples, with no data batch, so it starts at the identity
    (`s = b = 0`) like every other learned layer of the flow.

    Arguments:
        channels: `C`.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x, cond):
        """`(y, log|det dy/dx|)` for `x` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        s = self.log_scale.to(x.dtype)
        return x * torch.exp(s) + self.shift.to(x.dtype), (x.shape[1] * s.sum()).expand(x.shape[0])

    def inverse(self, y, cond):
        """`(x, log|det dx/dy|)` for `y` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        s = self.log_scale.to(y.dtype)
        return (y - self.shift.to(y.dtype)) * torch.exp(-s), (-y.shape[1] * s.sum()).expand(
            y.shape[0]
        )


class StiefelChannelMix(nn.Module):
    r"""Orthogonal channel mixing :math:`y = x W`, :math:`W \in O(C)` kept on the Stiefel manifold.

    `W` is a `geoopt.ManifoldParameter` on `geoopt.Stiefel()`; optimise it with
    `geoopt.optim.RiemannianAdam` so that it stays orthogonal. The log-determinant
    :math:`N\log|\det W|` is 0 up to round-off; it is computed, not assumed, and the inverse uses a
    solve rather than the transpose, so both stay exact at any precision of `W`.
    """

    def __init__(self, channels: int, generator: torch.Generator | None = None):
        super().__init__()
        q, _ = torch.linalg.qr(
            torch.randn(channels, channels, generator=generator, dtype=torch.float64)
        )
        self.weight = geoopt.ManifoldParameter(q.float(), manifold=geoopt.Stiefel())

    def _logdet(self, x):
        return (x.shape[1] * torch.linalg.slogdet(self.weight.to(x.dtype))[1]).expand(x.shape[0])

    def forward(self, x, cond):
        """`(x W, log|det|)` for `x` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        return x @ self.weight.to(x.dtype), self._logdet(x)

    def inverse(self, y, cond):
        """`(y W^{-1}, log|det|)` for `y` `(B, N, C)`: `(B, N, C)` and `(B,)`."""
        w = self.weight.to(y.dtype)
        return torch.linalg.solve(w.T, y.transpose(-1, -2)).transpose(-1, -2), -self._logdet(y)
