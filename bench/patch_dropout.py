"""Patch dropout on the CPU: training-step time of an open_clip ViT image tower (jointspace's
`openclip_image`, random weights) with `patch_dropout` 0, 0.5 and 0.75.

A step is forward + backward + AdamW step on a batch of random 224 px images (loss: the mean square of
the tower's output; the data does not matter to the time). Each measurement is a fresh process (so its
peak resident memory, ru_maxrss, is its own): one warm-up step, then `--steps` timed steps, their
median. `--rounds` rounds with the order of the settings rotated; the table gives the medians over
rounds, the speed-up against patch_dropout 0, the share of tokens the transformer sees, and the peak RSS.

    .venv/bin/python bench/patch_dropout.py                      # ViT-S-32, batch 16, 2 threads, ~3 min
    .venv/bin/python bench/patch_dropout.py --arch ViT-S-16 --batch-size 8   # 196 patches (slower)
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import subprocess
import sys
import time

RATES = (0.0, 0.5, 0.75)


def worker(arch: str, p: float, batch: int, steps: int, threads: int) -> dict:
    """Times `steps` training steps of the tower with patch dropout `p`; ms per step and peak RSS."""
    import torch

    from jointspace.towers import build_tower

    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded"
    torch.manual_seed(0)
    tower = build_tower("openclip_image", model=arch)
    tower.set_patch_dropout(p)
    tower.train()
    opt = torch.optim.AdamW(tower.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, *tower.image_size) * 2 - 1
    grid = tower.visual.grid_size
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss = tower(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # the first step warms up (allocations, AdamW state)
            times.append(time.perf_counter() - start)
    patches = grid[0] * grid[1]
    kept = max(1, int(patches * (1 - p))) if p else patches  # open_clip's PatchDropout rule
    return {"ms": 1e3 * statistics.median(times), "tokens": 1 + kept, "full": 1 + patches,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(args, p: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(p), "--arch", args.arch, "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-S-32")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.arch, args.worker, args.batch_size, args.steps, args.threads)))
        return
    results: dict[float, list[dict]] = {p: [] for p in RATES}
    for r in range(args.rounds):
        order = RATES[r % len(RATES):] + RATES[:r % len(RATES)]  # rotated, so load drift biases no setting
        for p in order:
            results[p].append(measure(args, p))
    base = statistics.median(m["ms"] for m in results[0.0])
    print(f"open_clip {args.arch} image tower, random weights, batch {args.batch_size} x 224 px, fp32, "
          f"{args.threads} threads; median of {args.rounds} rounds x {args.steps} steps")
    print("| patch_dropout | tokens seen | share kept | ms/step | speed-up | peak RSS (MB) | rounds (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for p in RATES:
        ms = statistics.median(m["ms"] for m in results[p])
        first = results[p][0]
        print(f"| {p} | {first['tokens']} of {first['full']} | {first['tokens'] / first['full']:.3f} | {ms:.0f} | "
              f"{base / ms:.2f}x | {statistics.median(m['rss_mb'] for m in results[p]):.0f} | "
              f"{[round(m['ms']) for m in results[p]]} |")


if __name__ == "__main__":
    main()
