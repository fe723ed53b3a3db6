"""Laplace-Beltrami eigenpairs (generalised problem with the mass matrix), cached on disk.

A cache file is reused only for the computation that wrote it: its name holds the domain's
fingerprint, `k` and a digest of the solver settings (`solver_settings`), and it is verified
(`check_eigenpairs`) before use. A file that fails is reported with a warning and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import scipy
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg

from manifold_aps.checkpoint import atomic_path

__all__ = [
    "cache_dir",
    "cache_path",
    "cached_eigenbasis",
    "check_eigenpairs",
    "solve_eigenbasis",
    "solver_digest",
    "solver_settings",
]

DENSE_LIMIT = 2500  # below this many nodes a dense solver is faster and more robust
FORMAT_VERSION = 2  # of the cache files; 1 was `<fingerprint>_k<k>.npz`, unverified
SPARSE_SHIFT = -1e-6  # shift-invert target, relative to the mean of diag(S) / M
SPARSE_SEED = 0  # seed of ARPACK's starting vector (scipy's default one is random per call)
CHECK_TOL = 1e-8  # tolerance of `check_eigenpairs` (a correct solve is ~1e-13)
CHECK_COLUMNS = 4  # eigenvectors whose residual and orthonormality `check_eigenpairs` tests


def cache_dir() -> Path:
    """Folder of the eigenbasis cache: `$MANIFOLD_APS_CACHE`, else `~/.cache/manifold_aps`."""
    root = os.environ.get("MANIFOLD_APS_CACHE") or Path.home() / ".cache" / "manifold_aps"
    return Path(root) / "eigen"


def solver_settings(num_nodes: int, k: int) -> dict:
    """Which solver `solve_eigenbasis` uses for `k` pairs on `num_nodes` nodes.

    The dict holds every setting that changes its result (plain types; `solver_digest` hashes
    them).

    Dense `scipy.linalg.eigh` for small problems or large `k`, else shift-invert
    `scipy.sparse.linalg.eigsh` from a seeded starting vector. The two (and the same solver
    with another `k`) return different bases of degenerate eigenspaces, so a result is only
    ever reused for the same settings and the same `k`.
    """
    common = {"format": FORMAT_VERSION, "dense_limit": DENSE_LIMIT, "scipy": scipy.__version__}
    if num_nodes <= DENSE_LIMIT or k > num_nodes // 3:
        return {"solver": "dense-eigh", **common}
    return {
        "solver": "shift-invert-eigsh",
        "shift": SPARSE_SHIFT,
        "seed": SPARSE_SEED,
        "tol": 0.0,
        **common,
    }


def solver_digest(num_nodes: int, k: int) -> str:
    """A short hex digest of `solver_settings(num_nodes, k)` (part of the cache file name)."""
    text = json.dumps(solver_settings(num_nodes, k), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_path(domain, k: int) -> Path:
    """The cache file of the `k` lowest eigenpairs of `domain`: fingerprint, k and solver digest."""
    return cache_dir() / f"{domain.fingerprint}_k{k}_{solver_digest(domain.num_nodes, k)}.npz"


def solve_eigenbasis(stiffness: sp.spmatrix, mass: np.ndarray, k: int):
    r"""Solve :math:`S\phi = \lambda M\phi` for the `k` smallest eigenvalues.

    Deterministic: the same inputs give the same bits (the sparse solver starts from a seeded
    vector). The solver is chosen by `solver_settings`.

    Arguments:
        stiffness: symmetric positive semi-definite sparse `(N, N)`.
        mass: diagonal of `M`, shape `(N,)`.
        k: number of pairs.

    Returns:
        eigenvalues `(k,)` ascending (the first is 0 up to round-off, clipped at 0) and
        mass-orthonormal eigenvectors `(N, k)`, each with a fixed sign (largest entry positive).
    """
    n = stiffness.shape[0]
    settings = solver_settings(n, k)
    if settings["solver"] == "dense-eigh":
        vals, vecs = scipy.linalg.eigh(
            stiffness.toarray(), np.diag(mass), subset_by_index=[0, k - 1]
        )
    else:
        # Shift-invert around a small negative shift: S - sigma M is positive definite.
        scale = float(np.mean(stiffness.diagonal() / mass))
        start = np.random.default_rng(settings["seed"]).standard_normal(n)
        vals, vecs = scipy.sparse.linalg.eigsh(
            stiffness.tocsc(),
            k=k,
            M=sp.diags(mass).tocsc(),
            sigma=settings["shift"] * scale,
            which="LM",
            v0=start,
            tol=settings["tol"],
        )
        order = np.argsort(vals)
        vals, vecs = vals[order], vecs[:, order]
    vals = np.clip(vals, 0.0, None)
    # Deterministic signs: the entry of largest magnitude is positive.
    idx = np.argmax(np.abs(vecs), axis=0)
    vecs = vecs * np.sign(vecs[idx, np.arange(vecs.shape[1])])
    return vals, vecs


def check_eigenpairs(
    stiffness: sp.spmatrix, mass: np.ndarray, k: int, values, vectors
) -> str | None:
    r"""Cheap checks that `values`, `vectors` are `k` eigenpairs of :math:`S\phi = \lambda M\phi`.

    Shapes `(k,)` and `(N, k)`, float64, finite, ascending and non-negative; and, on
    `CHECK_COLUMNS` columns spread over `0..k-1` (first and last included), mass-orthonormality
    against all `k` columns, :math:`|\Phi^T M \phi_j - e_j|_\infty`, and the backward error

    .. math:: \frac{\|S\phi_j - \lambda_j M\phi_j\|}{(\|S\|_\infty + \lambda_j \max M)\,\|\phi_j\|}

    (the matrix norms, not :math:`\|S\phi_j\|`, keep it meaningful for the constant mode, whose
    :math:`S\phi_0` is pure round-off), each below `CHECK_TOL`. Cost :math:`O(Nk)`.

    Returns:
        None when every check passes, else what failed (one line).
    """
    n = stiffness.shape[0]
    values, vectors = np.asarray(values), np.asarray(vectors)
    if values.shape != (k,) or vectors.shape != (n, k):
        return f"shapes {values.shape}, {vectors.shape}, expected ({k},), ({n}, {k})"
    if values.dtype != np.float64 or vectors.dtype != np.float64:
        return f"dtypes {values.dtype}, {vectors.dtype}, expected float64"
    if not (np.all(np.isfinite(values)) and np.all(np.isfinite(vectors))):
        return "non-finite values"
    if values[0] < 0 or np.any(np.diff(values) < 0):
        return "eigenvalues not ascending and non-negative"
    cols = np.unique(np.linspace(0, k - 1, min(k, CHECK_COLUMNS)).round().astype(int))
    some = vectors[:, cols]
    gram = vectors.T @ (mass[:, None] * some)  # (k, len(cols))
    gram[cols, np.arange(cols.size)] -= 1.0
    if np.abs(gram).max() > CHECK_TOL:
        return f"not mass-orthonormal (error {np.abs(gram).max():.1e})"
    residual = np.linalg.norm(stiffness @ some - values[cols] * (mass[:, None] * some), axis=0)
    s_norm = abs(stiffness).sum(axis=1).max()
    scale = (s_norm + values[cols] * mass.max()) * np.linalg.norm(some, axis=0)
    worst = float(np.max(residual / scale))
    if not worst <= CHECK_TOL:
        return f"eigen-residual {worst:.1e} above {CHECK_TOL:.0e}"
    return None


def _checksum(values: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(values).tobytes())
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()


def _save(path: Path, digest: str, values: np.ndarray, vectors: np.ndarray) -> None:
    """Write a cache file atomically (arrays, the solver digest and a checksum of the arrays)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            values=values,
            vectors=vectors,
            digest=np.array(digest),
            checksum=np.array(_checksum(values, vectors)),
        )


