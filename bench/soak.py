"""Soak: `POST /search` from 4 client threads for 60 s while `index add` and `index delete` run three
times each against the served folder; the same load without writes first, as the baseline (after a 5 s warm-up).

    .venv/bin/python bench/soak.py                       # 60 s under writes, 20 s baseline, 4 threads
    .venv/bin/python bench/soak.py --seconds 20 --baseline-seconds 5

Prints one table: requests, req/s, p50/p99 latency and non-200 responses per phase, the writes done,
and whether the index ends with the expected item count (every added item deleted again).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

JOINTSPACE = str(Path(sys.executable).parent / "jointspace")
TINY = ["data.synth=null", "train.epochs=3", "train.batch_size=32", "model.embed_dim=32",
        "model.towers.image.params.channels=[16, 32]", "model.towers.text.params.width=32",
        "model.towers.text.params.layers=1", "model.towers.audio.params.channels=[32, 32]", "tracker=none",
        "eval.linear_probe=false"]


def run(*args: str) -> str:
    done = subprocess.run([JOINTSPACE, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"jointspace {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout


def setup(work: Path) -> tuple[Path, Path]:
    """Digits shards, a small trained run and an index of its train split."""
    data, runs, index = work / "digits", work / "runs", work / "index"
    run("data", "synth", "digits", "--out", str(data))
    run("train", str(Path(__file__).parents[1] / "src/jointspace/configs/digits.yaml"),
        "--set", f"data.path={data}", "--set", f"output_dir={runs}", "--set", "name=soak",
        *[a for o in TINY for a in ("--set", o)])
    run("index", "build", str(runs / "soak"), str(data), "--out", str(index), "--split", "train")
    return data, index


def serve(index: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([JOINTSPACE, "serve", str(index), "--port", str(port), "--max-k", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.2)
    raise TimeoutError("the server did not come up")


def load(url: str, seconds: float, threads: int) -> tuple[list[float], list[int]]:
    """`threads` clients POSTing /search (text and vector queries alternately) for `seconds`."""
    lat: list[float] = []
    codes: list[int] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    bodies = [json.dumps({"text": f"the digit {w}", "k": 10}).encode() for w in ("one", "seven", "three")]
    bodies += [json.dumps({"vector": np.random.default_rng(i).normal(size=32).tolist(), "k": 10}).encode()
               for i in range(3)]

    def client(i: int) -> None:
        n = i
        while time.perf_counter() < stop:
            req = urllib.request.Request(f"{url}/search", bodies[n % len(bodies)], {"content-type": "application/json"})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    r.read()
                    code = r.status
            except urllib.error.HTTPError as err:
                code = err.code
            except OSError:
                code = 0
            with lock:
                lat.append(time.perf_counter() - t0)
                codes.append(code)
            n += 1

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return lat, codes


def writer(index: Path, data: Path, rounds: int, log: list[str]) -> None:
    t0 = time.perf_counter()
    for _ in range(rounds):
        run("index", "add", str(index), str(data), "--split", "val")
        log.append("add")
        run("index", "delete", str(index), "--where", "split=val")
        log.append("delete")
    log.append(f"{time.perf_counter() - t0:.1f}")


def row(name: str, lat: list[float], codes: list[int], seconds: float) -> list:
    ms = np.array(lat) * 1000
    return [name, len(codes), f"{len(codes) / seconds:.1f}", f"{np.percentile(ms, 50):.1f}",
            f"{np.percentile(ms, 99):.1f}", sum(c != 200 for c in codes)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--baseline-seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, index = setup(Path(tmp))
        from jointspace.index.store import IndexStore

        n0 = IndexStore.open(index).n_items
        proc, url = serve(index)
        try:
            load(url, 5.0, args.threads)  # warm-up (first requests, caches), not counted
            base = load(url, args.baseline_seconds, args.threads)
            log: list[str] = []
            w = threading.Thread(target=writer, args=(index, data, args.rounds, log))
            w.start()
            soak = load(url, args.seconds, args.threads)
            w.join()
            writes_s = float(log[-1])
            time.sleep(2.0)
            with urllib.request.urlopen(f"{url}/healthz") as r:
                served_n = json.loads(r.read())["n_items"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        final = IndexStore.open(index).n_items
    headers = ["phase", "requests", "req/s", "p50 ms", "p99 ms", "non-200"]
    rows = [row("baseline (no writes)", *base, args.baseline_seconds),
            row(f"under writes ({log.count('add')} add + {log.count('delete')} delete)", *soak, args.seconds)]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |")
    print(f"the {args.rounds} add + delete rounds took {writes_s:.1f} s of the {args.seconds:.0f} s window; items: expected {n0}, index {final}, server {served_n} "
          f"-> {'right' if final == served_n == n0 else 'WRONG'}; req/s under writes / baseline: "
          f"{len(soak[1]) / args.seconds / (len(base[1]) / args.baseline_seconds):.2f}x; "
          f"{args.threads} client threads, 2 CPU cores shared by server, clients and writers")


if __name__ == "__main__":
    main()
