"""`index build` under torchrun with 2 CPU ranks (gloo) gives the single-process index: the same items,
vectors within 1e-6, the same class list and previews; into FAISS (rank 0 merges the parts), a Milvus
Lite file (rank 0 inserts every rank's rows: one process opens a Lite file) and a Milvus server (every
rank inserts its own rows; the server is Milvus Lite's own gRPC server, `python -m milvus_lite server`)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import numpy as np
import pytest

from jointspace.index.backend import open_store
from jointspace.index.build_parts import my_part

pytestmark = pytest.mark.usefixtures("multiprocess_lock")  # several processes of its own: one such test at a time

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv_backend=c10d",
            "--rdzv_endpoint=127.0.0.1:0"]
WORKER = textwrap.dedent("""
    import sys
    from jointspace.cli import app
    from jointspace.engine.distributed import cleanup, init_distributed
    from jointspace.index import build
    from jointspace.index.build import build_index

    info = init_distributed("cpu")  # one process group for the three builds (one torchrun start: ~20 s)
    run, shards, base, server = sys.argv[1:]
    app(["index", "build", run, shards, "--out", f"{base}/faiss"], standalone_mode=False)
    try:  # a failure on one rank (rank 0: the folder exists) stops every rank, none waits for the others
        build_index(run, shards, f"{base}/faiss")
    except Exception as err:
        print(f"rank {info.rank} stopped: {type(err).__name__}: {err}", flush=True)
    real_png = build.preview_png
    if info.rank == 1:  # rank 1 fails while embedding: rank 0, receiving the parts, stops too
        build.preview_png = lambda *a: (_ for _ in ()).throw(OSError("disk gone"))
    try:
        build_index(run, shards, f"{base}/broken")
    except Exception as err:
        print(f"rank {info.rank} stopped: {type(err).__name__}: {err}", flush=True)
    build.preview_png = real_png
    if server != "-":
        build_index(run, shards, f"{base}/lite", backend="milvus", uri=f"{base}/lite.db")
        build_index(run, shards, f"{base}/server", backend="milvus", uri=server, collection="dist")
    cleanup(info)
""")


def run_torchrun(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """As tests/engine/test_distributed.py: torchrun's free rendezvous port can be taken before it binds
    it; only that failure is retried (once)."""
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "ddress already in use" in proc.stderr + proc.stdout:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    return proc


def vectors_of(store) -> dict[tuple[str, str], np.ndarray]:
    """(key, modality) -> vector of every item, from either backend."""
    if getattr(store, "backend", "faiss") == "milvus":
        from jointspace.index.milvus_conn import iter_rows

        rows = iter_rows(store.client, store.target, "", ["key", "modality", "vector"])
        return {(r["key"], r["modality"]): np.asarray(r["vector"], np.float32) for r in rows}
    rows = store.db.execute("SELECT id, key, modality FROM items").fetchall()
    # numpy's reconstruct even after faiss.contrib.torch_utils (imported by pytorch-metric-learning in this
    # process, depending on which tests ran before) made `reconstruct` return torch tensors
    reconstruct = getattr(store.index, "reconstruct_numpy", store.index.reconstruct)
    return {(k, m): reconstruct(int(i)) for i, k, m in rows}


def assert_same_index(got, ref) -> None:
    a, b = vectors_of(got), vectors_of(ref)
    assert a.keys() == b.keys() and len(a) == 540
    assert max(float(np.abs(a[p] - b[p]).max()) for p in a) <= 1e-6
    for name in ("class_names", "splits_indexed", "modalitys_indexed", "n_bad_samples", "fingerprint"):
        assert got.meta[name] == ref.meta[name], name
    keys = sorted({k for k, _ in a})
    assert all(got.preview(k) == ref.preview(k) for k in keys) and ref.preview(keys[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_parts_split_shards_then_samples():
    shards = list(range(5))
    assert my_part(shards, 0, 2) == ([0, 2, 4], True) and my_part(shards, 1, 2) == ([1, 3], True)
    assert my_part(shards, 3, 8) == (shards, False) and my_part(shards, 0, 1) == (shards, True)


@contextmanager
def milvus_server(tmp_path):
    """A Milvus server at http://127.0.0.1:<port> (Milvus Lite's own gRPC server, in a process of its own),
    or None without milvus-lite."""
    try:
        import milvus_lite  # noqa: F401
    except ImportError:
        yield None
        return
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "srv"),
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()[-2000:]
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        from jointspace.index.milvus_conn import close_clients

        close_clients(f"http://127.0.0.1:{port}")
        server.terminate()
        server.wait(timeout=30)


def test_builds_on_two_ranks_equal_one_process(tiny_run, digits_dir, tiny_index, tmp_path):
    with milvus_server(tmp_path) as uri:
        (tmp_path / "worker.py").write_text(WORKER)
        proc = run_torchrun([*TORCHRUN, str(tmp_path / "worker.py"), str(tiny_run), str(digits_dir), str(tmp_path),
                             uri or "-"], timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count("wrote") == 1, proc.stdout  # rank 0 says it; the other rank says nothing
        for said in ("rank 0 stopped: OutputError", "rank 1 stopped: RankFailed: rank 0 of 2 failed: OutputError",
                     "rank 1 stopped: OSError: disk gone", "rank 0 stopped: RankFailed: rank 1 of 2 failed: OSError"):
            assert said in proc.stdout, proc.stdout
        assert not (tmp_path / "broken").exists()
        ref = open_store(tiny_index)
        assert_same_index(open_store(tmp_path / "faiss"), ref)  # rank 0 merged the parts
        if uri is None:
            pytest.skip("milvus-lite is not installed: the FAISS build was checked, the Milvus builds were not")
        from jointspace.index.milvus_conn import alias_target

        assert_same_index(open_store(tmp_path / "lite"), ref)  # rank 0 inserted every rank's rows
        on_server = open_store(tmp_path / "server")  # every rank inserted its own rows
        live = alias_target(on_server.client, "dist")
        assert on_server.meta["uri"] == uri and on_server.client.list_collections() == [live] != ["dist"]
        assert_same_index(on_server, ref)
