"""Op-level profile of the bare tiny-CLIP training step on CPU, in fp32, in bf16 autocast with PyTorch's
attention kernel, and in bf16 with jointspace's forward context (engine/precision.py).

open_clip's model (bench/train_vs_openclip.py's tiny config), ClipLoss and fused AdamW on random
tensors, 3 warm-up steps, then `torch.profiler` over `--steps` steps; prints, per setting, the step
time and the ten ops with the most self time, as one markdown table.

    .venv/bin/python bench/step_profile.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_bench_data import bare_step
from train_vs_openclip import model_config

from jointspace.engine.precision import autocast

SETTINGS = {"fp32": lambda: contextlib.nullcontext(),
            "bf16, flash (PyTorch's choice)": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
            "bf16, jointspace (math up to 128 tokens)": lambda: autocast(torch.device("cpu"), "bf16")}


def profile_step(name: str, cfg: dict, ctx, batch: int, steps: int, top: int) -> tuple[float, list]:
    """(ms per step, [(op, self ms per step, share)]) of `steps` bare training steps under `ctx`."""
    step = bare_step(name, batch, cfg["text_cfg"]["context_length"], cfg["vision_cfg"]["image_size"], "cpu", ctx,
                     fused=True)
    for _ in range(3):
        step()
    with profile() as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [(e.key, e.self_cpu_time_total / steps / 1e3, e.self_cpu_time_total / total) for e in events[:top]]
    return total / steps / 1e3, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)  # open_clip's "no pretrained weights loaded"
    name, _, cfg = model_config(Path("runs/bench_train"), "tiny")
    results = {label: profile_step(name, cfg, make(), args.batch_size, args.steps, 10) for label, make in SETTINGS.items()}
    print(f"tiny CLIP step, batch {args.batch_size}, {args.threads} threads, self time per step over {args.steps} steps")
    print("| # | " + " | ".join(f"{label}: op | ms/step | share" for label in results) + " |")
    print("|---:|" + "---|---:|---:|" * len(results))
    for i in range(10):
        cells = [f"`{op}` | {ms:.1f} | {100 * share:.1f} %" for op, ms, share in (r[1][i] for r in results.values())]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    print("| | " + " | ".join(f"**step** | **{ms:.0f}** | " for ms, _ in results.values()) + "|")


if __name__ == "__main__":
    main()
