"""Laplace-Beltrami eigenpairs (generalised problem with the mass matrix), cached on disk."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg

from manifold_aps.checkpoint import atomic_path

__all__ = ["cache_dir", "cached_eigenbasis", "solve_eigenbasis"]

DENSE_LIMIT = 2500  # below this many nodes a dense solver is faster and more robust


def cache_dir() -> Path:
    """Folder of the eigenbasis cache: `$MANIFOLD_APS_CACHE`, else `~/.cache/manifold_aps`."""
    root = os.environ.get("MANIFOLD_APS_CACHE") or Path.home() / ".cache" / "manifold_aps"
    return Path(root) / "eigen"


def solve_eigenbasis(stiffness: sp.spmatrix, mass: np.ndarray, k: int):
    r"""Solve :math:`S\phi = \lambda M\phi` for the `k` smallest eigenvalues.

    Arguments:
        stiffness: symmetric positive semi-definite sparse `(N, N)`.
        mass: diagonal of `M`, shape `(N,)`.
        k: number of pairs.

    Returns:
        eigenvalues `(k,)` ascending (the first is 0 up to round-off, clipped at 0) and
        mass-orthonormal eigenvectors `(N, k)`, each with a fixed sign (largest entry positive).
    """
    n = stiffness.shape[0]
    if n <= DENSE_LIMIT or k > n // 3:
        vals, vecs = scipy.linalg.eigh(
            stiffness.toarray(), np.diag(mass), subset_by_index=[0, k - 1]
        )
    else:
        # Shift-invert around a small negative shift: S - sigma M is positive definite.
        scale = float(np.mean(stiffness.diagonal() / mass))
        vals, vecs = scipy.sparse.linalg.eigsh(
            stiffness.tocsc(), k=k, M=sp.diags(mass).tocsc(), sigma=-1e-6 * scale, which="LM"
        )
        order = np.argsort(vals)
        vals, vecs = vals[order], vecs[:, order]
    vals = np.clip(vals, 0.0, None)
    # Deterministic signs: the entry of largest magnitude is positive.
    idx = np.argmax(np.abs(vecs), axis=0)
    vecs = vecs * np.sign(vecs[idx, np.arange(vecs.shape[1])])
    return vals, vecs


def cached_eigenbasis(domain, k: int, *, use_disk: bool = True):
    """Eigenpairs of `domain`, read from or written to the disk cache keyed by its fingerprint."""
    folder = cache_dir()
    if use_disk and folder.is_dir():
        for path in sorted(folder.glob(f"{domain.fingerprint}_k*.npz")):
            try:
                k_have = int(path.stem.rsplit("_k", 1)[1])
            except ValueError:
                continue
            if k_have >= k:
                with np.load(path) as data:
                    return data["values"][:k], data["vectors"][:, :k]
    vals, vecs = solve_eigenbasis(domain.stiffness(), domain.mass.numpy(), k)
    if use_disk:
        try:
            with atomic_path(folder / f"{domain.fingerprint}_k{k}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, values=vals, vectors=vecs)
        except OSError:
            pass  # a read-only home is no reason to fail; the result is still returned
    return vals, vecs
