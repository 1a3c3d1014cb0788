"""Patch dropout on the CPU: training-step time of an open_clip ViT image tower (jointspace's
`openclip_image`, random weights) with `patch_dropout` 0, 0.5 and 0.75.

A step is forward + backward + AdamW step (jointspace's optimizer: torch's fused AdamW on the CPU) on
a batch of random 224 px images (loss: the mean square of the tower's output; the data does not matter
to the time). One process, one tower and optimizer: in each of `--rounds` rounds every setting runs
`--steps` timed steps (after one untimed step in the first round), the order of the settings rotating
from round to round so that load drifting on a shared machine biases none.

Per setting: the median and the least wall time of a step (the least is the one least disturbed by
other jobs; process CPU time is no better on a loaded machine, as one thread spins while the other
waits for a core), the speed-ups against patch_dropout 0, the share of tokens the transformer sees,
the forward + backward FLOPs (torch's FlopCounterMode) and the activations saved for backward (bytes
of the distinct non-parameter tensors autograd keeps, `torch.autograd.graph.saved_tensors_hooks`);
these two are exact, not noisy.

    .venv/bin/python bench/patch_dropout.py                      # ViT-S-32, batch 16, 2 threads, ~3 min
    .venv/bin/python bench/patch_dropout.py --arch ViT-S-16 --batch-size 8   # 196 patches (slower)
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

from jointspace.config import TrainConfig
from jointspace.engine.optim import build_optimizer
from jointspace.towers import build_tower

RATES = (0.0, 0.5, 0.75)


def work(tower: torch.nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(GFLOP of forward + backward, MB of the distinct non-parameter tensors autograd saves for backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    params = {p.untyped_storage().data_ptr() for p in tower.parameters()}
    seen: dict[int, int] = {}  # storage -> bytes (views of one storage counted once)

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with FlopCounterMode(display=False) as flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tower(x).square().mean().backward()
    tower.zero_grad(set_to_none=True)
    return flops.get_total_flops() / 1e9, sum(seen.values()) / 2**20


def step(tower: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> float:
    """Wall seconds of one training step."""
    start = time.perf_counter()
    tower(x).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ViT-S-32")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded"
    torch.manual_seed(0)
    tower = build_tower("openclip_image", model=args.arch).train()
    opt = build_optimizer(tower, TrainConfig(lr=1e-4))
    x = torch.rand(args.batch_size, 3, *tower.image_size) * 2 - 1
    times: dict[float, list[float]] = {p: [] for p in RATES}
    measured = {}
    for r in range(args.rounds):
        for p in RATES[r % len(RATES):] + RATES[:r % len(RATES)]:
            tower.set_patch_dropout(p)
            if r == 0:
                measured[p] = work(tower, x)
                step(tower, opt, x)  # warm-up: AdamW state, allocations of this shape
            times[p] += [step(tower, opt, x) for _ in range(args.steps)]
    patches = tower.visual.grid_size[0] * tower.visual.grid_size[1]
    base, base_min = statistics.median(times[0.0]), min(times[0.0])
    print(f"open_clip {args.arch} image tower, random weights, batch {args.batch_size} x 224 px, fp32, "
          f"{args.threads} threads; {args.rounds} rounds x {args.steps} steps")
    print("| patch_dropout | tokens seen | share kept | GFLOP fwd+bwd | saved activations (MB) | median ms/step | "
          "speed-up | min ms/step | speed-up (min) | ms of each step |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for p in RATES:
        tokens = 1 + (max(1, int(patches * (1 - p))) if p else patches)  # open_clip's PatchDropout rule
        med, low = statistics.median(times[p]), min(times[p])
        print(f"| {p} | {tokens} of {1 + patches} | {tokens / (1 + patches):.3f} | {measured[p][0]:.1f} | "
              f"{measured[p][1]:.0f} | {1e3 * med:.0f} | {base / med:.2f}x | {1e3 * low:.0f} | {base_min / low:.2f}x | "
              f"{[round(1e3 * t) for t in times[p]]} |")


if __name__ == "__main__":
    main()
