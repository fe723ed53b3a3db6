r"""Intel MKL PARDISO through ctypes: the Cholesky factorisation of large sparse SPD matrices.

PARDISO (supernodal, METIS nested dissection, multi-threaded BLAS kernels) factors the Matérn
:math:`\alpha = 2` posterior precision of the 0.25 degree global grid (1.04 M nodes) in 7.2 s on
this project's 2-core machine against 41.6 s for SciPy's SuperLU with the same ordering
(`benchmarks/gmrf_scaling.py` measures both in one run), in half the memory. It does not expose
its factor `L`, so selected inversion (exact marginal variances) stays with SuperLU;
`SparseCholesky` uses PARDISO for large matrices, where the variances are estimated anyway.

The library is the `mkl` wheel's `libmkl_rt` (found in the environment, or named by the
environment variable ``MANIFOLD_APS_MKL_RT``); without it :func:`available` is False and
everything runs on SuperLU.

What is used: phases 11 (ordering and symbolic factorisation), 22 (numerical factorisation),
33 (solve), 333 (backward substitution only: :math:`x = P^T L^{-T} z`, whose covariance is
:math:`A^{-1}` for standard normal `z`) and -1 (release); `pardiso_getdiag` for the diagonal of
`L` (the log-determinant). Matrices are passed as their upper triangle in CSR with 0-based
indices (`iparm[34] = 1`), real symmetric positive definite (`mtype = 2`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys
import threading
import weakref

import numpy as np
import scipy.sparse as sp

from manifold_aps.orderings import OrderingCache, pattern_key

__all__ = ["PardisoCholesky", "PardisoError", "available"]

_MTYPE_SPD = 2
_LIB = None
_LIB_LOCK = threading.Lock()
_ORDERINGS = OrderingCache(16)  # sparsity pattern -> PARDISO's fill-reducing permutation
_ERRORS = {
    -1: "input inconsistent",
    -2: "not enough memory",
    -3: "reordering problem",
    -4: "zero pivot (the matrix is not positive definite)",
    -5: "unclassified internal error",
    -6: "reordering failed",
    -7: "diagonal matrix is singular",
    -8: "32-bit integer overflow",
    -9: "not enough memory for out-of-core",
    -10: "error opening out-of-core files",
    -11: "read/write error with out-of-core files",
}


class PardisoError(RuntimeError):
    """PARDISO returned an error code (`code`)."""

    def __init__(self, code: int, phase: int):
        self.code = code
        super().__init__(
            f"PARDISO phase {phase} failed: error {code} ({_ERRORS.get(code, 'unknown')})"
        )


def _library():
    """The loaded `mkl_rt`, or None (searched once)."""
    global _LIB
    with _LIB_LOCK:
        if _LIB is not None:
            return _LIB or None
        candidates = [os.environ.get("MANIFOLD_APS_MKL_RT"), ctypes.util.find_library("mkl_rt")]
        candidates += sorted(glob.glob(f"{sys.prefix}/lib/libmkl_rt.so*"), key=len)
        lib = None
        for path in filter(None, candidates):
            try:
                lib = ctypes.CDLL(path)
                lib.pardiso  # noqa: B018 - the symbol must exist
                break
            except (OSError, AttributeError):
                lib = None
        if lib is not None:
            int_p = ctypes.POINTER(ctypes.c_int32)
            lib.pardiso.restype = None
            lib.pardiso.argtypes = [
                ctypes.POINTER(ctypes.c_int64),  # pt
                int_p,
                int_p,
                int_p,
                int_p,
                int_p,  # maxfct, mnum, mtype, phase, n
                ctypes.c_void_p,
                int_p,
                int_p,  # a, ia, ja
                int_p,
                int_p,
                int_p,
                int_p,  # perm, nrhs, iparm, msglvl
                ctypes.c_void_p,
                ctypes.c_void_p,
                int_p,  # b, x, error
            ]
            lib.pardiso_getdiag.restype = None
            lib.pardiso_getdiag.argtypes = [
                ctypes.POINTER(ctypes.c_int64),
                ctypes.c_void_p,
                ctypes.c_void_p,
                int_p,
                int_p,
            ]
        _LIB = lib if lib is not None else False
        return lib


def available() -> bool:
    """True when MKL's PARDISO can be loaded here."""
    if os.environ.get("MANIFOLD_APS_SOLVER", "").lower() == "superlu":
        return False
    return _library() is not None


def _release(lib, pt: np.ndarray, iparm: np.ndarray, n: int, perm: np.ndarray) -> None:
    """Phase -1: free PARDISO's memory for handle `pt` (run by the finaliser)."""
    _call(lib, pt, iparm, -1, n, None, None, None, None, None, perm=perm, check=False)


def _call(
    lib, pt, iparm, phase, n, a, ia, ja, b, x, *, perm=None, nrhs: int = 1, check: bool = True
) -> None:
    one = ctypes.c_int32(1)
    err = ctypes.c_int32(0)
    ptr = ctypes.c_void_p
    int_p = ctypes.POINTER(ctypes.c_int32)
    dummy = np.zeros(1, dtype=np.int32)
    lib.pardiso(
        pt.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
        ctypes.byref(one),
        ctypes.byref(one),
        ctypes.byref(ctypes.c_int32(_MTYPE_SPD)),
        ctypes.byref(ctypes.c_int32(phase)),
        ctypes.byref(ctypes.c_int32(n)),
        ptr(a.ctypes.data) if a is not None else None,
        (ia if ia is not None else dummy).ctypes.data_as(int_p),
        (ja if ja is not None else dummy).ctypes.data_as(int_p),
        (perm if perm is not None else dummy).ctypes.data_as(int_p),
        ctypes.byref(ctypes.c_int32(nrhs)),
        iparm.ctypes.data_as(int_p),
        ctypes.byref(ctypes.c_int32(0)),
        ptr(b.ctypes.data) if b is not None else None,
        ptr(x.ctypes.data) if x is not None else None,
        ctypes.byref(err),
    )
    if check and err.value != 0:
        raise PardisoError(err.value, phase)


