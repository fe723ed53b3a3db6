r"""Sparse :math:`LDL^T` factorisation of SPD matrices, with selected inversion.

`SparseCholesky(A)` factors :math:`P A P^T = L D L^T` (`L` unit lower triangular, `D` diagonal,
`P` a fill-reducing permutation) and offers what a Gaussian Markov random field needs: solves,
the log-determinant :math:`\sum_i \log D_{ii}`, a square-root factor for exact samples, and the
diagonal of :math:`A^{-1}` (and its entries on the pattern of `L`) by the Takahashi recursions,
without ever forming the dense inverse.

The ordering matters more than the factorisation code: METIS nested dissection (`pymetis`) of the
graph of `A`, computed once per sparsity pattern and reused (a likelihood search factors the same
pattern dozens of times), then SuperLU on the permuted matrix with the natural order, diagonal
pivots (`diag_pivot_thresh=0`) and its symmetric mode, which computes exactly a symmetric
factorisation. Measured on this project's 2-core machine (one thread) on the Matérn
:math:`\alpha = 2` posterior precision of global lat-lon grids: 1 degree (65k nodes) 0.44 s and
6.3 M non-zeros in `L` with nested dissection against 0.73 s and 7.6 M with SuperLU's own minimum
degree (MMD on :math:`A^T + A`); 0.5 degree (260k) 3.5 s / 30 M against 6.6 s / 39 M. CHOLMOD
(`sksparse-minimal`, not a dependency) and `qdldl` were slower or no faster with their default
orderings (`benchmarks/gmrf_scaling.py` reruns the comparison where they are installed); SuperLU
ships with scipy and exposes `L` (samples, log-determinant, selected inversion). Without
`pymetis` the minimum-degree ordering is used.

From `PARDISO_MIN_NODES` rows the factorisation goes to MKL PARDISO where the `mkl` wheel is
installed (a dependency on x86-64): supernodal, its own METIS ordering and both cores, 7.2 s
against SuperLU's 41.6 s on the 1.04 M-node 0.25 degree posterior precision, in half the memory
(`benchmarks/gmrf_scaling.py`). PARDISO does not expose `L`; exact variances (Takahashi) then
factor once more with SuperLU on first use, and "auto" variances are estimated at that size
anyway. The two back ends agree to rounding on solves and log-determinants (tests); seeded draws
differ between them (both exact: different square roots of the same covariance).

The Takahashi recursions run compiled by numba over the columns of `L` (cost
:math:`\sum_j |\mathcal L_j|^2`, where :math:`\mathcal L_j` is the pattern of column `j`).
"""

from __future__ import annotations

import numba  # compiles the selected inversion (pure Python would be 100-1000x slower)
import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from manifold_aps.orderings import OrderingCache, pattern_key
from manifold_aps.pardiso import PardisoCholesky, PardisoError
from manifold_aps.pardiso import available as pardiso_available

__all__ = ["NotPositiveDefiniteError", "SparseCholesky", "uses_pardiso"]

PARDISO_MIN_NODES = 100_000  # from here on "auto" factors with MKL PARDISO where it is installed
MMD_ORDERING = (
    "MMD_AT_PLUS_A"  # minimum degree on A^T + A: the best of SuperLU's own orderings for SPD
)
_ORDERINGS = OrderingCache(16)  # sparsity pattern -> METIS nested-dissection permutation


def nested_dissection(matrix: sp.spmatrix) -> np.ndarray | None:
    """METIS nested-dissection permutation `(N,)` of a symmetric sparse matrix's graph, or None.

    `perm[k]` is the row placed k-th. Cached by sparsity pattern (values do not matter), so the
    many factorisations of a likelihood search order once; METIS is deterministic, so the cache
    changes only the time. None when `pymetis` is not installed or the matrix is tiny.
    """
    a = sp.csr_matrix(matrix, copy=True)  # sort_indices below must not touch the caller's matrix
    n = a.shape[0]
    if n < 64:
        return None
    try:
        import pymetis
    except ImportError:
        return None
    a.sort_indices()
    key = pattern_key(a.indptr, a.indices)
    known = _ORDERINGS.get(key)
    if known is not None:
        return known
    graph = a.copy()
    graph.data = np.ones_like(graph.data)
    graph.setdiag(0)
    graph.eliminate_zeros()
    adjacency = pymetis.CSRAdjacency(graph.indptr.astype(np.int64), graph.indices.astype(np.int64))
    perm, _ = pymetis.nested_dissection(adjacency)
    return _ORDERINGS.put(key, np.asarray(perm, dtype=np.int64))


