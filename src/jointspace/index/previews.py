"""The PNG previews of a Milvus-backed index: a small SQLite file in the index folder (one row per sample
key). Read from the saved file; the first change copies it into a private scratch file, which `save`
puts into the folder being written."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from pathlib import Path

from jointspace.index.filters import IndexStoreError
from jointspace.index.folder import PREVIEWS_FILE
from jointspace.swap import owned_prefix, remove_leftovers

SCRATCH_PREFIX = ".jointspace-previews-"
SCHEMA = "CREATE TABLE previews (key TEXT PRIMARY KEY, png BLOB NOT NULL);"
IN_CHUNK = 500  # keys per `IN (...)` lookup


class Previews:
    def __init__(self, saved: Path | None, scratch_dir: Path):
        self.scratch_dir, self._tmp, self._lock = Path(scratch_dir), None, threading.RLock()
        self.db: sqlite3.Connection | None = None
        if saved is not None:
            try:
                self.db = sqlite3.connect(f"{saved.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
                self.db.execute("SELECT COUNT(*) FROM previews").fetchone()
            except sqlite3.DatabaseError as err:
                raise IndexStoreError(f"{saved}: cannot be read as the index's previews ({err})") from None

    def _writable(self) -> sqlite3.Connection:
        if self._tmp is None:
            remove_leftovers(self.scratch_dir, SCRATCH_PREFIX)
            self._tmp = tempfile.TemporaryDirectory(prefix=owned_prefix(SCRATCH_PREFIX), dir=self.scratch_dir)
            new = sqlite3.connect(Path(self._tmp.name) / PREVIEWS_FILE, check_same_thread=False)
            if self.db is not None:
                self.db.backup(new)
                self.db.close()
            else:
                new.executescript(SCHEMA)
            self.db = new
        return self.db

    def put(self, previews: dict[str, bytes] | None) -> None:
        if not previews:
            return
        with self._lock:
            db = self._writable()
            db.executemany("INSERT OR REPLACE INTO previews (key, png) VALUES (?, ?)", list(previews.items()))
            db.commit()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            row = self.db.execute("SELECT png FROM previews WHERE key=?", [key]).fetchone() if self.db else None
        return bytes(row[0]) if row else None

    def having(self, keys: list[str]) -> set[str]:
        """Which of `keys` have a preview."""
        out: set[str] = set()
        with self._lock:
            for s in range(0, len(keys) if self.db else 0, IN_CHUNK):
                part = keys[s : s + IN_CHUNK]
                out.update(r[0] for r in self.db.execute(
                    f"SELECT key FROM previews WHERE key IN ({','.join('?' * len(part))})", part))
        return out

    def drop(self, keys: set[str]) -> None:
        if not keys:
            return
        with self._lock:
            db = self._writable()
            db.executemany("DELETE FROM previews WHERE key=?", [(k,) for k in keys])
            db.commit()

    def nbytes(self) -> int:
        with self._lock:
            if self.db is None:
                return 0
            return int(self.db.execute("PRAGMA page_count").fetchone()[0]
                       * self.db.execute("PRAGMA page_size").fetchone()[0])

    def save_into(self, folder: Path) -> None:
        with self._lock:
            out = sqlite3.connect(folder / PREVIEWS_FILE)
            if self.db is not None:
                self.db.backup(out)
            else:
                out.executescript(SCHEMA)
            out.close()

    def close(self) -> None:
        with self._lock:
            if self.db is not None:
                self.db.close()
                self.db = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