class PardisoCholesky:
    r"""Factor a sparse SPD `(N, N)` matrix with PARDISO: :math:`PAP^T = LL^T`.

    Arguments:
        matrix: symmetric positive definite, any scipy sparse format (only the upper triangle is
            read).

    Raises:
        PardisoError: on failure; `code == -4` when the matrix is not positive definite.
    """

    def __init__(self, matrix: sp.spmatrix):
        lib = _library()
        if lib is None:
            raise RuntimeError("MKL PARDISO is not available (install the `mkl` wheel)")
        upper = sp.triu(sp.csr_matrix(matrix, dtype=np.float64), format="csr")
        upper.sort_indices()
        n = upper.shape[0]
        if n == 0 or np.any(np.diff(upper.indptr) == 0):
            raise PardisoError(-7, 22)  # a row with no diagonal entry
        self.num_rows = n
        self._lib = lib
        self._a = np.ascontiguousarray(upper.data)
        self._ia = upper.indptr.astype(np.int32)
        self._ja = upper.indices.astype(np.int32)
        self._pt = np.zeros(64, dtype=np.int64)
        iparm = np.zeros(64, dtype=np.int32)
        iparm[0] = 1  # no solver defaults: every entry below is ours
        iparm[1] = 2  # METIS nested dissection
        iparm[7] = 0  # iterative refinement only after perturbed pivots (none for SPD)
        iparm[9] = 13  # pivot perturbation 1e-13 (not used for SPD)
        iparm[17] = -1  # report the non-zeros of the factor (in iparm[17])
        iparm[34] = 1  # zero-based indices
        iparm[55] = 1  # keep the factor's diagonal for pardiso_getdiag
        key = pattern_key(self._ia, self._ja)
        known = _ORDERINGS.get(key)
        # the ordering of a pattern factored before is passed back (iparm[4] = 1: METIS skipped,
        # 3.9 -> 1.4 s of analysis at 1 M nodes), else computed and returned (iparm[4] = 2)
        iparm[4] = 2 if known is None else 1
        self._perm = np.zeros(n, dtype=np.int32) if known is None else known.copy()
        self._iparm = iparm
        self._finalizer = weakref.finalize(self, _release, lib, self._pt, iparm, n, self._perm)
        self._call(11)
        if known is None:
            _ORDERINGS.put(key, self._perm)
        self._call(22)
        if iparm[29] > 0 or iparm[22] > 0:  # zero or negative pivot (iparm[29]: its row)
            raise PardisoError(-4, 22)

    @property
    def nnz(self) -> int:
        """Non-zeros of `L` (PARDISO's count, `iparm[17]`)."""
        return int(self._iparm[17])

    def _call(self, phase: int, b=None, x=None, nrhs: int = 1) -> None:
        _call(
            self._lib,
            self._pt,
            self._iparm,
            phase,
            self.num_rows,
            self._a,
            self._ia,
            self._ja,
            b,
            x,
            perm=self._perm,
            nrhs=nrhs,
        )

    def _solve(self, b: np.ndarray, phase: int) -> np.ndarray:
        b = np.asarray(b, dtype=np.float64)
        if b.shape[0] != self.num_rows:
            raise ValueError(f"right-hand side must have {self.num_rows} rows, got {b.shape}")
        nrhs = 1 if b.ndim == 1 else b.shape[1]
        rhs = np.asfortranarray(b.reshape(self.num_rows, nrhs))  # columns contiguous
        out = np.zeros_like(rhs, order="F")
        self._call(phase, rhs, out, nrhs)
        return out.reshape(b.shape)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """:math:`A^{-1} b` for `b` `(N,)` or `(N, K)`."""
        return self._solve(b, 33)

    def draw(self, z: np.ndarray) -> np.ndarray:
        r""":math:`P^T L^{-T} z` `(N,)` or `(N, K)`.

        These are exact draws of :math:`N(0, A^{-1})` for standard normal `z`.
        """
        return self._solve(z, 333)

    def logdet(self) -> float:
        r""":math:`\log\det A = \sum_i \log d_i`.

        `d` is the factor's diagonal as `pardiso_getdiag` returns it.

        (For `mtype = 2` those are the squares :math:`L_{ii}^2`; the tests check the sum against a
        dense log-determinant.)
        """
        factor_diag = np.zeros(self.num_rows)
        matrix_diag = np.zeros(self.num_rows)
        err = ctypes.c_int32(0)
        self._lib.pardiso_getdiag(
            self._pt.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
            ctypes.c_void_p(factor_diag.ctypes.data),
            ctypes.c_void_p(matrix_diag.ctypes.data),
            ctypes.byref(ctypes.c_int32(1)),
            ctypes.byref(err),
        )
        if err.value != 0:
            raise PardisoError(err.value, 22)
        if not np.all(factor_diag > 0):
            raise PardisoError(-4, 22)
        return float(np.log(factor_diag).sum())