def uses_pardiso(num_rows: int) -> bool:
    """Whether `SparseCholesky(A, backend="auto")` factors an `(N, N)` A with PARDISO."""
    return num_rows >= PARDISO_MIN_NODES and pardiso_available()


class NotPositiveDefiniteError(ValueError):
    """The matrix given to `SparseCholesky` is not symmetric positive definite."""


class SparseCholesky:
    r"""Factor a sparse symmetric positive-definite `(N, N)` matrix once; solve, sample, invert.

    Arguments:
        matrix: symmetric positive-definite, any scipy sparse format (float64).
        backend: ``"superlu"`` (SciPy, nested-dissection order; exposes `L`), ``"pardiso"``
            (MKL, see `manifold_aps.pardiso`; several times faster on large matrices, no `L`:
            `selected_inverse` and `sqrt_times` then factor once more with SuperLU on first use)
            or ``"auto"``: PARDISO from `PARDISO_MIN_NODES` rows where MKL is installed (and
            the environment variable ``MANIFOLD_APS_SOLVER`` is not ``superlu``), else SuperLU.

    Raises:
        NotPositiveDefiniteError: a pivot is not positive (the matrix is not SPD).

    Example:
        >>> import numpy as np, scipy.sparse as sp
        >>> a = sp.diags([-1.0, 2.5, -1.0], [-1, 0, 1], shape=(5, 5))
        >>> f = SparseCholesky(a)
        >>> bool(np.allclose(a @ f.solve(np.ones(5)), 1.0))
        True
        >>> bool(np.isclose(f.logdet(), np.linalg.slogdet(a.toarray())[1]))
        True
        >>> bool(np.allclose(f.inverse_diagonal(), np.diag(np.linalg.inv(a.toarray()))))
        True
    """

    def __init__(self, matrix: sp.spmatrix, *, backend: str = "auto"):
        if backend not in ("auto", "superlu", "pardiso"):
            raise ValueError(f"backend must be 'auto', 'superlu' or 'pardiso', got {backend!r}")
        a = sp.csc_matrix(matrix, dtype=np.float64)
        n = a.shape[0]
        if a.shape != (n, n):
            raise ValueError(f"matrix must be square, got shape {a.shape}")
        self.num_rows = n
        self._matrix = a
        self._pardiso = None
        self._lu = None
        self._lower: sp.csc_matrix | None = None
        if backend == "pardiso" or (backend == "auto" and uses_pardiso(n)):
            try:
                self._pardiso = PardisoCholesky(a)
            except PardisoError as err:
                if err.code == -4:
                    raise NotPositiveDefiniteError(str(err)) from None
                raise
            self.backend = "pardiso"
        else:
            self._factor_superlu()
            self.backend = "superlu"

    def _factor_superlu(self) -> None:
        """SuperLU on the nested-dissection order (also the lazy route to `L` under PARDISO)."""
        a = self._matrix
        order = nested_dissection(a)
        if order is not None:
            a = a[order][:, order].tocsc()
        try:
            lu = spla.splu(
                a,
                permc_spec="NATURAL" if order is not None else MMD_ORDERING,
                diag_pivot_thresh=0.0,
                options={"SymmetricMode": True},
            )
        except RuntimeError as err:  # "Factor is exactly singular"
            raise NotPositiveDefiniteError(f"the matrix is singular: {err}") from None
        if not np.array_equal(lu.perm_r, lu.perm_c):
            raise NotPositiveDefiniteError(
                "SuperLU pivoted off the diagonal: the matrix is not symmetric positive definite"
            )
        d = lu.U.diagonal().copy()
        if not np.all(d > 0) or not np.all(np.isfinite(d)):
            raise NotPositiveDefiniteError(
                f"the matrix is not positive definite ({int(np.sum(~(d > 0)))} non-positive pivots)"
            )
        self._lu = lu
        self._order = order
        # SuperLU: A[perm, :][:, perm] = L U with perm = perm_c^{-1}; U = D L^T for diagonal pivots.
        self.perm = np.argsort(lu.perm_c)
        if order is not None:  # SuperLU factored A[order][:, order]
            self.perm = order[self.perm]
        self.diag = d

    def _superlu(self) -> None:
        """Make sure the SuperLU factor exists (selected inversion needs its `L`)."""
        if self._lu is None:
            self._factor_superlu()

    @property
    def lower(self) -> sp.csc_matrix:
        """`L` `(N, N)`: unit lower triangular, CSC with sorted row indices (built on first use)."""
        if self._lower is None:
            self._superlu()
            lower = self._lu.L.tocsc()
            lower.sort_indices()
            self._lower = lower
        return self._lower

    @property
    def nnz(self) -> int:
        """Non-zeros of `L` (the fill of the factorisation)."""
        return self._pardiso.nnz if self._pardiso is not None else int(self.lower.nnz)

    def selected_inversion_work(self) -> float | None:
        """Steps of the exact selected inversion, or None under PARDISO.

        The count is the sum over columns of `L` of m(m-1)/2 + m; under PARDISO it is None (its
        `L` is not exposed; counting would cost a SuperLU factorisation).
        """
        if self._pardiso is not None:
            return None
        counts = np.diff(self.lower.indptr).astype(np.float64) - 1.0
        return float((counts * (counts - 1) / 2).sum() + counts.sum())

    def solve(self, b: np.ndarray) -> np.ndarray:
        """:math:`A^{-1} b` for `b` of shape `(N,)` or `(N, K)`."""
        b = np.asarray(b, dtype=np.float64)
        if self._pardiso is not None:
            return self._pardiso.solve(b)
        if self._order is None:
            return self._lu.solve(b)
        out = np.empty_like(b)
        out[self._order] = self._lu.solve(np.ascontiguousarray(b[self._order]))
        return out

    def logdet(self) -> float:
        r""":math:`\log\det A = \sum_i \log D_{ii}`."""
        if self._pardiso is not None:
            return self._pardiso.logdet()
        return float(np.log(self.diag).sum())

    def draw(self, z: np.ndarray) -> np.ndarray:
        r"""Exact draws of :math:`N(0, A^{-1})` from standard normal `z`.

        `z` is `(N,)` or `(N, K)`; the draws have the same shape.

        SuperLU: `solve(sqrt_times(z))`; PARDISO: its backward substitution :math:`P^TL^{-T}z`.
        """
        if self._pardiso is not None:
            return self._pardiso.draw(z)
        return self.solve(self.sqrt_times(z))

    def sqrt_times(self, z: np.ndarray) -> np.ndarray:
        r""":math:`R z` for a factor with :math:`R R^T = A` (:math:`R = P^T L D^{1/2}`).

        `z` is `(N,)` or `(N, K)`.

        With `z` standard normal, `solve(sqrt_times(z))` is an exact draw of :math:`N(0, A^{-1})`.
        """
        self._superlu()
        z = np.asarray(z, dtype=np.float64)
        scaled = z * (np.sqrt(self.diag) if z.ndim == 1 else np.sqrt(self.diag)[:, None])
        out = np.empty_like(scaled)
        out[self.perm] = self.lower @ scaled
        return out

    def inverse_diagonal(self) -> np.ndarray:
        r"""The diagonal of :math:`A^{-1}` `(N,)`, exact.

        Computed by Takahashi recursions on the pattern of `L`.
        """
        return self.selected_inverse()[0]

    def selected_inverse(self) -> tuple[np.ndarray, sp.csc_matrix]:
        r"""Entries of :math:`A^{-1}` on the diagonal and on the pattern of `L`.

        Returns:
            the diagonal `(N,)` in the original order, and the strictly lower entries of
            :math:`(P A P^T)^{-1}` on the pattern of `L` as a CSC matrix in the permuted order
            (what `trace_product` needs).
        """
        lower = self.lower  # under PARDISO: a SuperLU factorisation on first use
        try:
            sigma_diag, sigma_lower = _takahashi(lower.indptr, lower.indices, lower.data, self.diag)
        except _PatternNotClosed:
            # SuperLU stores no exact zeros (e.g. underflowed fill of a near-diagonal matrix), so
            # its L can miss entries the recursion needs: complete the pattern symbolically
            lower = self._lower = self._completed_lower()
            sigma_diag, sigma_lower = _takahashi(lower.indptr, lower.indices, lower.data, self.diag)
        inv_lower = sp.csc_matrix((sigma_lower, lower.indices, lower.indptr), shape=lower.shape)
        diag = np.empty(self.num_rows)
        diag[self.perm] = sigma_diag
        return diag, inv_lower

    def _completed_lower(self) -> sp.csc_matrix:
        """`L` on its full symbolic pattern, with explicit zeros where SuperLU stored none.

        The pattern is that of the factor of an M-matrix with the pattern of the permuted `A`
        (off-diagonal -1, a dominant diagonal), whose elimination cannot cancel.
        """
        lower = self.lower
        n = self.num_rows
        a = sp.csc_matrix(self._matrix)[self.perm][:, self.perm].tocsc()
        m = sp.csc_matrix((-np.ones(a.nnz), a.indices, a.indptr), shape=a.shape)
        m.setdiag(0.0)
        m = (m + sp.diags(np.asarray(-m.sum(axis=0)).ravel() + 1.0)).tocsc()
        symbolic = spla.splu(
            m, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True}
        ).L.tocsc()
        symbolic.sort_indices()

        def keys(mat):  # column-major linear index of every stored entry, ascending
            cols = np.repeat(np.arange(n, dtype=np.int64), np.diff(mat.indptr))
            return cols * n + mat.indices.astype(np.int64)

        have, want = keys(lower), keys(symbolic)
        union = np.union1d(want, have)
        pos = np.searchsorted(have, union).clip(max=max(have.size - 1, 0))
        data = np.where(have[pos] == union, lower.data[pos], 0.0)
        indptr = np.searchsorted(union // n, np.arange(n + 1))
        return sp.csc_matrix((data, union % n, indptr), shape=(n, n))

    def trace_product(
        self, other: sp.spmatrix, selected: tuple[np.ndarray, sp.csc_matrix] | None = None
    ) -> float:
        r""":math:`\mathrm{tr}(A^{-1} B)` for a symmetric sparse `B`.

        The pattern of `B` must lie in that of `A`.

        Uses only the selected inverse (the pattern of `L` contains the pattern of `A`).
        """
        diag, inv_lower = self.selected_inverse() if selected is None else selected
        b = sp.csc_matrix(other)[self.perm][:, self.perm]
        b_lower = sp.tril(b, k=-1).tocsc()
        total = float(np.dot(b.diagonal(), diag[self.perm]))
        # sum over strictly lower entries of B times the matching entries of the selected inverse
        return total + 2.0 * float(inv_lower.multiply(b_lower).sum())


@numba.njit(cache=True)
def _takahashi_compiled(indptr, indices, data, d):  # pragma: no cover - compiled
    r"""Selected inverse on the pattern of `L` (CSC, sorted rows, unit diagonal stored or not).

    Column `j` from last to first: :math:`\Sigma_{ij} = -\sum_k L_{kj}\Sigma_{ik}` for the rows
    `i > j` of column `j`, then :math:`\Sigma_{jj} = 1/D_j - \sum_k L_{kj}\Sigma_{kj}`. The
    entries :math:`\Sigma_{ki}` with `k > i` both in column `j`'s pattern lie in column `i`'s
    pattern (closure of the Cholesky pattern); they are found by one merge walk per row `i`.
    """
    n = d.shape[0]
    sig_lower = np.zeros_like(data)
    sig_diag = np.zeros(n)
    missing = 0
    acc = np.zeros(n)
    for j in range(n - 1, -1, -1):
        stop = indptr[j + 1]
        first = indptr[j]
        while first < stop and indices[first] <= j:  # skip a stored unit diagonal
            first += 1
        m = stop - first
        for a in range(m):
            acc[a] = -data[first + a] * sig_diag[indices[first + a]]
        for a in range(m):
            i = indices[first + a]
            la = data[first + a]
            p = indptr[i]
            end = indptr[i + 1]
            b = a + 1
            while b < m:
                row = indices[first + b]
                while p < end and indices[p] < row:
                    p += 1
                if p < end and indices[p] == row:
                    s = sig_lower[p]  # Sigma_{row, i}
                    acc[a] -= data[first + b] * s
                    acc[b] -= la * s
                    p += 1
                else:
                    missing += 1
                b += 1
        diag_acc = 0.0
        for a in range(m):
            sig_lower[first + a] = acc[a]
            diag_acc += data[first + a] * acc[a]
        sig_diag[j] = 1.0 / d[j] - diag_acc
    return sig_diag, sig_lower, missing


class _PatternNotClosed(RuntimeError):
    """The pattern of `L` misses entries the selected inversion needs (`_completed_lower`)."""


def _takahashi(indptr, indices, data, d):
    sig_diag, sig_lower, missing = _takahashi_compiled(
        indptr.astype(np.int64), indices.astype(np.int64), data, d
    )
    if missing:
        raise _PatternNotClosed(
            f"selected inversion: {missing} entries outside the factor's pattern"
        )
    return sig_diag, sig_lower
