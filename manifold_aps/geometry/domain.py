"""The `Domain` base class: nodes, masses, Laplacian, eigenbasis and coarsening of a surface."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse import csgraph

__all__ = ["Coarsening", "Domain", "cluster_coarsening", "partition_pooling", "sparse_to_torch"]


def sparse_to_torch(matrix: sp.spmatrix, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Convert a scipy sparse matrix to a torch sparse COO tensor (coalesced)."""
    coo = sp.coo_matrix(matrix)
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data).to(dtype)
    return torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=False).coalesce()


@dataclass(frozen=True)
class Coarsening:
    """One level of a coarsening hierarchy.

    Attributes:
        domain: the coarse domain, with `Nc` nodes.
        pool: sparse `(Nc, N)` matrix; a coarse value is the mass-weighted mean of its fine nodes.
        unpool: sparse `(N, Nc)` matrix; a fine node takes the value of the coarse node it belongs
            to.
    """

    domain: Domain
    pool: sp.csr_matrix
    unpool: sp.csr_matrix

    def pool_signal(self, x: torch.Tensor) -> torch.Tensor:
        """Pool a signal `(B, N, C)` to `(B, Nc, C)`."""
        return _apply_sparse(self.pool, x)

    def unpool_signal(self, x: torch.Tensor) -> torch.Tensor:
        """Unpool a signal `(B, Nc, C)` to `(B, N, C)`."""
        return _apply_sparse(self.unpool, x)


def _apply_sparse(matrix: sp.spmatrix, x: torch.Tensor) -> torch.Tensor:
    m = sparse_to_torch(matrix, x.dtype).to(x.device)
    b, n, c = x.shape
    flat = x.permute(1, 0, 2).reshape(n, b * c)
    return torch.sparse.mm(m, flat).reshape(-1, b, c).permute(1, 0, 2)


