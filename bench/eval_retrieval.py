"""Retrieval-eval benchmark: chunked Recall@K/mAP@10/median rank (jointspace) against its physical bound,
the bare chunked matrix product (`torch.mm` over the same chunks, nothing else), and a dense N x N peer.

Each measurement runs in a fresh subprocess so its peak RSS is its own. The dense peer builds the
full similarity matrix and argsorts it (what a notebook does); past the memory budget it is skipped.
Per size the bench prints `ratio to bare matmul: R.RRx`; `--big-queries Q --big-gallery G` also times
Q x G (chunked and bare) and extrapolates it linearly to Q x Q.

    python bench/eval_retrieval.py --sizes 20000 100000 --big-queries 1000000 --big-gallery 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

WORKER = r"""
import json, resource, sys, time
import torch
from jointspace.evaluate.retrieval import retrieval_metrics

method, n, dim, n_classes, chunk, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
def points(lab):
    return torch.nn.functional.normalize(centres[lab] + 3.0 * torch.randn(len(lab), dim, generator=g) / dim ** 0.5, dim=-1)
labels = torch.randint(0, n_classes, (n,), generator=g)
k = points(labels)
q_labels = labels if m == n else torch.randint(0, n_classes, (m,), generator=g)
q = points(q_labels)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if method == "chunked":
    r = retrieval_metrics(q, k, q_labels, labels, ks=(1, 5, 10), chunk_size=chunk)
    out = {"R@1": r["R@1"], "R@10": r["R@10"], "mAP@10": r["mAP@10"], "median_rank": r["median_rank"]}
elif method == "bare":  # the same row blocks retrieval_metrics multiplies (its chunk, capped at BLOCK_ROWS)
    from jointspace.evaluate.retrieval import BLOCK_ROWS
    step = min(chunk, BLOCK_ROWS)
    for s in range(0, m, step):
        sim = torch.mm(q[s:s + step], k.T)
    out = {}
elif method == "bare-big":  # the product in blocks of `chunk` rows: the fastest chunked product here
    for s in range(0, m, chunk):
        sim = torch.mm(q[s:s + chunk], k.T)
    out = {}
else:
    sim = q @ k.T
    order = sim.argsort(dim=1, descending=True)[:, :10]
    hit = labels[order] == labels[:, None]
    out = {"R@1": hit[:, 0].float().mean().item(), "R@10": hit.any(1).float().mean().item()}
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({**out, "seconds": secs, "peak_mb": peak / 1024, "inputs_mb": base / 1024}))
"""


def run(method: str, n: int, dim: int, n_classes: int, chunk: int, m: int | None = None) -> dict:
    """One measurement in a subprocess: m queries (default n) against a gallery of n."""
    proc = subprocess.run([sys.executable, "-c", WORKER, method, str(n), str(dim), str(n_classes), str(chunk),
                           str(m or n)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _line(label: str, method: str, r: dict) -> str:
    if "error" in r:
        return f"{label:>14} {method:>8}  {r['error']}"
    metrics = " ".join(f"{r[k]:6.3f}" if k in r else f"{'':>6}" for k in ("R@1", "R@10", "mAP@10"))
    return f"{label:>14} {method:>8} {r['seconds']:8.1f} {r['peak_mb']:8.0f} {metrics} {r.get('median_rank', ''):>6}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3, help="median of this many runs of chunked and bare")
    ap.add_argument("--dense-max-gb", type=float, default=8.0, help="skip the dense peer above this N x N size")
    ap.add_argument("--big-queries", type=int, default=0)
    ap.add_argument("--big-gallery", type=int, default=100_000)
    args = ap.parse_args()

    def median_of(method: str, n: int, m: int | None = None) -> dict:
        runs = [run(method, n, args.dim, args.classes, args.chunk, m) for _ in range(args.rounds)]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            return runs[0]
        return {**sorted(ok, key=lambda r: r["seconds"])[len(ok) // 2], "all": [round(r["seconds"], 1) for r in ok]}

    print(f"{'queries x N':>14} {'method':>8} {'seconds':>8} {'peak MB':>8} {'R@1':>6} {'R@10':>6} {'mAP@10':>6} "
          f"{'median rank':>6}")
    cases = [(n, None) for n in args.sizes] + ([(args.big_gallery, args.big_queries)] if args.big_queries else [])
    for n, m in cases:
        label = f"{m or n}x{n}"
        bare, big, chunked = median_of("bare", n, m), median_of("bare-big", n, m), median_of("chunked", n, m)
        print(_line(label, "bare", bare))
        print(_line(label, "bare-big", big))
        print(_line(label, "chunked", chunked))
        if m is None:
            if n * n * 4 * 3 / 1e9 > args.dense_max_gb:  # sim + argsort indices
                print(_line(label, "dense", {"error": f"skipped: N x N needs ~{n * n * 12 / 1e9:.0f} GB"}))
            else:
                print(_line(label, "dense", run("dense", n, args.dim, args.classes, args.chunk)))
        if "error" not in bare and "error" not in chunked:
            print(f"{'':>14} ratio to bare matmul: {chunked['seconds'] / bare['seconds']:.2f}x "
                  f"(to the product in {args.chunk}-row blocks: {chunked['seconds'] / big['seconds']:.2f}x; "
                  f"rounds: chunked {chunked['all']}, bare {bare['all']}, bare-big {big['all']})")
            if m:
                print(f"{'':>14} {m}x{m} extrapolated (x{m // n}): chunked {chunked['seconds'] * m / n:.0f} s, "
                      f"bare {bare['seconds'] * m / n:.0f} s")
    print(f"(dim {args.dim}, {args.classes} classes, chunk {args.chunk}, class-level hits, median of "
          f"{args.rounds} rounds; peak = process max RSS)")


if __name__ == "__main__":
    main()
