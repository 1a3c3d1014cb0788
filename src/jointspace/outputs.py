"""The one guard of every command that writes a folder: it never replaces what jointspace did not write.

An output folder is of one type (shard folder, run, index, export, embeddings, samples, audit), and each
type is recognised by files only jointspace writes there (`OutputType.marks`). A command may write `out`
when it is missing or empty; it replaces an existing folder only when that folder is of its own type and
`--overwrite` was given. It never writes over the working directory or a folder holding it, nor over its
own source or a folder holding the source. New contents are written in a staging folder beside `out`
(same disk) and moved into place whole (`staged`), so a failure leaves the old folder as it was. A
full disk or quota while writing is one `DiskFull` line (`disk_guard`), with nothing half-written left.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from jointspace.errors import JointspaceError
from jointspace.swap import owned_prefix, recover_interrupted, remove_leftovers, swap_in


class OutputError(JointspaceError, FileExistsError):
    """An output folder would replace something the command must not replace; the message says what."""


class DiskFull(JointspaceError, OSError):
    """The disk (or the quota) filled while writing: one line with the path, the bytes needed and free."""

    def __init__(self, path: Path, needed: int | None, free: int, written: int | None = None):
        need = (f"needs about {_mb(needed)}" if needed else
                f"needs more than the {_mb(written or 0)} written when it filled")
        super().__init__(errno.ENOSPC, f"{path}: no space left on the disk: {need}, {_mb(free)} free; "
                                       "nothing was left half-written")

    def __str__(self) -> str:
        return str(self.strerror)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


FULL_MARKS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122",
              "database or disk is full")


def free_bytes(path: Path) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def disk_filled(err: BaseException, where: Path) -> bool:
    """Whether `err` came from a full disk or quota (ENOSPC, EDQUOT, or a library's write error while
    less than 1 MB is free where it wrote)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(err, (OSError, RuntimeError)) and not type(err).__module__.startswith(("sqlite3", "safetensors")):
        return False
    return any(mark in str(err).lower() for mark in FULL_MARKS) or free_bytes(where) < (1 << 20)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


@contextlib.contextmanager
def disk_guard(path: Path, needed: int | None = None, scratch: Path | None = None) -> Iterator[None]:
    """Turn a full disk while writing `path` into one DiskFull line (what it needed, or what `scratch`
    held when it filled, and what is free). Removing what was half-written is the writer's own cleanup."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as err:
        if not disk_filled(err, Path(path).parent):
            raise
        written = _size(scratch) if scratch is not None else None
        raise DiskFull(Path(path), needed, free_bytes(Path(path).parent), written) from None


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A fresh folder in `parent` with the permissions the umask gives (mkdtemp alone makes it 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o777 & ~_umask())
    return path


def follow_umask(path: Path) -> None:
    """Give a file written through mkstemp (0600) the permissions the umask gives a new file."""
    path.chmod(0o666 & ~_umask())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (tmp file + fsync + rename)."""
    with atomic_file(path, len(text.encode())) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def atomic_file(path: Path, needed: int | None = None) -> Iterator[Path]:
    """A temporary file beside `path` for any writer to fill; when the block ends it is fsynced, given the
    permissions the umask gives and renamed onto `path` (on an error it goes and `path` is untouched); a
    full disk is one DiskFull line (`needed`: the bytes it needs, when known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with disk_guard(path, needed):
            yield tmp
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        follow_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def staging(out: Path, before_swap: Callable[[], None] | None = None) -> Iterator[Path]:
    """A staging folder beside `out` (same disk; named for this process, so a killed writer's is removed
    by the next one) to write into; when the block ends it is swapped in place of `out` (after
    `before_swap`), and on an error it goes and `out` is untouched."""
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.tmp-"
    remove_leftovers(out.parent, prefix)
    tmp = make_temp_dir(out.parent, owned_prefix(prefix))
    try:
        with disk_guard(out, scratch=tmp):
            yield tmp
            if before_swap is not None:
                before_swap()
        swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _present(folder: Path, name: str) -> bool:
    return any(folder.glob(name)) if any(c in name for c in "*?[") else (folder / name).exists()


def json_with(name: str, *keys: str) -> Callable[[Path], bool]:
    """A `verify` for output types marked by a JSON file: `folder/name` is an object holding `keys`."""

    def verify(folder: Path) -> bool:
        value = json.loads((folder / name).read_text())
        return isinstance(value, dict) and all(k in value for k in keys)

    return verify


def _holds(parent: Path, child: Path) -> bool:
    return parent == child or parent in child.parents


@dataclass(frozen=True)
class OutputType:
    """A type of folder a command writes: its name in messages, the entries that mark a folder as one (any
    one tuple of names, or glob patterns, all present), and optionally a check of what a marked folder
    holds (`verify`: a `dataset.json` of another tool is not a shard folder)."""

    noun: str
    marks: tuple[tuple[str, ...], ...]
    verify: Callable[[Path], bool] | None = None

    @property
    def a(self) -> str:
        """The noun with its article."""
        return f"{'an' if self.noun[0] in 'aeiou' else 'a'} {self.noun}"

    def holds(self, folder: str | Path) -> bool:
        """Whether `folder` is an output of this type."""
        folder = Path(folder)
        if not folder.is_dir() or not any(all(_present(folder, n) for n in names) for names in self.marks):
            return False
        try:
            return self.verify is None or bool(self.verify(folder))
        except (OSError, ValueError):  # unreadable or not what this type holds
            return False

    def check(self, out: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = (),
              flag: str = "--overwrite") -> bool:
        """Raise OutputError unless the command may write `out`; True when an existing output of this type
        will be replaced (with `overwrite`)."""
        out = Path(out)
        where = out.resolve()
        if _holds(where, Path.cwd().resolve()):
            raise OutputError(f"{out}: is the working directory or holds it; write to a new folder")
        for src in sources:
            if _holds(where, Path(src).resolve()):
                raise OutputError(f"{out}: would replace the source {src}; write to a new folder")
        if out.is_symlink():
            raise OutputError(f"{out}: is a symbolic link; write to a new folder")
        if not out.exists():
            return False
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is a file, not {self.a}; refusing to replace it")
        entries = sorted(p.name for p in out.iterdir())
        if not entries:
            return False
        if not self.holds(out):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputError(f"{out}: exists and is not {self.a} (it holds {shown}); refusing to replace it: "
                              "write to a new folder")
        if not overwrite:
            raise OutputError(f"{out}: {self.a} exists there already: pass {flag} to replace it")
        return True

    @contextlib.contextmanager
    def staged(self, out: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = (),
               flag: str = "--overwrite") -> Iterator[Path]:
        """Check `out`, yield a staging folder beside it to write into, and move it into place when the
        block ends (the old output then goes); on an error the staging folder goes and `out` is untouched."""
        out = Path(out)
        sources = list(sources)
        recover_interrupted(out)  # a swap killed between its two renames left the old folder aside
        self.check(out, overwrite, sources, flag)
        with staging(out, lambda: self.check(out, overwrite, sources, flag)) as tmp:  # judged again: it may
            yield tmp  # have changed meanwhile
