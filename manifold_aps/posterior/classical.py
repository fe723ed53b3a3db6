r"""Classical gap filling on any domain: harmonic (Laplace) interpolation and nearest neighbour.

The baselines every posterior engine must beat. Both are point estimates for inpainting (a
`Mask` operator): observed entries keep their (noisy) values, hidden ones are filled from them.
`sample(y, operator, n)` follows the engine interface but returns `n` identical copies, so their
spread is zero: score them by RMSE (and CRPS, which for a point estimate is the absolute error),
not by coverage.

* `HarmonicInterpolation`: the hidden values minimise the Dirichlet energy
  :math:`\tfrac12 x^T S x` (`S` the domain's stiffness matrix) with the observed values fixed,
  i.e. they solve :math:`L x = 0` on the hidden nodes: :math:`S_{hh} x_h = -S_{ho} y_o`. A
  connected group of hidden nodes that touches no observed node takes the mean of the observed
  values.
* `NearestNeighbour`: each hidden node takes the value of the observed node nearest along the
  domain's edges (multi-source Dijkstra on edge lengths, so geodesic on meshes rather than
  through the ambient space).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch

from manifold_aps.geometry import Domain
from manifold_aps.operators import LinearOperator, Mask
from manifold_aps.posterior.observations import check_observations

__all__ = ["GapFiller", "HarmonicInterpolation", "NearestNeighbour"]


class GapFiller:
    """Base class of point-estimate gap fillers.

    Subclasses implement `_fill(values (N, C), observed (N,))`.

    Arguments:
        domain: the domain.
    """

    def __init__(self, domain: Domain):
        self.domain = domain

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.domain!r})"

    def estimate(self, y: torch.Tensor, operator: LinearOperator) -> torch.Tensor:
        """Filled signals `(B, N, C)` from observations `y` `(B, N, C)` of a `Mask` operator.

        Raises:
            TypeError: the operator is not a `Mask` (these baselines only fill gaps).
            ValueError: an example observes no node, or the shapes do not match.
        """
        if not isinstance(operator, Mask):
            raise TypeError(
                f"{type(self).__name__} fills gaps of a Mask operator, "
                f"got {type(operator).__name__}"
            )
        check_observations(y, operator)
        mask = operator.mask
        out = torch.empty(y.shape, dtype=torch.float64)
        for b in range(y.shape[0]):
            for c in range(y.shape[2]):
                observed = (
                    mask[min(b, mask.shape[0] - 1), :, min(c, mask.shape[2] - 1)].cpu().numpy()
                )
                if not observed.any():
                    raise ValueError(
                        f"example {b}, channel {c} observes no node: nothing to fill from"
                    )
                values = y[b, :, c].detach().cpu().double().numpy()
                out[b, :, c] = torch.from_numpy(self._fill(values, observed))
        return out.to(y.dtype)

    def sample(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        n: int,
        *,
        rng: torch.Generator | None = None,
    ) -> torch.Tensor:
        """`n` copies of the point estimate, `(n, B, N, C)` (engine interface; `rng` is unused)."""
        return self.estimate(y, operator).expand(n, *y.shape).clone()

    def _fill(self, values: np.ndarray, observed: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class HarmonicInterpolation(GapFiller):
    r"""Harmonic interpolation: hidden values solve :math:`S_{hh} x_h = -S_{ho} y_o` (Laplace).

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import PlanarGrid
        >>> d = PlanarGrid(1, 5)
        >>> A = Mask(d, torch.tensor([True, False, False, False, True]))
        >>> y = A(torch.tensor([0.0, 9, 9, 9, 4.0]).reshape(1, 5, 1).double())
        >>> x = HarmonicInterpolation(d).estimate(y, A)
        >>> [round(v, 9) for v in x.flatten().tolist()]  # linear
        [0.0, 1.0, 2.0, 3.0, 4.0]
    """

    def __init__(self, domain: Domain):
        super().__init__(domain)
        self._stiffness = domain.stiffness().tocsr()

    def _fill(self, values, observed):
        hidden = ~observed
        out = values.copy()
        if not hidden.any():
            return out
        out[hidden] = float(values[observed].mean())
        s_hh = self._stiffness[hidden][:, hidden]
        s_ho = self._stiffness[hidden][:, observed]
        # hidden groups that touch no observed node have no boundary values: they keep the mean
        _, group = csgraph.connected_components(s_hh != 0, directed=False)
        touching = np.zeros(group.max() + 1, dtype=bool)
        touching[group[np.asarray(abs(s_ho).sum(axis=1)).ravel() > 0]] = True
        solve = touching[group]
        if solve.any():
            rhs = -(s_ho[solve] @ values[observed])
            idx = np.flatnonzero(hidden)[solve]
            out[idx] = spla.spsolve(s_hh[solve][:, solve].tocsc(), rhs)
        return out


class NearestNeighbour(GapFiller):
    """Nearest observed node along the domain's edges (multi-source Dijkstra on edge lengths).

    Example:
        >>> import torch
        >>> from manifold_aps.geometry import PlanarGrid
        >>> d = PlanarGrid(1, 6)
        >>> A = Mask(d, torch.tensor([True, False, False, False, False, True]))
        >>> y = A(torch.tensor([0.0, 9, 9, 9, 9, 5.0]).reshape(1, 6, 1).double())
        >>> NearestNeighbour(d).estimate(y, A).flatten().tolist()
        [0.0, 0.0, 0.0, 5.0, 5.0, 5.0]
    """

    def __init__(self, domain: Domain):
        super().__init__(domain)
        i, j = domain.edge_index.numpy()
        self._graph = sp.csr_matrix((domain.edge_lengths(), (i, j)), shape=(domain.num_nodes,) * 2)

    def _fill(self, values, observed):
        sources = np.flatnonzero(observed)
        _, _, nearest = csgraph.dijkstra(
            self._graph, directed=False, indices=sources, min_only=True, return_predecessors=True
        )
        reached = nearest >= 0  # a node in a component without observations keeps the observed mean
        out = np.full_like(values, float(values[observed].mean()))
        out[reached] = values[nearest[reached]]
        out[observed] = values[observed]
        return out
