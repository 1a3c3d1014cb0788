"""Putting a freshly written output folder (an index, shards, an export...) in place of the old one, undoing a swap a crash cut short, and
removing what killed writers left: staging and scratch folders carry their process's host and pid."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

SLOW_SWAP_ENV = "JOINTSPACE_TEST_SLOW_INDEX_SWAP_S"


def recover_interrupted(path: Path) -> None:
    """An index folder missing because a write was killed after moving it aside: put the old version
    back (the new one was not in place yet). A killed write's staging folder (`.<name>.tmp-*`) is never
    read; the next save removes it (remove_leftovers), and the next swap any old version left beside."""
    if path.exists() or not path.parent.exists() or not any(path.parent.glob(f"{glob.escape(f'.{path.name}.old-')}*")):
        return  # (no lock file is made beside a folder that never had a swap)
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
    for stale in path.parent.glob(f".{path.name}.old-*"):  # under the lock: no swap is between its renames
        shutil.rmtree(stale, ignore_errors=True)
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


def owned_prefix(prefix: str) -> str:
    """`prefix` plus this process's owner (host, pid namespace) and pid, for a temporary folder's name;
    tempfile's random tail follows (see remove_leftovers)."""
    return f"{prefix}{_owner()}-{os.getpid()}-"


def remove_leftovers(folder: Path, prefix: str) -> list[Path]:
    """Remove the folders named by `owned_prefix(prefix)` in `folder` whose process is gone (killed
    mid-build or mid-save). Only this host's and pid namespace's are judged (a name must be exactly
    owner-pid-random, so host `a` never reads host `a-2`'s); a live process's are kept."""
    owner, removed = _owner(), []
    for stale in folder.glob(f"{glob.escape(prefix)}*"):
        m = re.fullmatch(rf"{re.escape(prefix + owner)}-(\d+)-[a-z0-9_]+", stale.name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _owner() -> str:
    """This host and its pid namespace (containers sharing a hostname have their own pids)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}-{namespace}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
