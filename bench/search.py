"""Search benchmark: the index `jointspace index build` makes (or --factory) vs exact search on N x D
vectors, at one or more sizes, and the HTTP service.

    .venv/bin/python bench/search.py                  # 1M x 256, 1000 clusters, 1000 queries, 2 threads
    .venv/bin/python bench/search.py --n 100000 --requests 200   # quicker
    .venv/bin/python bench/search.py --n 1000000 10000000 --data subspace --factory auto --requests 0
    .venv/bin/python bench/search.py --backend faiss milvus --n 100000   # FAISS vs Milvus Lite (search_backends.py)

Vectors are made in chunks and never held all at once: each chunk is scored against the queries
(exact search, faiss.knn, streamed) and handed to the index's chunked build (index.bulk.build_store).
The index is saved, then a fresh process opens it and times the searches, so its resident set (RSS)
is what serving that index costs. Prints one table of build time, QPS, recall@10 against exact search
and RSS for every size, then requests/s and p50/p99 latency of `POST /search` under a bounded
loopback load (uvicorn on 127.0.0.1) on the last size.

--data clusters: gaussian noise around 1,000 centres, the same in every direction (the neighbours of
a point inside its cluster differ by ~1e-3 in cosine, a worst case for compressed codes);
--data subspace: each cluster also spreads along its own 16-d subspace, as embeddings of a trained
model concentrate along few directions (the committed 10M figures use it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from jointspace.index.bulk import build_store

SUBSPACE_DIM, SUBSPACE_SCALE, SUBSPACE_NOISE = 16, 0.5, 0.01


def clustered(n: int, dim: int, centers: np.ndarray, sigma: float, seed: int, chunk: int = 100_000,
              basis: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(vectors, labels) chunks of n unit vectors around random centres: gaussian noise of std `sigma`
    per dimension, or, with `basis` [C, r, D], a spread of std SUBSPACE_SCALE along each cluster's own
    r directions plus noise of std SUBSPACE_NOISE."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lab = rng.integers(0, len(centers), m)
        if basis is None:
            x = centers[lab] + rng.normal(0.0, sigma, (m, dim)).astype(np.float32)
        else:
            x = centers[lab] + rng.normal(0.0, SUBSPACE_NOISE, (m, dim)).astype(np.float32)
            z = rng.normal(0.0, SUBSPACE_SCALE, (m, basis.shape[1])).astype(np.float32)
            for c in np.unique(lab):
                rows = lab == c
                x[rows] += z[rows] @ basis[c]
        yield x / np.linalg.norm(x, axis=1, keepdims=True), lab


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    cells = [headers, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


SERVER = """
import sys, uvicorn, faiss
faiss.omp_set_num_threads(int(sys.argv[3]))
from jointspace.serve.app import create_app
uvicorn.run(create_app(sys.argv[1], load_model=False, max_k=100), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""


def service_load(index_dir: Path, queries: np.ndarray, n_requests: int, concurrency: int, threads: int) -> dict:
    """Start uvicorn on a free loopback port and time `n_requests` vector searches from `concurrency` threads."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(index_dir), str(port), str(threads)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError("the search service did not start")
            time.sleep(0.5)
        bodies = [{"vector": q.tolist(), "k": 10} for q in queries]
        latencies: list[float] = []
        statuses: list[int] = []
        lock, counter = threading.Lock(), iter(range(n_requests))

        def worker() -> None:
            with httpx.Client(base_url=url, timeout=60) as client:
                for _ in range(3):  # warm-up, not timed
                    client.post("/search", json=bodies[0])
                while True:
                    with lock:
                        i = next(counter, None)
                    if i is None:
                        return
                    t0 = time.perf_counter()
                    r = client.post("/search", json=bodies[i % len(bodies)])
                    dt = time.perf_counter() - t0
                    with lock:
                        latencies.append(dt)
                        statuses.append(r.status_code)

        workers = [threading.Thread(target=worker) for _ in range(concurrency)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "rps": len(lat) / wall, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "errors": sum(s != 200 for s in statuses)}


QUERY_WORKER = """
import json, sys, time
import faiss, numpy as np
from jointspace.index.store import IndexStore, process_memory
path, qfile, tfile, nprobes, kfs, k, threads, single = sys.argv[1:9]
faiss.omp_set_num_threads(int(threads))
xq, truth = np.load(qfile), np.load(tfile)
t0 = time.perf_counter()
store = IndexStore.open(path)
opened = time.perf_counter() - t0
kfs = [int(f) for f in kfs.split(",")] if store.exact is not None else [1]
rows = []
for nprobe in [int(p) for p in nprobes.split(",")]:
    for kf in kfs:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            _, ids = store.nearest(xq, int(k), nprobe=nprobe, k_factor=kf)
            best = min(best, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(int(single)):
            store.nearest(xq[i : i + 1], int(k), nprobe=nprobe, k_factor=kf)
        one = int(single) / (time.perf_counter() - t0)
        rec = float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(ids, truth)]))
        rows.append({"nprobe": nprobe, "k_factor": kf, "qps": len(xq) / best, "qps_1": one, "recall": rec})
