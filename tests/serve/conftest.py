"""Serve tests reuse the index tests' tiny run and index (same on-disk cache, trained once per session)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_jointspace_index_fixtures",
                                               Path(__file__).parents[1] / "index" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
tiny_run = _fixtures.tiny_run
tiny_index = _fixtures.tiny_index
tiny_milvus_index = _fixtures.tiny_milvus_index


@pytest.fixture(scope="module")
def own_milvus_index(tmp_path_factory, tiny_run, digits_dir) -> Path:
    """The tiny index in a Milvus Lite file of this test module's own, closed here, so that a `serve`
    subprocess can open it (a Lite file admits one process at a time; the shared fixture's file is held
    by this process)."""
    pytest.importorskip("milvus_lite")
    from jointspace.index.folder import read_meta
    from jointspace.index.milvus_conn import close_clients

    index = _fixtures.build_tiny_milvus(tmp_path_factory.mktemp("own-milvus"), tiny_run, digits_dir)
    close_clients(read_meta(index / "meta.json")["uri"])
    return index


@pytest.fixture
def served():
    """A factory: `with served(index_dir, token=None) as url:` runs the real `jointspace serve` (uvicorn
    on 127.0.0.1, a free port) and stops it after."""
    import contextlib
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    @contextlib.contextmanager
    def serve(index_dir: Path, token: str | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        cmd = [str(Path(sys.executable).parent / "jointspace"), "serve", str(index_dir), "--port", str(port)]
        proc = subprocess.Popen(cmd + (["--token", token] if token else []), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.time() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"jointspace serve exited with {proc.returncode}: {proc.stdout.read()}")
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                        break
                except OSError:
                    if time.time() > deadline:
                        raise TimeoutError(f"{url} did not come up") from None
                    time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    return serve