def _load(path: Path, digest: str, stiffness, mass: np.ndarray, k: int):
    """Read and verify a cache file; raises `ValueError` (or the reader's error) if unusable."""
    with np.load(path, allow_pickle=False) as data:
        values, vectors = data["values"], data["vectors"]
        stored_digest, checksum = str(data["digest"]), str(data["checksum"])
    if stored_digest != digest:
        raise ValueError(f"solver digest {stored_digest}, expected {digest}")
    if checksum != _checksum(values, vectors):
        raise ValueError("checksum mismatch (the arrays were modified)")
    problem = check_eigenpairs(stiffness, mass, k, values, vectors)
    if problem is not None:
        raise ValueError(problem)
    return values, vectors


def cached_eigenbasis(domain, k: int, *, use_disk: bool = True):
    """Eigenpairs of `domain` (see `solve_eigenbasis`), read from or written to the disk cache.

    The file is `cache_path(domain, k)`: only the same domain, `k` and solver settings share it,
    so the result never depends on what the cache holds. A file that cannot be read or fails
    `check_eigenpairs` (truncated, modified, stale) gives a `RuntimeWarning` and is recomputed
    and rewritten.

    Returns:
        eigenvalues `(k,)` and eigenvectors `(N, k)`, float64 numpy arrays.
    """
    stiffness, mass = domain.stiffness(), domain.mass.numpy()
    path, digest = cache_path(domain, k), solver_digest(domain.num_nodes, k)
    if use_disk and path.is_file():
        try:
            return _load(path, digest, stiffness, mass, k)
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
            warnings.warn(
                f"eigenbasis cache file {path} is unusable ({err}); recomputing it",
                RuntimeWarning,
                stacklevel=2,
            )
    vals, vecs = solve_eigenbasis(stiffness, mass, k)
    if use_disk:
        try:
            _save(path, digest, vals, vecs)
        except OSError:
            pass  # a read-only home is no reason to fail; the result is still returned
    return vals, vecs
