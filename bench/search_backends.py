"""`bench/search.py --backend faiss milvus`: the two index backends on the same vectors. Per backend and
index type: build time (insert, train/index, save), recall@10 against exact search on the queries, QPS
and p50/p99 latency of one query per call from 1 and from 8 client threads, and the resident set of a
fresh process that opened the saved index and ran those searches (Milvus Lite runs inside it).

Both are timed through the store's `search` (what `jointspace search` and the service call: the top k
with their metadata), the FAISS one with one OpenMP thread per call so that client threads are the
parallelism. Milvus here is Milvus Lite: the engine in the searching process, reached over gRPC on
loopback, with FAISS underneath for IVF_FLAT and HNSW; one process on one machine, where a Milvus
cluster spreads segments over query nodes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

WORKER = r"""
import json, sys, threading, time
import faiss, numpy as np
from jointspace.index.backend import open_store
try:  # the Milvus client and Lite's engine count as imports, as FAISS and torch do
    import pymilvus, milvus_lite.adapter.grpc.server
except ImportError:
    pass
path, qfile, tfile, k, clients, single = sys.argv[1:7]
faiss.omp_set_num_threads(1)  # and OMP_NUM_THREADS=1: one query per call, the client threads are the parallelism
base_rss = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmRSS")).split()[1]) * 1024
xq, truth, k = np.load(qfile), np.load(tfile), int(k)
t0 = time.perf_counter()
store = open_store(path)
opened = time.perf_counter() - t0
store.search(xq[:4], k)  # warm-up
keys = [[int(h["key"][1:]) for h in hits] for hits in store.search(xq, k)]
recall = float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(keys, truth)]))
out = {"recall": recall, "open_s": opened, "factory": store.meta["factory"], "search": store.meta["search"],
       "clients": {}}
for n_threads in [int(c) for c in clients.split(",")]:
    lat, lock, todo = [], threading.Lock(), iter(range(int(single) * n_threads))
    def client():
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            t = time.perf_counter()
            store.search(xq[i % len(xq) : i % len(xq) + 1], k)
            dt = time.perf_counter() - t
            with lock:
                lat.append(dt)
    threads = [threading.Thread(target=client) for _ in range(n_threads)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    out["clients"][n_threads] = {"qps": len(lat) / wall, "p50": float(np.percentile(ms, 50)),
                                 "p99": float(np.percentile(ms, 99)), "calls": len(lat)}
status = {ln.split(":")[0]: int(ln.split()[1]) * 1024 for ln in open("/proc/self/status")
          if ln.startswith(("VmRSS", "VmHWM"))}
out.update(rss=status.get("VmRSS"), peak_rss=status.get("VmHWM"), base_rss=base_rss)
print(json.dumps(out))
"""


def ivf_factory(n: int) -> str:
    """The IVF factory `index build --factory auto` picks for n vectors (nlist about 4 sqrt(n))."""
    return f"IVF{2 ** round(math.log2(4 * math.sqrt(n)))},Flat"


def chunks_of(xb: np.ndarray, labels: np.ndarray, rows: int = 50_000) -> Iterator[tuple]:
    for s in range(0, len(xb), rows):
        items = [{"key": f"v{s + j:08d}", "modality": "vector", "label": int(c), "split": "bench"}
                 for j, c in enumerate(labels[s : s + rows])]
        yield xb[s : s + rows], items, {}


def build(backend: str, factory: str, xb: np.ndarray, labels: np.ndarray, work: Path, tag: str) -> tuple[Path, float]:
    """Build and save one index; returns its folder and the seconds it took (insert + train/index + save)."""
    from jointspace.index.bulk import build_store
    from jointspace.index.milvus import MilvusStore
    from jointspace.index.milvus_conn import close_clients

    out = work / f"{tag}-index"
    t0 = time.perf_counter()
    if backend == "faiss":
        build_store(chunks_of(xb, labels), factory, {"bench": True}, scratch_dir=work).save(out)
        return out, time.perf_counter() - t0
    uri = str(work / f"{tag}.db")
    store = MilvusStore.create(xb.shape[1], {"bench": "1"}, uri, tag, work, factory=factory)
    for vectors, items, previews in chunks_of(xb, labels):
        store.add(vectors, items, previews)
    store.save(out)
    took = time.perf_counter() - t0
    close_clients(uri)  # a Lite file is opened by one process at a time: the searching one
    return out, took


def measure(index_dir: Path, work: Path, k: int, clients: list[int], single: int) -> dict:
    out = subprocess.run([sys.executable, "-c", WORKER, str(index_dir), str(work / "q.npy"), str(work / "t.npy"),
                          str(k), ",".join(map(str, clients)), str(single)], check=False, capture_output=True,
                         text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # per thread: client threads too
    if out.returncode:
        raise RuntimeError(f"search worker failed on {index_dir}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args, vectors: Iterator[tuple[np.ndarray, np.ndarray]], xq: np.ndarray, work: Path) -> list[list]:
    """Build every (backend, index type) over the vectors and time it; returns the table's rows."""
    xb, labels = map(np.concatenate, zip(*vectors))
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    t0 = time.perf_counter()
    faiss.omp_set_num_threads(args.threads)
    _, truth = faiss.knn(xq, xb, args.k, metric=faiss.METRIC_INNER_PRODUCT)
    print(f"exact top-{args.k} of {len(xq)} queries over {len(xb):,} vectors: {time.perf_counter() - t0:.1f} s")
    np.save(work / "q.npy", xq)
    np.save(work / "t.npy", truth)
    factories = args.factories or ["Flat", ivf_factory(len(xb)), "HNSW32"]
    gib = lambda b: f"{b / 2**30:.2f}"
    rows = []
    for factory in factories:
        for backend in args.backend:
            tag = f"{backend}_{''.join(c for c in factory if c.isalnum())}"
            index_dir, build_s = build(backend, factory, xb, labels, work, tag)
            r = measure(index_dir, work, args.k, args.clients, args.single)
            print(f"{backend} {factory}: built in {build_s:.1f} s, opened in {r['open_s']:.1f} s, search {r['search']}, "
                  f"recall {r['recall']:.3f}, " + ", ".join(f"{c} clients {v['qps']:.0f} QPS" for c, v in r["clients"].items()))
            lat = [f"{r['clients'][str(c)]['p50']:.1f} / {r['clients'][str(c)]['p99']:.1f}" for c in args.clients]
            rows.append([backend, factory, f"{build_s:.1f}", f"{r['recall']:.3f}",
                         *[f"{r['clients'][str(c)]['qps']:,.0f}" for c in args.clients], *lat,
                         gib(r["rss"]), gib(r["rss"] - r["base_rss"])])
    return rows


def headers(args) -> list[str]:
    return ["backend", "index", "build s", f"recall@{args.k}", *[f"QPS {c} client{'s' * (c > 1)}" for c in args.clients],
            *[f"p50 / p99 ms, {c} client{'s' * (c > 1)}" for c in args.clients], "RSS GiB", "RSS GiB over imports"]
