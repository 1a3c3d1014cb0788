"""Putting a freshly written index folder in place of the old one, and undoing a swap a crash cut short."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from pathlib import Path

SLOW_SWAP_ENV = "JOINTSPACE_TEST_SLOW_INDEX_SWAP_S"


def recover_interrupted(path: Path) -> None:
    """An index folder missing because a write was killed after moving it aside: put the old version
    back (the new one was not in place yet). A killed write's staging folder (`.<name>.tmp-*`) is only
    left over; it is never read."""
    if path.exists() or not path.parent.exists():
        return
    with _swap_lock(path):  # a live write holds it between its two renames
        olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if not path.exists() and olds:
            os.replace(olds[-1], path)


@contextlib.contextmanager
def _swap_lock(path: Path):
    """An exclusive lock (a lock file beside the folder) held by a swap and by a recovery."""
    with open(path.parent / f".{path.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def swap_in(tmp: Path, path: Path) -> None:
    """Put folder `tmp` at `path`, replacing an old one; the old one is restored if the swap fails."""
    with _swap_lock(path):
        _swap_unlocked(tmp, path)


def _swap_unlocked(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(path, old)
    if os.environ.get(SLOW_SWAP_ENV):  # crash tests only: widen the window between the two renames
        time.sleep(float(os.environ[SLOW_SWAP_ENV]))
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
