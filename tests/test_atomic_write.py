"""`atomic_path`: bounded temp names, stale temps, the umask, and nothing left on failure.

Stale temps are those of killed writers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO

from manifold_aps.checkpoint import atomic_path

NAME_MAX_BYTES = 255

# A writer that opens the temp, writes half a file and waits to be killed.
HANGING_WRITER = textwrap.dedent(
    """
    import sys, time
    from manifold_aps.checkpoint import atomic_path
    with atomic_path(sys.argv[1]) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"half a file")
        print(tmp, flush=True)
        time.sleep(60)
    """
)


@pytest.mark.parametrize("stem", ["a" * 249, "é" * 124], ids=["253-ascii", "252-bytes-utf8"])
def test_longest_valid_names_are_written(tmp_path, stem):
    target = tmp_path / f"{stem}.npy"
    assert len(os.fsencode(target.name)) in (252, 253)
    with atomic_path(target) as tmp:
        assert len(os.fsencode(tmp.name)) <= NAME_MAX_BYTES and tmp.parent == tmp_path
        assert tmp.name.endswith(".npy")  # numpy.save would append its own suffix otherwise
        np.save(tmp, np.arange(3))
    assert np.load(target).tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


def test_two_long_names_with_the_same_start_get_distinct_temps(tmp_path):
    first, second = tmp_path / ("b" * 250 + "1.pt"), tmp_path / ("b" * 250 + "2.pt")
    with atomic_path(first) as tmp_first, atomic_path(second) as tmp_second:
        head_first, head_second = (
            tmp_first.name.split(".tmp.")[0],
            tmp_second.name.split(".tmp.")[0],
        )
        assert (
            head_first[:-9] == head_second[:-9] and head_first != head_second
        )  # cut stems, 2 hashes
        tmp_first.write_bytes(b"1")
        tmp_second.write_bytes(b"2")
    assert first.read_bytes() == b"1" and second.read_bytes() == b"2"


def test_temp_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "state.pt"
    target.write_bytes(b"old")
    writer = subprocess.Popen(
        [sys.executable, "-c", HANGING_WRITER, str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        stale = tmp_path / os.path.basename(writer.stdout.readline().strip())
    finally:
        writer.kill()  # SIGKILL: no finally clause of the writer runs
        writer.wait()
    assert stale.exists() and stale.name.startswith(".state.") and target.read_bytes() == b"old"

    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]

    # a temp of the same target whose writer still runs (same name, a live pid) must survive
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        head, writer_id = stale.name.split(".tmp.")  # ".state.<hash>", "<host>.<pid>.<random>.pt"
        host, _dead_pid, rest = writer_id.split(".", 2)
        live = stale.with_name(f"{head}.tmp.{host}.{sleeper.pid}.{rest}")
        live.write_bytes(b"in progress")
        other_target = stale.with_name(
            ".other" + stale.name[len(".state") :]
        )  # dead pid, another stem
        other_target.write_bytes(b"not ours")
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"newer")
        assert live.read_bytes() == b"in progress" and other_target.read_bytes() == b"not ours"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert target.read_bytes() == b"newer"


def test_a_concurrent_write_of_the_same_target_keeps_the_other_temp(tmp_path):
    target = tmp_path / "scores.json"
    with atomic_path(target) as outer:
        outer.write_text("outer")
        with atomic_path(target) as inner:
            inner.write_text("inner")
        assert outer.read_text() == "outer" and target.read_text() == "inner"
    assert target.read_text() == "outer"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_written_file_has_the_mode_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_path(tmp_path / "a.npy") as tmp:
            np.save(tmp, np.arange(3))
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.unlink()  # a writer that re-creates the file with its own mode
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
    finally:
        os.umask(previous)
    for name in ("a.npy", "b.txt"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == oct(0o666 & ~umask)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_a_name_over_255_bytes_fails_at_the_rename_and_leaves_no_temp(tmp_path):
    with (
        pytest.raises(OSError, match="too long"),
        atomic_path(tmp_path / ("c" * 300 + ".npy")) as tmp,
    ):
        np.save(tmp, np.arange(3))
    assert list(tmp_path.iterdir()) == []
