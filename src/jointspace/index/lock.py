"""The writer lock of an index folder: every command that changes an index (build onto it, add, delete)
holds it from before it reads the folder until after its new version is swapped in, so a second writer
waits and then starts from what the first saved. Readers (search, serve, info) take no lock.

The lock is an flock on `.<name>.writer.lock` beside the folder (not swap.py's `.<name>.lock`, which a
save takes inside it); its holder writes its pid there, and empties it before letting go."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from jointspace.index.filters import IndexStoreError

LOCK_TIMEOUT_S = 600.0  # the default wait for another writer (--lock-timeout)
POLL_S = 0.1
SAY_WAITING_AFTER_S = 2.0  # a wait longer than this is said once (on_wait); a shorter one is silent


class IndexLockError(IndexStoreError):
    """Another writer held the index's writer lock for longer than the wait allowed."""


def lock_file(index: str | Path) -> Path:
    """The writer lock file of an index folder (beside it; the path resolved, so every spelling of the
    folder shares one lock)."""
    path = Path(index).resolve()
    return path.parent / f".{path.name}.writer.lock"


def holder(index: str | Path) -> str:
    """The pid written by the writer holding the lock, or 'unknown' (not written yet, or no holder)."""
    try:
        text = lock_file(index).read_text().strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


@contextlib.contextmanager
def writer_lock(index: str | Path, timeout_s: float = LOCK_TIMEOUT_S,
                on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the index folder's writer lock for the block, waiting up to `timeout_s` seconds for another
    writer (IndexLockError past that). `on_wait` hears one line when the wait lasts over a moment."""
    path = lock_file(index)
    if not path.parent.is_dir():  # no folder there to change: opening it names what is missing
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, index, timeout_s, on_wait)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, index: str | Path, timeout_s: float, on_wait: Callable[[str], None] | None) -> None:
    start = time.monotonic()
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        waited = time.monotonic() - start
        if waited >= timeout_s:
            raise IndexLockError(f"{index}: another writer (pid {holder(index)}) holds the index's writer lock "
                                 f"{lock_file(index)}; gave up after {timeout_s:g} s: let it finish, or give "
                                 "a longer --lock-timeout") from None
        if on_wait is not None and not said and waited >= SAY_WAITING_AFTER_S:
            on_wait(f"waiting for {index}: another writer (pid {holder(index)}) holds its writer lock "
                    f"(up to {timeout_s:g} s, --lock-timeout)")
            said = True
        time.sleep(min(POLL_S, max(timeout_s - waited, 0.0)))