def partition_pooling(
    assignment: np.ndarray, mass: np.ndarray, n_coarse: int, *, allow_empty: bool = False
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Pool `(Nc, N)` and unpool `(N, Nc)` matrices for a partition of the fine nodes.

    Arguments:
        assignment: coarse node of each fine node, shape `(N,)`, values in `0..Nc-1`.
        mass: fine node masses, shape `(N,)`.
        n_coarse: number of coarse nodes `Nc`.
        allow_empty: if False, a coarse node with no fine node raises `ValueError`; if True its
            pooling row is left empty (the caller fills it).
    """
    n = assignment.shape[0]
    rows = np.arange(n)
    unpool = sp.csr_matrix((np.ones(n), (rows, assignment)), shape=(n, n_coarse))
    cluster_mass = np.bincount(assignment, weights=mass, minlength=n_coarse)
    if not allow_empty and np.any(cluster_mass <= 0):
        raise ValueError(
            "coarsening produced an empty cluster; every coarse node needs a fine node"
        )
    pool = sp.csr_matrix((mass / cluster_mass[assignment], (assignment, rows)), shape=(n_coarse, n))
    return pool, unpool


def cluster_coarsening(domain: Domain, num_clusters: int) -> Coarsening:
    r"""Graph coarsening of any domain: farthest-point seeds, geodesic clusters, Galerkin weights.

    Seeds are chosen by farthest-point sampling in 3-D (starting from node 0); every node joins
    its nearest seed along the graph (multi-source Dijkstra on edge lengths). The coarse domain has
    the seeds' positions, the clusters' summed areas, and conductances
    :math:`W_c = \tfrac12 P^T W P` between clusters (`P` the 0/1 membership matrix): the Galerkin
    product sums the conductances that cross a cluster boundary, and the factor 1/2 corrects its
    known overestimate for clusters twice as wide as the fine cells (1-D: two fine edges of
    conductance 1/h in series are one coarse edge of conductance 1/(2h), not 1/h).
    """
    n = domain.num_nodes
    if not 1 <= num_clusters < n:
        raise ValueError(f"num_clusters must lie in 1..{n - 1}, got {num_clusters}")
    pos = domain._positions
    seeds = [0]
    dist = np.linalg.norm(pos - pos[0], axis=1)
    for _ in range(num_clusters - 1):
        nxt = int(np.argmax(dist))
        seeds.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(pos - pos[nxt], axis=1))
    seeds = np.asarray(seeds)
    i, j = domain.edge_index.numpy()
    graph = sp.csr_matrix((domain.edge_lengths() + 1e-300, (i, j)), shape=(n, n))
    _, _, sources = csgraph.dijkstra(
        graph, directed=False, indices=seeds, min_only=True, return_predecessors=True
    )
    lookup = {int(s): k for k, s in enumerate(seeds)}
    assignment = np.array([lookup.get(int(s), -1) for s in sources])
    if np.any(assignment < 0):
        raise ValueError(
            f"{domain!r}: some nodes are not connected to any seed (disconnected graph)"
        )
    member = sp.csr_matrix((np.ones(n), (np.arange(n), assignment)), shape=(n, num_clusters))
    w_c = 0.5 * (member.T @ domain._weights @ member).tocoo()
    off = w_c.row != w_c.col
    mass = np.bincount(assignment, weights=domain._mass, minlength=num_clusters)
    coarse = Domain(
        pos[seeds],
        mass,
        np.vstack([w_c.row[off], w_c.col[off]]),
        w_c.data[off],
        name=f"{domain.name}/clusters",
    )
    pool, unpool = partition_pooling(assignment, domain._mass, num_clusters)
    return Coarsening(coarse, pool, unpool)


class Domain:
    r"""A discretised surface on which signals `(B, N, C)` live.

    The geometry is a weighted graph: node positions in 3-D, a lumped mass (area) per node and
    symmetric edge conductances `w_ij`. The stiffness matrix is :math:`S = D - W` and the
    Laplace-Beltrami operator is :math:`L = M^{-1} S`, which is symmetric and positive
    semi-definite in the mass inner product :math:`\langle u, v\rangle_M = \sum_i m_i u_i v_i`.

    Subclasses (`SphereGrid`, `HealpixSphere`, `IcosphereMesh`, `TriangleMesh`, `PlanarGrid`)
    only compute positions, masses and conductances; everything else lives here.

    Arguments:
        positions: node positions, shape `(N, 3)`.
        mass: node areas, shape `(N,)`, all positive.
        edge_index: undirected edges, shape `(2, E)`; a pair given in both directions counts once
            (with the weight of its first occurrence); self-loops are ignored.
        edge_weight: conductance of each edge, shape `(E,)`. Cotangent weights may be negative.
        name: a short description used in messages and fingerprints.

    Example:
        >>> from manifold_aps.geometry import PlanarGrid
        >>> d = PlanarGrid(4, 5)
        >>> d.num_nodes, float(d.mass.sum())
        (20, 20.0)
    """

    def __init__(self, positions, mass, edge_index, edge_weight, *, name: str = "domain"):
        positions = np.asarray(positions, dtype=np.float64)
        mass = np.asarray(mass, dtype=np.float64)
        edge_index = np.asarray(edge_index, dtype=np.int64)
        edge_weight = np.asarray(edge_weight, dtype=np.float64)
        n = positions.shape[0]
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise ValueError(f"positions must have shape (N, 3), got {positions.shape}")
        if mass.shape != (n,):
            raise ValueError(f"mass must have shape ({n},), got {mass.shape}")
        if not np.all(np.isfinite(mass)) or np.any(mass <= 0):
            raise ValueError(f"{name}: every node mass must be positive and finite")
        if edge_index.ndim != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {edge_index.shape}")
        if edge_weight.shape != (edge_index.shape[1],):
            raise ValueError(
                f"edge_weight must have shape ({edge_index.shape[1]},), got {edge_weight.shape}"
            )
        if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= n):
            raise ValueError(f"edge_index refers to nodes outside 0..{n - 1}")
        self.name = name
        self._positions = positions
        self._mass = mass
        # One conductance per undirected pair: an edge given in both directions counts once.
        i, j = edge_index
        keep = i != j
        lo, hi, ew = np.minimum(i, j)[keep], np.maximum(i, j)[keep], edge_weight[keep]
        _, first = np.unique(lo * n + hi, return_index=True)
        w = sp.coo_matrix((ew[first], (lo[first], hi[first])), shape=(n, n))
        w = (w + w.T).tocsr()
        w.eliminate_zeros()
        self._weights = w
        self._eigen_cache: dict[
            tuple[int, str], tuple[np.ndarray, np.ndarray]
        ] = {}  # (k, solver digest)

    # ------------------------------------------------------------------ basic geometry
    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        """A short description of the domain's parameters."""
        return f"num_nodes={self.num_nodes}, name={self.name!r}"

    @property
    def num_nodes(self) -> int:
        """Number of nodes `N`."""
        return self._positions.shape[0]

    @cached_property
    def positions(self) -> torch.Tensor:
        """Node positions in 3-D, shape `(N, 3)`, float64 (unit sphere for spherical domains)."""
        return torch.from_numpy(self._positions.copy())

    @cached_property
    def mass(self) -> torch.Tensor:
        """Lumped mass (area) of each node, shape `(N,)`, float64; sums to the surface area."""
        return torch.from_numpy(self._mass.copy())

    @property
    def total_area(self) -> float:
        """Sum of the masses (4*pi on the unit sphere)."""
        return float(self._mass.sum())

    @cached_property
    def edge_index(self) -> torch.Tensor:
        """Directed edges in both directions, shape `(2, E)`, int64 (torch-geometric layout)."""
        coo = self._weights.tocoo()
        return torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))

    @cached_property
    def edge_weight(self) -> torch.Tensor:
        """Conductance `w_ij` of each directed edge of `edge_index`, shape `(E,)`, float64."""
        return torch.from_numpy(self._weights.tocoo().data.copy())

    def adjacency(self) -> sp.csr_matrix:
        """Symmetric sparse conductance matrix `W`, shape `(N, N)`."""
        return self._weights.copy()

    def stiffness(self) -> sp.csr_matrix:
        """Stiffness matrix `S = D - W`, sparse `(N, N)`, symmetric, with constant null vector."""
        w = self._weights
        return (sp.diags(np.asarray(w.sum(axis=1)).ravel()) - w).tocsr()

    def laplacian(self) -> sp.csr_matrix:
        """Laplace-Beltrami operator `L = M^{-1} S`, sparse `(N, N)`, in units of 1/length^2.

        `L` is self-adjoint and positive semi-definite in the mass inner product.
        """
        return (sp.diags(1.0 / self._mass) @ self.stiffness()).tocsr()

    def inner(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r"""Mass-weighted inner product :math:`\sum_{n,c} m_n u_{nc} v_{nc}`.

        Arguments:
            u: a signal of shape `(*, N, C)`.
            v: a signal of the same shape.

        Returns:
            shape `(*)`.
        """
        self.check_signal(u, "u")
        m = self.mass.to(dtype=u.dtype, device=u.device)
        return torch.einsum("...nc,n,...nc->...", u, m, v)

    def norm(self, u: torch.Tensor) -> torch.Tensor:
        """Mass-weighted L2 norm of a signal `(*, N, C)`, shape `(*)`."""
        return self.inner(u, u).clamp_min(0).sqrt()

    def check_signal(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise a `ValueError` unless `x` has shape `(*, N, C)` for this domain."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() < 2 or x.shape[-2] != self.num_nodes:
            raise ValueError(
                f"{name} must have shape (*, N={self.num_nodes}, C) on {self!r}, "
                f"got {tuple(x.shape)}"
            )

    # ------------------------------------------------------------------ identity
    def _fingerprint_parts(self) -> list[bytes]:
        """What identifies the domain; subclasses may add parameters."""
        scale = max(np.abs(self._positions).max(), 1e-300)
        pos = np.round(self._positions / scale, 8) + 0.0  # +0.0 turns -0.0 into 0.0
        coo = sp.triu(self._weights, k=1).tocoo()
        return [
            type(self).__name__.encode(),
            np.asarray(self.num_nodes).tobytes(),
            pos.tobytes(),
            np.vstack([coo.row, coo.col]).astype(np.int64).tobytes(),
            np.round(np.log10(self._mass.sum()), 8).tobytes(),
        ]

    @cached_property
    def fingerprint(self) -> str:
        """A stable hex digest of the geometry (positions, connectivity, area).

        Checkpoints store it; a model trained on one domain refuses to run on another.
        """
        h = hashlib.sha256()
        for part in self._fingerprint_parts():
            h.update(part)
        return h.hexdigest()[:20]

    # ------------------------------------------------------------------ spectra
    def eigenbasis(self, k: int, *, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The `k` lowest Laplace-Beltrami eigenpairs, :math:`S\phi = \lambda M \phi`.

        Eigenvectors are mass-orthonormal, :math:`\Phi^T M \Phi = I`. Results are cached in memory
        and on disk (see `manifold_aps.geometry.eigen`), keyed by the fingerprint, `k` and the
        solver settings. A cached larger basis is never sliced: the solvers return other bases of
        degenerate eigenspaces for another `k`, so `eigenbasis(k)` is always the `k`-pair solve.

        Arguments:
            k: number of eigenpairs, `1 <= k <= N`.
            cache: read and write the disk cache (the in-memory one is always used).

        Returns:
            eigenvalues shape `(k,)` ascending, eigenvectors shape `(N, k)`; float64.
        """
        from manifold_aps.geometry.eigen import cached_eigenbasis, solver_digest

        if not 1 <= k <= self.num_nodes:
            raise ValueError(f"k must be in 1..N={self.num_nodes}, got {k}")
        key = (k, solver_digest(self.num_nodes, k))
        if key not in self._eigen_cache:
            self._eigen_cache[key] = cached_eigenbasis(self, k, use_disk=cache)
        vals, vecs = self._eigen_cache[key]
        return torch.from_numpy(vals.copy()), torch.from_numpy(vecs.copy())

    # ------------------------------------------------------------------ distances
    def edge_lengths(self) -> np.ndarray:
        """Euclidean length of each directed edge of `edge_index`, shape `(E,)`."""
        i, j = self.edge_index.numpy()
        return np.linalg.norm(self._positions[i] - self._positions[j], axis=1)

    def geodesic_distance(self, sources) -> np.ndarray:
        """Distance from the nearest of `sources` to every node, shape `(N,)`.

        The base class uses shortest paths along edges (Dijkstra); spherical domains override it
        with exact great-circle distances.
        """
        i, j = self.edge_index.numpy()
        graph = sp.csr_matrix((self.edge_lengths(), (i, j)), shape=(self.num_nodes,) * 2)
        dist = csgraph.dijkstra(
            graph, directed=False, indices=np.atleast_1d(sources), min_only=True
        )
        return np.asarray(dist)

    def num_components(self) -> int:
        """Number of connected components of the node graph."""
        return int(csgraph.connected_components(self._weights != 0, directed=False)[0])

    # ------------------------------------------------------------------ hierarchy
    def coarsen(self) -> Coarsening:
        """One coarser level of this domain (about 4 times fewer nodes), by `cluster_coarsening`."""
        return cluster_coarsening(self, max(self.num_nodes // 4, 1))

    def hierarchy(self, levels: int) -> list[Coarsening]:
        """`levels` successive coarsenings, finest first."""
        out, dom = [], self
        for _ in range(levels):
            step = dom.coarsen()
            out.append(step)
            dom = step.domain
        return out
