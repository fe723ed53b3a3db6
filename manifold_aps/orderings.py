"""Fill-reducing orderings kept per sparsity pattern, for the sparse Cholesky back ends.

A likelihood search factors matrices of one sparsity pattern dozens of times; the ordering
depends only on the pattern, so it is computed once and looked up by a digest of the pattern.
Both `SparseCholesky`'s METIS ordering (SuperLU) and PARDISO's returned ordering use one
`OrderingCache` each. The orderings are deterministic, so a cache changes only the time.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["OrderingCache", "pattern_key"]


def pattern_key(indptr: np.ndarray, indices: np.ndarray) -> tuple:
    """A digest of a compressed sparsity pattern (values do not matter), sorted indices assumed."""
    digest = hashlib.blake2b(np.ascontiguousarray(indptr).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(indices).tobytes())
    return indptr.size, indices.size, digest.hexdigest()


class OrderingCache:
    """The last `kept` orderings by `pattern_key`, least recently used dropped; thread-safe.

    Arguments:
        kept: how many patterns to keep.
    """

    def __init__(self, kept: int = 16):
        self.kept = int(kept)
        self._orderings: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # fits factor in threads

    def get(self, key: tuple) -> np.ndarray | None:
        """The ordering kept for `key` (read-only), or None."""
        with self._lock:
            if key not in self._orderings:
                return None
            self._orderings.move_to_end(key)
            return self._orderings[key]

    def put(self, key: tuple, perm: np.ndarray) -> np.ndarray:
        """Keep a read-only copy of `perm` for `key`; returns the copy."""
        kept = np.array(perm, copy=True)
        kept.flags.writeable = False
        with self._lock:
            self._orderings[key] = kept
            while len(self._orderings) > self.kept:
                self._orderings.popitem(last=False)
        return kept
