"""Search benchmark: approximate (IVF) vs exact FAISS on N x D clustered vectors, and the HTTP service.

    .venv/bin/python bench/search.py                  # 1M x 256, 1000 clusters, 1000 queries, 2 threads
    .venv/bin/python bench/search.py --n 100000 --requests 200   # quicker

Prints one table of build time, QPS and recall@10 against exact search (IndexFlatIP) on the same queries,
then requests/s and p50/p99 latency of `POST /search` under a bounded loopback load (uvicorn on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from jointspace.index.build import new_store


def clustered(n: int, dim: int, centers: np.ndarray, sigma: float, seed: int, chunk: int = 100_000) -> tuple:
    """n unit vectors around random centres (gaussian noise of std `sigma` per dimension), made in chunks."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    labels = np.empty(n, np.int64)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        lab = rng.integers(0, len(centers), m)
        x = centers[lab] + rng.normal(0.0, sigma, (m, dim)).astype(np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        labels[start : start + m] = lab
    return out, labels


def timed_search(index: faiss.Index, q: np.ndarray, k: int, one_by_one: int = 0, repeat: int = 3,
                 **params) -> tuple:
    """(QPS, ids), best of `repeat` runs (the machine is shared): the whole batch in one call, or the
    first `one_by_one` queries one call each."""
    p = faiss.SearchParametersIVF(**params) if params else None
    best, ids = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        if one_by_one:
            for i in range(one_by_one):
                index.search(q[i : i + 1], k, params=p)
        else:
            _, ids = index.search(q, k, params=p)
        best = min(best, time.perf_counter() - t0)
    return (one_by_one or len(q)) / best, ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the true top-k found in the approximate top-k."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.06, help="per-dimension noise around a unit centre")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--single", type=int, default=200, help="queries timed one call each")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--target-recall", type=float, default=0.95)
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up when piped to a file
    faiss.omp_set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cpus, faiss {faiss.__version__}, {args.threads} threads; "
          f"data: {args.n:,} x {args.dim} float32, {args.clusters} clusters, {args.queries} queries, k={args.k}")

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    xb, labels = clustered(args.n, args.dim, centers, args.sigma, seed=1)
    xq, _ = clustered(args.queries, args.dim, centers, args.sigma, seed=2)
    print(f"generated in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(xb)
    flat_build = time.perf_counter() - t0
    qps_exact, truth = timed_search(flat, xq, args.k, repeat=2)
    qps_exact_1, _ = timed_search(flat, xq, args.k, one_by_one=min(args.single, 20), repeat=1)
    del flat

    t0 = time.perf_counter()
    store = new_store(xb)  # the factory `jointspace index build` picks for this many vectors
    train_s = time.perf_counter() - t0
    items = [{"key": f"v{i:07d}", "modality": "vector", "label": int(c), "split": "bench"}
             for i, c in enumerate(labels)]
    store.add(xb, items)
    build_s = time.perf_counter() - t0
    del items
    default_nprobe = store.meta["search"]["nprobe"]
    rows = [["exact IndexFlatIP", f"{flat_build:.1f}", "-", f"{qps_exact:,.0f}", f"{qps_exact_1:,.1f}", "1.0x",
             "1.000"]]
    chosen = None
    for nprobe in sorted(set(args.nprobe) | {default_nprobe}):
        qps, ids = timed_search(store.index, xq, args.k, nprobe=nprobe)
        qps_1, _ = timed_search(store.index, xq, args.k, one_by_one=args.single, nprobe=nprobe)
        rec = recall_at_k(ids, truth)
        if chosen is None and rec >= args.target_recall:
            chosen = nprobe
        rows.append([store.meta["factory"], f"{build_s:.1f} (train {train_s:.1f})", f"nprobe={nprobe}",
                     f"{qps:,.0f}", f"{qps_1:,.1f}", f"{qps / qps_exact:.1f}x", f"{rec:.3f}"])
    store_s = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        hits = store.search(xq, args.k, nprobe=chosen or default_nprobe)
        store_s = min(store_s, time.perf_counter() - t0)
    qps_store = len(xq) / store_s
    rec_store = recall_at_k(np.array([[int(h["key"][1:]) for h in row] for row in hits]), truth)
    rows.append([f"{store.meta['factory']} via IndexStore.search", "-", f"nprobe={chosen or default_nprobe}",
                 f"{qps_store:,.0f}", "-", f"{qps_store / qps_exact:.1f}x", f"{rec_store:.3f}"])
    print()
    print(table(["index", "build s", "search", "QPS (batch)", "QPS (1 query/call)", "speed-up (batch)",
                 f"recall@{args.k}"], rows))
    print(f"\nQPS: best of 3 runs (exact: best of 2); batch = all {args.queries} queries in one call; "
          f"1 query/call = {args.single} calls (exact: {min(args.single, 20)}, one run); "
          f"default nprobe stored in the index: {default_nprobe}; "
          f"smallest nprobe with recall >= {args.target_recall}: {chosen}")

    if args.requests:
        with tempfile.TemporaryDirectory(prefix="jointspace-bench-") as tmp:
            if chosen:
                store.meta["search"]["nprobe"] = chosen
            store.save(Path(tmp) / "index")
            del store, xb
            res = service_load(Path(tmp) / "index", xq, args.requests, args.concurrency, args.threads)
        print()
        print(table(["service (POST /search, JSON vector, k=10)", "requests", "concurrency", "req/s",
                     "p50 ms", "p99 ms", "non-200"],
                    [[f"uvicorn 127.0.0.1, {args.n:,} x {args.dim} index", res["requests"], args.concurrency,
                      f"{res['rps']:.1f}", f"{res['p50']:.1f}", f"{res['p99']:.1f}", res["errors"]]]))


if __name__ == "__main__":
    main()
