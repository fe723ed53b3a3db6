r"""Linear forward operators `y = A x` on a domain, with adjoints in the domain's inner product.

Inner products. A signal `x` `(B, N, C)` on a domain uses :math:`\langle x, x'\rangle_M =
\sum m_n x_{nc} x'_{nc}`. The output `y` `(B, N_out, C)` uses the operator's `range_weight`
`(N_out,)`: the masses of the nodes it observes (for `Mask`, `HeatBlur`, `Identity` the range is the
domain itself; for `Subsample` it is the chosen nodes). The adjoint satisfies
:math:`\langle A x, y\rangle_W = \langle x, A^* y\rangle_M`; with these weights `Mask`, `Subsample`,
`HeatBlur` have the adjoints one expects (masking, scattering, the same blur). `transpose` is the
Euclidean transpose :math:`A^T = M A^* W^{-1}`, the one the likelihood gradient needs.
"""

from __future__ import annotations

import torch
from torch import nn

from manifold_aps.geometry import Domain

__all__ = ["Compose", "Identity", "LinearOperator", "Mask", "Subsample", "conjugate_gradient"]


def _batch_dot(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted inner product per batch element: `(B, N, C) x (B, N, C) -> (B, 1, 1)`."""
    return torch.einsum("bnc,n,bnc->b", a, w, b)[:, None, None]


def conjugate_gradient(
    apply,
    rhs: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    max_iter: int = 200,
    tol: float = 1e-10,
) -> torch.Tensor:
    r"""Solve :math:`H x = b` by conjugate gradients, one system per batch element.

    Arguments:
        apply: `x -> H x` on `(B, N, C)`, symmetric positive definite in the inner product
            :math:`\langle a, b\rangle = \sum_{nc} w_n a_{nc} b_{nc}` of every batch element.
        rhs: `b`, `(B, N, C)`.
        weight: `w` `(N,)` (default all ones: the Euclidean inner product).
        x0: the first guess `(B, N, C)` (default 0).
        max_iter: iterations at most.
        tol: stop when every residual's norm is below `tol` times its right-hand side's.

    Returns:
        `x` `(B, N, C)`.
    """
    w = torch.ones(rhs.shape[1], dtype=rhs.dtype, device=rhs.device) if weight is None else weight
    tiny = torch.finfo(rhs.dtype).tiny
    x = torch.zeros_like(rhs) if x0 is None else x0.clone()
    r = rhs - apply(x) if x0 is not None else rhs.clone()
    p = r.clone()
    rr = _batch_dot(r, r, w)
    stop = tol**2 * _batch_dot(rhs, rhs, w).clamp_min(tiny)
    for _ in range(max_iter):
        if bool(torch.all(rr <= stop)):
            break
        hp = apply(p)
        alpha = rr / _batch_dot(p, hp, w).clamp_min(tiny)
        x = x + alpha * p
        r = r - alpha * hp
        rr_new = _batch_dot(r, r, w)
        p = r + (rr_new / rr.clamp_min(tiny)) * p
        rr = rr_new
    return x


class LinearOperator(nn.Module):
    r"""Base class of linear operators :math:`y = A x` on a `Domain`.

    Subclasses implement `forward` and `adjoint`, and override `pinv`, `range_weight` and
    `range_mask` when they have a closed form. Parameters are buffers; `forward`, `adjoint` and
    `pinv` never write to `self`.

    Arguments:
        domain: the domain of the input signals `(B, N, C)`.
    """

    def __init__(self, domain: Domain):
        super().__init__()
        if not isinstance(domain, Domain):
            raise TypeError(f"domain must be a manifold_aps Domain, got {type(domain).__name__}")
        self.domain = domain
        self.register_buffer("mass", domain.mass.clone(), persistent=False)

    # -- to implement ------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply `A` to `x` `(B, N, C)`; returns `(B, N_out, C)`."""
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint `A*` (weighted inner products) to `y` `(B, N_out, C)`; `(B, N, C)`."""
        raise NotImplementedError

    @property
    def num_outputs(self) -> int:
        """`N_out`, the number of output nodes."""
        return self.domain.num_nodes

    @property
    def range_weight(self) -> torch.Tensor:
        """Weights `(N_out,)` of the output inner product (default: the domain's masses)."""
        return self.mass

    @property
    def range_mask(self) -> torch.Tensor | None:
        """Boolean `(B or 1, N_out, C or 1)`: which outputs are observations, or None for all.

        Outputs outside the mask are structurally zero and carry no data (e.g. missing cells of a
        `Mask`); noise models and likelihoods ignore them.
        """
        return None

    # -- derived -------------------------------------------------------------------------
    @property
    def T(self):  # noqa: N802 - mathematical notation, A.T(y)
        """The adjoint as a callable, so that `A.T(y)` reads like the maths."""
        return self.adjoint

    def transpose(self, y: torch.Tensor) -> torch.Tensor:
        """Euclidean transpose :math:`A^T y = M A^*(W^{-1} y)`, shape `(B, N, C)`."""
        w = self.range_weight.to(y.dtype)
        m = self.mass.to(y.dtype)
        return self.adjoint(y / w[:, None]) * m[:, None]

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """`A* A x`, shape `(B, N, C)`."""
        return self.adjoint(self.forward(x))

    def pinv(
        self, y: torch.Tensor, *, damping: float = 1e-6, max_iter: int = 200, tol: float = 1e-10
    ) -> torch.Tensor:
        r"""Damped least-squares inverse :math:`(A^*A + \delta I)^{-1} A^* y` by CG.

        CG runs in the mass inner product, one system per batch element. Subclasses with a closed
        form (masks, subsampling) override this with the exact Moore-Penrose inverse.

        Arguments:
            y: observations `(B, N_out, C)`.
            damping: :math:`\delta`, relative to nothing (the operator's own scale); 0 gives the
                minimum-norm least-squares solution when CG converges.
            max_iter: CG iterations at most.
            tol: stop when the residual norm falls below `tol` times the right-hand side's.

        Returns:
            `(B, N, C)`.
        """
        rhs = self.adjoint(y)
        return conjugate_gradient(
            lambda p: self.normal(p) + damping * p,
            rhs,
            weight=self.mass.to(y.dtype),
            max_iter=max_iter,
            tol=tol,
        )

    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        """`A @ B` is the composition `x -> A(B(x))`."""
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return Compose(self, other)

    def check_input(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise a clear error unless `x` is `(B, N, C)` on this operator's domain."""
        self.domain.check_signal(x, name)
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape (B, N, C), got {tuple(x.shape)}")

    def check_output(self, y: torch.Tensor, name: str = "y") -> None:
        """Raise a clear error unless `y` is `(B, N_out, C)`."""
        if not isinstance(y, torch.Tensor) or y.dim() != 3 or y.shape[1] != self.num_outputs:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"{name} must have shape (B, N_out={self.num_outputs}, C) for "
                f"{type(self).__name__}, got {shape}"
            )


class Identity(LinearOperator):
    """`A x = x` (denoising).

    Example:
        >>> from manifold_aps.geometry import PlanarGrid
        >>> import torch
        >>> Identity(PlanarGrid(2, 2))(torch.ones(1, 4, 1)).sum().item()
        4.0
    """

    def forward(self, x):
        """`x` `(B, N, C)` itself."""
        self.check_input(x)
        return x

    def adjoint(self, y):
        """`y` `(B, N, C)` itself."""
        self.check_output(y)
        return y

    def pinv(self, y, **kwargs):
        """`y` `(B, N, C)` itself (exact; `kwargs` are ignored)."""
        self.check_output(y)
        return y


def as_mask(mask, num_nodes: int, name: str = "mask") -> torch.Tensor:
    """Normalise a mask to a boolean tensor `(B or 1, N, C or 1)`; raise on bad shape or values.

    Accepted shapes: `(N,)`, `(N, C)`, `(B, N, C)`. True means observed.
    """
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        if mask.is_floating_point() and not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(f"{name} must be boolean or 0/1, got other values")
        mask = mask != 0
    if mask.dim() == 1:
        mask = mask[None, :, None]
    elif mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or mask.shape[1] != num_nodes:
        raise ValueError(
            f"{name} must have shape (N,), (N, C) or (B, N, C) with N={num_nodes}, "
            f"got {tuple(mask.shape)}"
        )
    observed = mask.flatten(1).sum(dim=1)
    if torch.any(observed == 0):
        empty = torch.nonzero(observed == 0).flatten().tolist()
        raise ValueError(f"{name} observes nothing for batch element(s) {empty[:10]}")
    return mask


class Mask(LinearOperator):
    r"""Inpainting: :math:`(A x)_n = m_n x_n` with a boolean mask (True = observed).

    The output keeps the full shape, with zeros where nothing is observed; `range_mask` tells which
    entries are observations. `A` is an orthogonal projection, so `A* = A = A^+`.

    Arguments:
        domain: the domain.
        mask: `(N,)`, `(N, C)` or `(B, N, C)`, boolean or 0/1; a batch dimension gives each
            example its own mask.

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import PlanarGrid
        >>> A = Mask(PlanarGrid(1, 3), torch.tensor([True, False, True]))
        >>> A(torch.ones(1, 3, 1)).flatten().tolist()
        [1.0, 0.0, 1.0]
    """

    def __init__(self, domain: Domain, mask):
        super().__init__(domain)
        self.register_buffer("mask", as_mask(mask, domain.num_nodes))

    def update(self, *, mask) -> None:
        """Replace the mask (same rules as the constructor)."""
        self.mask = as_mask(mask, self.domain.num_nodes).to(self.mask.device)

    def extra_repr(self) -> str:
        """The mask's shape and observed fraction, for `repr`."""
        frac = self.mask.float().mean().item()
        return f"mask_shape={tuple(self.mask.shape)}, observed_fraction={frac:.3f}"

    @property
    def range_mask(self) -> torch.Tensor:
        """The mask itself, boolean `(B or 1, N, C or 1)`."""
        return self.mask

    def _check_batch(self, x: torch.Tensor) -> None:
        b = self.mask.shape[0]
        if b != 1 and x.shape[0] != b:
            raise ValueError(f"the mask has a batch of {b} but the signal has {x.shape[0]}")
        c = self.mask.shape[2]
        if c != 1 and x.shape[2] != c:
            raise ValueError(f"the mask has {c} channels but the signal has {x.shape[2]}")

    def forward(self, x):
        """`x` `(B, N, C)` with the unobserved entries zeroed; `(B, N, C)`."""
        self.check_input(x)
        self._check_batch(x)
        return x * self.mask.to(x.dtype)

    def adjoint(self, y):
        """`y` `(B, N, C)` masked again (`A* = A`); `(B, N, C)`."""
        self.check_output(y)
        self._check_batch(y)
        return y * self.mask.to(y.dtype)

    def pinv(self, y, **kwargs):
        """The exact pseudo-inverse, the adjoint (`A^+ = A`; `kwargs` are ignored)."""
        return self.adjoint(y)

    def __matmul__(self, other):
        if isinstance(other, Mask) and other.domain is self.domain:
            return Mask(self.domain, self.mask & other.mask)
        return super().__matmul__(other)


class Subsample(LinearOperator):
    r"""Values at a set of nodes: :math:`(A x)_k = x_{i_k}`, output `(B, K, C)`.

    The output inner product weighs observation `k` by the mass of node `i_k`, so the adjoint is
    the scatter back to the nodes (zero elsewhere) and equals the pseudo-inverse.

    Arguments:
        domain: the domain.
        indices: distinct node indices `(K,)`.
    """

    def __init__(self, domain: Domain, indices):
        super().__init__(domain)
        idx = torch.as_tensor(indices, dtype=torch.long).flatten()
        if idx.numel() == 0:
            raise ValueError("indices observes nothing: pass at least one node index")
        if idx.min() < 0 or idx.max() >= domain.num_nodes:
            raise ValueError(f"indices must lie in 0..{domain.num_nodes - 1}")
        if torch.unique(idx).numel() != idx.numel():
            raise ValueError("indices must be distinct")
        self.register_buffer("indices", idx)

    def extra_repr(self) -> str:
        """The number of observed nodes, for `repr`."""
        return f"num_outputs={self.num_outputs}"

    @property
    def num_outputs(self) -> int:
        """`K`, the number of observed nodes."""
        return self.indices.numel()

    @property
    def range_weight(self) -> torch.Tensor:
        """The masses `(K,)` of the observed nodes."""
        return self.mass[self.indices]

    def forward(self, x):
        """The values of `x` `(B, N, C)` at the nodes; `(B, K, C)`."""
        self.check_input(x)
        return x[:, self.indices, :]

    def adjoint(self, y):
        """`y` `(B, K, C)` scattered back to the nodes, zero elsewhere; `(B, N, C)`."""
        self.check_output(y)
        x = y.new_zeros(y.shape[0], self.domain.num_nodes, y.shape[2])
        return x.index_copy(1, self.indices, y)

    def pinv(self, y, **kwargs):
        """The exact pseudo-inverse, the adjoint (`kwargs` are ignored)."""
        return self.adjoint(y)


class Compose(LinearOperator):
    """`(outer @ inner)(x) = outer(inner(x))`; the adjoint is `inner* outer*`.

    The inner operator's output must live on the outer operator's domain.
    """

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        if inner.num_outputs != outer.domain.num_nodes or not torch.allclose(
            inner.range_weight, outer.mass
        ):
            raise ValueError(
                f"cannot compose {type(outer).__name__} after {type(inner).__name__}: the inner "
                f"operator's {inner.num_outputs} outputs are not the outer domain's "
                f"{outer.domain.num_nodes} nodes"
            )
        super().__init__(inner.domain)
        self.outer = outer
        self.inner = inner

    @property
    def num_outputs(self) -> int:
        """The outer operator's `N_out`."""
        return self.outer.num_outputs

    @property
    def range_weight(self) -> torch.Tensor:
        """The outer operator's output weights `(N_out,)`."""
        return self.outer.range_weight

    @property
    def range_mask(self) -> torch.Tensor | None:
        """The outer operator's `range_mask`."""
        return self.outer.range_mask

    def forward(self, x):
        """`outer(inner(x))` for `x` `(B, N, C)`; `(B, N_out, C)`."""
        return self.outer(self.inner(x))

    def adjoint(self, y):
        """`inner*(outer*(y))` for `y` `(B, N_out, C)`; `(B, N, C)`."""
        return self.inner.adjoint(self.outer.adjoint(y))
