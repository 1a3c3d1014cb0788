"""Retrieval-eval benchmark: chunked Recall@K/mAP (jointspace) vs a dense N x N computation.

Each measurement runs in a fresh subprocess so its peak RSS is its own. The dense peer builds the
full similarity matrix and argsorts it (what a notebook does); past the memory budget it is skipped.

    python bench/eval_retrieval.py --sizes 10000 20000 100000 --dim 256
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

method, n, dim, n_classes, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(2)
g = torch.Generator().manual_seed(0)
labels = torch.randint(0, n_classes, (n,), generator=g)
centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
q = torch.nn.functional.normalize(centres[labels] + 3.0 * torch.randn(n, dim, generator=g) / dim ** 0.5, dim=-1)
k = torch.nn.functional.normalize(centres[labels] + 3.0 * torch.randn(n, dim, generator=g) / dim ** 0.5, dim=-1)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if method == "chunked":
    r = retrieval_metrics(q, k, labels, labels, ks=(1, 5, 10), chunk_size=chunk)
    out = {"R@1": r["R@1"], "R@10": r["R@10"]}
else:
    sim = q @ k.T
    order = sim.argsort(dim=1, descending=True)[:, :10]
    hit = labels[order] == labels[:, None]
    out = {"R@1": hit[:, 0].float().mean().item(), "R@10": hit.any(1).float().mean().item()}
secs = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({**out, "seconds": secs, "peak_mb": peak / 1024, "inputs_mb": base / 1024}))
"""


def run(method: str, n: int, dim: int, n_classes: int, chunk: int) -> dict:
    """One measurement in a subprocess."""
    proc = subprocess.run([sys.executable, "-c", WORKER, method, str(n), str(dim), str(n_classes), str(chunk)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 100_000])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--dense-max-gb", type=float, default=8.0, help="skip the dense peer above this N x N size")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        for method in ("chunked", "dense"):
            if method == "dense" and n * n * 4 * 3 / 1e9 > args.dense_max_gb:  # sim + argsort indices
                rows.append((n, method, {"error": f"skipped: N x N needs ~{n * n * 12 / 1e9:.0f} GB"}))
                continue
            rows.append((n, method, run(method, n, args.dim, args.classes, args.chunk)))
    print(f"{'N':>8} {'method':>8} {'seconds':>8} {'peak MB':>8} {'R@1':>6} {'R@10':>6}")
    for n, method, r in rows:
        if "error" in r:
            print(f"{n:>8} {method:>8}  {r['error']}")
        else:
            print(f"{n:>8} {method:>8} {r['seconds']:8.1f} {r['peak_mb']:8.0f} {r['R@1']:6.3f} {r['R@10']:6.3f}")
    print(f"(dim {args.dim}, {args.classes} classes, chunk {args.chunk}, class-level hits; peak = process max RSS)")


if __name__ == "__main__":
    main()