peak = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")]
mem = {**store.memory(), "peak_rss_bytes": int(peak[0].split()[1]) * 1024 if peak else None}
print(json.dumps({"rows": rows, "memory": mem, "open_s": opened, "factory": store.meta["factory"],
                  "search": store.meta["search"], "refine": store.meta.get("refine")}))
"""


def one_size(n: int, args, centers: np.ndarray, basis: np.ndarray | None, work: Path) -> tuple[list, Path, np.ndarray]:
    """Build the index over n vectors (exact top-k on the way), save it, and time it in a fresh process."""
    xq = next(clustered(args.queries, args.dim, centers, args.sigma, seed=2, chunk=args.queries, basis=basis))[0]
    clock, made = [0.0], [0.0]

    def vectors() -> Iterator[np.ndarray]:
        t0 = time.perf_counter()
        for x, lab in clustered(n, args.dim, centers, args.sigma, seed=1, chunk=args.chunk, basis=basis):
            made[0] += time.perf_counter() - t0
            yield x, lab
            t0 = time.perf_counter()

    state: dict = {}

    def chunks() -> Iterator[tuple]:
        start = 0
        gen = vectors()
        heap = faiss.ResultHeap(len(xq), args.k, keep_max=True)
        for x, lab in gen:
            t0 = time.perf_counter()
            d, i = faiss.knn(xq, x, args.k, metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(d, i + start)
            clock[0] += time.perf_counter() - t0
            items = [{"key": f"v{start + j:08d}", "modality": "vector", "label": int(c), "split": "bench"}
                     for j, c in enumerate(lab)]
            yield x, items, {}
            start += len(x)
        heap.finalize()
        state["truth"] = heap.I

    t0 = time.perf_counter()
    store = build_store(chunks(), args.factory, {"bench": True}, scratch_dir=work)
    build_s = time.perf_counter() - t0 - clock[0] - made[0]
    index_dir = store.save(work / f"index-{n}")
    del store
    truth = state["truth"]
    np.save(work / "q.npy", xq)
    np.save(work / "t.npy", truth)
    qps_exact = len(xq) / clock[0]
    out = subprocess.run([sys.executable, "-c", QUERY_WORKER, str(index_dir), str(work / "q.npy"), str(work / "t.npy"),
                          ",".join(map(str, args.nprobe)), ",".join(map(str, args.k_factor)), str(args.k),
                          str(args.threads), str(args.single)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    mem = res["memory"]
    gb = lambda b: f"{b / 2**30:.2f}"
    rows = [[f"{n:,}", "exact (faiss.knn, streamed)", f"{made[0]:.0f} s to make", "-", f"{qps_exact:,.1f}", "-",
             "1.0x", "1.000", "-", "-"]]
    for r in res["rows"]:
        rows.append([f"{n:,}", res["factory"], f"{build_s:.0f}", f"nprobe={r['nprobe']} k_factor={r['k_factor']}",
                     f"{r['qps']:,.0f}", f"{r['qps_1']:,.0f}", f"{r['qps'] / qps_exact:.0f}x", f"{r['recall']:.3f}",
                     gb(mem["rss_bytes"]), gb(mem["rss_anon_bytes"])])
    print(f"n={n:,}: built in {build_s:.0f} s (+{made[0]:.0f} s making vectors, {clock[0]:.0f} s exact search); "
          f"opened in {res['open_s']:.1f} s; memory (index info): "
          + ", ".join(f"{k} {gb(v) + ' GiB' if isinstance(v, int) else v}" for k, v in mem.items()))
    return rows, index_dir, xq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--data", choices=["clusters", "subspace"], default="clusters")
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.06, help="clusters: per-dimension noise around a unit centre")
    ap.add_argument("--factory", default="auto", help="FAISS factory for every size (auto: what index build picks)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--k-factor", type=int, nargs="+", default=[1, 8, 16],
                    help="compressed indexes: candidates re-ranked per wanted hit")
    ap.add_argument("--chunk", type=int, default=250_000, help="vectors made (and held) at a time")
    ap.add_argument("--single", type=int, default=200, help="queries timed one call each")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--work", type=Path, default=None, help="folder for the indexes (default: a temporary one)")
    ap.add_argument("--backend", nargs="+", choices=["faiss", "milvus"], default=None,
                    help="compare index backends instead (bench/search_backends.py): one size, --factories")
    ap.add_argument("--factories", nargs="+", default=None,
                    help="--backend: index types (default: Flat, the IVF that auto picks, HNSW32)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="--backend: client threads")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when piped to a file
    faiss.omp_set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cpus, faiss {faiss.__version__}, {args.threads} threads; data: {args.data}, "
          f"{', '.join(f'{n:,}' for n in args.n)} x {args.dim} float32, {args.clusters} clusters, "
          f"{args.queries} queries, k={args.k}")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    basis = None
    if args.data == "subspace":
        basis = (rng.normal(size=(args.clusters, SUBSPACE_DIM, args.dim)) / np.sqrt(args.dim)).astype(np.float32)
    if args.backend:
        return backends(args, centers, basis)
    with tempfile.TemporaryDirectory(prefix="jointspace-bench-", dir=args.work) as tmp:
        rows = []
        for n in args.n:
            size_rows, index_dir, xq = one_size(n, args, centers, basis, Path(tmp))
            rows += size_rows
            if n != args.n[-1]:
                shutil.rmtree(index_dir)
        print()
        print(table(["n", "index", "build s", "search", "QPS (batch)", "QPS (1 query/call)", "speed-up (batch)",
                     f"recall@{args.k}", "RSS GiB", "RSS anon GiB"], rows))
        print(f"\nQPS: best of 3 runs; batch = all {args.queries} queries in one call (exact: the streamed "
              f"search of every chunk, one run); 1 query/call = {args.single} calls; RSS: the process that opened "
              "the saved index and ran these searches (anon: its own memory; the rest is file pages mapped, "
              "the exact vectors' among them)")
        if args.requests:
            res = service_load(index_dir, xq, args.requests, args.concurrency, args.threads)
            print()
            print(table(["service (POST /search, JSON vector, k=10)", "requests", "concurrency", "req/s",
                         "p50 ms", "p99 ms", "non-200"],
                        [[f"uvicorn 127.0.0.1, {args.n[-1]:,} x {args.dim} index", res["requests"], args.concurrency,
                          f"{res['rps']:.1f}", f"{res['p50']:.1f}", f"{res['p99']:.1f}", res["errors"]]]))


def backends(args, centers: np.ndarray, basis: np.ndarray | None) -> None:
    """--backend: FAISS and/or Milvus Lite on the same vectors, every index type (bench/search_backends.py)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import search_backends as sb

    if len(args.n) != 1:
        raise SystemExit("--backend: give one --n")
    xq = next(clustered(args.queries, args.dim, centers, args.sigma, seed=2, chunk=args.queries, basis=basis))[0]
    vectors = clustered(args.n[0], args.dim, centers, args.sigma, seed=1, chunk=args.chunk, basis=basis)
    with tempfile.TemporaryDirectory(prefix="jointspace-bench-", dir=args.work) as tmp:
        rows = sb.compare(args, vectors, xq, Path(tmp))
    print()
    print(table(sb.headers(args), rows))
    print(f"\nrecall: all {args.queries} queries; QPS and latency: one query per `search` call (top {args.k} with "
          f"metadata), {args.single} calls per client thread; RSS: the process that opened the saved index and "
          "searched (Milvus Lite's engine runs in it); over imports: less that process's RSS before it opened the index "
          "(Python, numpy, FAISS, torch, pymilvus)")


if __name__ == "__main__":
    main()
