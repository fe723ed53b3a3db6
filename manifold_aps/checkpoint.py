"""Atomic file writes and checkpoint helpers (write a temp file, fsync, then rename)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically.

    The temporary file is fsync'ed before `os.replace`, so a crash leaves either the old file or
    the complete new one, never a truncated file. On an exception the temporary file is removed.

    Example:
        >>> import numpy as np, tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "a.npy")
        >>> with atomic_path(target) as tmp:
        ...     np.save(tmp, np.arange(3))
        >>> np.load(target).tolist()
        [0, 1, 2]
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the target's suffix last: some writers (numpy.save) append their own otherwise.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp.", suffix=path.suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
