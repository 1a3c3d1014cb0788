"""The bare open_clip training step on one device, eager and compiled: samples/s, FLOPs per sample
(torch's FlopCounterMode over one forward + backward) and model FLOPs utilisation against a stated peak.

The peak is a number you give: on the H200 that shared/GPU.md describes, 790 TFLOP/s is a measured bf16
matmul (the datasheet's dense bf16 is ~989). Prints one table; the ratio column is compiled / eager.

    python bench/step_mfu.py --device cuda --arch ViT-B-32 --batch-size 256 --peak-tflops 790
    python bench/step_mfu.py --device cpu --arch tiny --batch-size 64 --peak-tflops 0.19 --precision fp32
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_bench_data as bd
from train_vs_openclip import model_config


def flops_per_sample(step, batch_size: int) -> float:
    """FLOPs of one step (forward + backward; the optimizer's elementwise work is not counted) per sample."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--arch", default="ViT-B-32", choices=["tiny", "ViT-B-32"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--peak-tflops", type=float, required=True, help="the device's peak at --precision")
    ap.add_argument("--seconds", type=float, default=15.0, help="timed training per variant")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=Path("runs/bench_mfu"))
    args = ap.parse_args()

    name, _, cfg = model_config(args.work_dir, args.arch)
    amp = (torch.autocast(args.device, dtype=torch.bfloat16) if args.precision == "bf16"
           else torch.autocast(args.device, enabled=False))
    shape = (args.batch_size, cfg["text_cfg"]["context_length"], cfg["vision_cfg"]["image_size"])
    eager = bd.bare_step(name, *shape, args.device, amp, fused=True)
    flops = flops_per_sample(eager, args.batch_size)
    rows = [("eager", bd.seconds_per_step(eager, args.device, args.seconds, warmup=2))]
    if not args.no_compile:
        compiled = bd.bare_step(name, *shape, args.device, amp, fused=True, compile=True)
        rows.append(("torch.compile", bd.seconds_per_step(compiled, args.device, args.seconds, warmup=2)))
    print(f"bare open_clip step, {name}, batch {args.batch_size}, {args.precision} on {args.device} "
          f"({torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}; torch {torch.__version__}); "
          f"{flops / 1e9:.1f} GFLOP per sample (forward + backward); peak {args.peak_tflops} TFLOP/s")
    print("| step | ms/step | samples/s | MFU | vs eager |")
    print("|---|---:|---:|---:|---:|")
    for label, sec in rows:
        mfu = flops * args.batch_size / sec / (args.peak_tflops * 1e12)
        print(f"| {label} | {sec * 1e3:.1f} | {args.batch_size / sec:,.0f} | {mfu:.1%} | {rows[0][1] / sec:.2f}x |")


if __name__ == "__main__":
    main()
