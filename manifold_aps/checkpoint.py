"""Atomic file writes and checkpoint helpers (write a temp file, fsync, then rename)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path"]

_NAME_MAX_BYTES = 255  # longest file name (NAME_MAX) on ext4, xfs, btrfs, tmpfs, APFS
_SUFFIX_MAX_BYTES = 32  # a longer target suffix is not kept at the end of the temp name
_WRITER_ID_MAX_BYTES = 4 + 1 + 10 + 1 + 8  # "<host>.<pid>.<random>": 4 hex, a 32-bit pid, 8 hex


def _temp_name_parts(path: Path) -> tuple[str, str]:
    """The fixed head and tail of the temporary names of `path`: `.<stem>.<hash>.tmp.`, the suffix.

    A temp name is `head + "<host>.<pid>.<random>" + tail`, at most 255 bytes whatever the length
    of `path.name`: the stem is cut to fit, and the 8-hex hash of the full name keeps two targets
    whose cut stems agree apart. The suffix stays last (numpy.save appends `.npy` otherwise)
    unless it is longer than 32 bytes.
    """
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= _SUFFIX_MAX_BYTES else ""
    stem = path.name[: len(path.name) - len(suffix)]
    digest = hashlib.sha1(os.fsencode(path.name)).hexdigest()[:8]
    fixed = len(f"..{digest}.tmp.") + _WRITER_ID_MAX_BYTES + len(os.fsencode(suffix))
    while len(os.fsencode(stem)) > _NAME_MAX_BYTES - fixed:  # cut whole characters, not bytes
        stem = stem[:-1]
    return f".{stem}.{digest}.tmp.", suffix


def _host_tag() -> str:
    """4 hex characters of this machine's name: temps written from another host are left alone."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:4]


def _pid_is_running(pid: int) -> bool:
    """Whether process `pid` exists on this machine (one that is not ours counts as running)."""
    if os.name == "nt":  # os.kill(pid, 0) terminates the process there: never guess, keep the temp
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:  # not a pid this machine can have
        return False
    return True


def _remove_stale_temps(folder: Path, head: str, tail: str) -> None:
    """Delete temps of this target left by a killed writer of this host: its pid no longer runs.

    Only names of the exact form `head + "<host>.<pid>.<random>" + tail` with this host's tag are
    considered, so a concurrent writer (its pid runs) and other files are never touched.
    """
    pattern = re.compile(
        re.escape(head + _host_tag()) + r"\.(\d{1,10})\.[0-9a-f]{8}" + re.escape(tail) + r"\Z"
    )
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = pattern.match(entry.name) if entry.name.startswith(head) else None
            if match and not _pid_is_running(int(match.group(1))):
                with contextlib.suppress(OSError):  # another writer may have removed it first
                    os.unlink(entry.path)


def _create_temp(folder: Path, head: str, tail: str) -> tuple[Path, int]:
    """Create a new empty temp file in `folder`; returns its path and the mode the umask gives it.

    The file is opened with mode 0o666, so the system applies the umask (and any default ACL) as
    for any new file; reading the resulting mode back is the thread-safe way to learn the umask
    (`os.umask` can only be read by setting it, process-wide).
    """
    writer = f"{_host_tag()}.{os.getpid()}."
    for _ in range(100):
        tmp_path = folder / f"{head}{writer}{secrets.token_hex(4)}{tail}"
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        return tmp_path, mode
    raise FileExistsError(f"no free temporary name for {folder / (head + tail)!s} after 100 tries")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` atomically.

    The temporary file is fsync'ed before `os.replace`, so a crash leaves either the old file or
    the complete new one, never a truncated file. On an exception the temporary file is removed.
    The temporary file lies in the same folder (so the rename is atomic) under a name of at most
    255 bytes, `.<stem>.<hash>.tmp.<host>.<pid>.<random><suffix>`; temps of the same target left by
    a killed writer (whose pid no longer runs on this host) are removed by the next write. The new
    file gets the mode of any new file, 0o666 less the umask.

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
    head, tail = _temp_name_parts(path)
    _remove_stale_temps(path.parent, head, tail)
    tmp_path, mode = _create_temp(path.parent, head, tail)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, mode)  # a writer may have re-created the file with another mode
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
