"""The one guard of every command that writes a folder: it never replaces what jointspace did not write.

An output folder is of one kind (shard folder, run, index, export, embeddings, samples, audit), and each
kind is recognised by files only jointspace writes there (`OutputKind.marks`). A command may write `out`
when it is missing or empty; it replaces an existing folder only when that folder is of its own kind and
`--overwrite` was given. It never writes over the working directory or a folder holding it, nor over its
own source or a folder holding the source. New contents are written in a staging folder beside `out`
(same disk) and moved into place whole (`staged`), so a failure leaves the old folder as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from jointspace.swap import owned_prefix, recover_interrupted, remove_leftovers, swap_in


class OutputError(FileExistsError):
    """An output folder would replace something the command must not replace; the message says what."""


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    follow_umask(Path(tmp))
    os.replace(tmp, path)
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
    """A `verify` for kinds marked by a JSON file: `folder/name` is an object holding `keys`."""

    def verify(folder: Path) -> bool:
        value = json.loads((folder / name).read_text())
        return isinstance(value, dict) and all(k in value for k in keys)

    return verify


def _holds(parent: Path, child: Path) -> bool:
    return parent == child or parent in child.parents


@dataclass(frozen=True)
class OutputKind:
    """A kind of folder a command writes: its name in messages, the entries that mark a folder as one (any
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
        """Whether `folder` is an output of this kind."""
        folder = Path(folder)
        if not folder.is_dir() or not any(all(_present(folder, n) for n in names) for names in self.marks):
            return False
        try:
            return self.verify is None or bool(self.verify(folder))
        except (OSError, ValueError):  # unreadable or not what this kind writes
            return False

    def check(self, out: str | Path, overwrite: bool = False, sources: Iterable[str | Path] = (),
              flag: str = "--overwrite") -> bool:
        """Raise OutputError unless the command may write `out`; True when an existing output of this kind
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
