"""Issue 31, point 5 (second half): measured effect of fine-tuning recipes on Fashion-MNIST.

    PYTHONPATH=src HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python bench/recipes_fashion.py [--work DIR]

Builds Fashion-MNIST class folders with captions (bench/recipes_data.py: installs Debian's
`dataset-fashion-mnist` when missing), packs them, then runs three `jointspace compare` grids through the CLI,
3 seeds each, one run at a time:

  a. pretrained EfficientNet-Lite0 + MiniLM: `full` (both towers train), `frozen` (LiT: the image tower
     frozen), `unlock+decay` (both towers: the last `--unlocked` layer groups train, layer decay 0.75);
  b. patch dropout: open_clip's ViT-S-32 image tower at random weights (open_clip's pretrained weights are
     not on this offline machine) + MiniLM, `patch_dropout` 0 against 0.5; the tower resizes every image to
     224 px, so a step costs the same at any --size: this grid gets its own smaller set (--vit-train,
     --vit-test) and --vit-epochs, and runs last;
  c. distillation: teacher = grid a's `full-s0` run; students: a small `cnn` + the same MiniLM tower
     (same tokenizer and context length), `plain` against `distill` (loss.distill, weight 1.0).

Prints one Markdown table of every grid (mean ± std over seeds) and the machine line.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes_data import build

PY = sys.executable


def base_config(args, shards: Path) -> dict:
    """The plain recipe every grid starts from (contrastive image <-> caption, positives by label)."""
    return {
        "task": "contrastive",
        "data": {"path": str(shards), "modalities": ["image", "text"], "image_size": args.size,
                 "context_length": 16},
        "model": {"embed_dim": 128, "init_temperature": 0.07, "towers": {
            "image": {"name": "efficientnet_lite0", "params": {"size": args.size}},
            "text": {"name": "minilm"}}},
        "loss": {"name": "infonce", "positives": "label", "anchor": "image"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_steps": 5,
                  "num_threads": args.threads, "log_every": 10},
        "eval": {"split": "test"},
        "tracker": "none",
    }


def grids(args, shards: Path, vit_shards: Path) -> dict[str, dict]:
    """name -> grid mapping (`jointspace compare` format; the base inline)."""
    base = base_config(args, shards)
    common = {"output_dir": str(args.work / "runs"), "seeds": args.seeds, "jobs": 1, "base": base}
    unlock = {"unlocked_groups": args.unlocked, "layer_decay": 0.75}
    vit = {"name": "openclip_image", "params": {"model": args.vit}}
    teacher = args.work / "runs" / "fashion_effnet" / "runs" / f"full-s{args.seeds[0]}"
    cnn = {"name": "cnn", "params": {"channels": [32, 64, 128], "first_downsample": True}}
    return {
        "fashion_effnet": {**common, "name": "fashion_effnet", "variants": [
            {"name": "full", "set": {}},
            {"name": "frozen", "set": {"model.towers.image.freeze": True}},
            {"name": "unlock+decay", "set": {"model.towers.image": {**base["model"]["towers"]["image"], **unlock},
                                             "model.towers.text": {"name": "minilm", **unlock}}}]},
        "fashion_patch_dropout": {**common, "name": "fashion_patch_dropout", "set": {
            "data.path": str(vit_shards), "train.epochs": args.vit_epochs, "train.warmup_steps": 2}, "variants": [
            {"name": "patch_dropout-0", "set": {"model.towers.image": vit}},
            {"name": "patch_dropout-0.5", "set": {"model.towers.image": {**vit, "patch_dropout": 0.5}}}]},
        "fashion_distill": {**common, "name": "fashion_distill", "set": {"model.towers.image": cnn}, "variants": [
            {"name": "plain", "set": {}},
            {"name": "distill", "set": {"loss.distill": {"teacher": str(teacher), "weight": 1.0}}}]},
    }


class LoadWatch(threading.Thread):
    """Samples the 1-minute load average every `every` seconds while the grids run."""

    def __init__(self, every: float = 15.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self.stop.wait(self.every)

    def line(self) -> str:
        s = self.samples or [float("nan")]
        return f"load average (1 min) during the grids: min {min(s):.1f}, mean {sum(s) / len(s):.1f}, max {max(s):.1f}"


def run_grid(path: Path) -> int:
    t0 = time.time()
    rc = subprocess.run([PY, "-m", "jointspace.cli", "compare", str(path)], check=False).returncode
    print(f"{path.stem}: compare exited {rc} after {time.time() - t0:.0f} s", flush=True)
    return rc


def _pm(row: dict, key: str, digits: int) -> str:
    mean, std = row.get(f"{key}_mean", ""), row.get(f"{key}_std", "")
    if mean in ("", None) or math.isnan(float(mean)):
        return "n/a"
    return f"{float(mean):.{digits}f} ± {float(std):.{digits}f}"


def combined_table(grid_dirs: list[Path]) -> str:
    header = ("| grid | variant | seeds | R@1 (test accuracy) | zero-shot top-1 | linear probe | s / epoch "
              "| peak memory (MB) |")
    lines = [header, "|---|---|---:|---|---|---|---|---|"]
    for d in grid_dirs:
        table = d / "comparison.csv"
        if not table.exists():
            lines.append(f"| {d.name} | (no comparison: grid not run or failed) | | | | | | |")
            continue
        for r in csv.DictReader(table.open()):
            lines.append(f"| {d.name} | {r['variant']} | {r['n_seeds']} | {_pm(r, 'test_accuracy', 4)} | "
                         f"{_pm(r, 'zero_shot_top1', 4)} | {_pm(r, 'linear_probe', 4)} | "
                         f"{_pm(r, 'seconds_per_epoch', 1)} | {_pm(r, 'peak_mem_mb', 0)} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/fashion-bench"))
    p.add_argument("--n-train", type=int, default=1000, help="train images (balanced; val carved from them)")
    p.add_argument("--n-test", type=int, default=500)
    p.add_argument("--size", type=int, default=32, help="image side in pixels (28 px upsampled)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--unlocked", type=int, default=3, help="unlock+decay: layer groups that train")
    p.add_argument("--vit", default="ViT-S-32", help="open_clip architecture for the patch-dropout grid")
    p.add_argument("--vit-train", type=int, default=400, help="patch-dropout grid: train images")
    p.add_argument("--vit-test", type=int, default=200, help="patch-dropout grid: test images")
    p.add_argument("--vit-epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--grids", nargs="+", default=["fashion_effnet", "fashion_distill", "fashion_patch_dropout"])
    p.add_argument("--reuse-data", action="store_true", help="keep the packed shards of an earlier call")
    args = p.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    shards, vit_shards = args.work / "shards", args.work / "vit" / "shards"
    if not (args.reuse_data and (shards / "dataset.json").exists() and (vit_shards / "dataset.json").exists()):
        shards = build(args.work, args.n_train, args.n_test, args.size, args.val_fraction, PY)
        vit_shards = build(args.work / "vit", args.vit_train, args.vit_test, args.size, args.val_fraction, PY)
    watch = LoadWatch()
    watch.start()
    specs = grids(args, shards, vit_shards)
    failed = []
    for name in args.grids:
        path = args.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(specs[name], sort_keys=False))
        if run_grid(path) != 0:
            failed.append(name)
    watch.stop.set()
    dirs = [args.work / "runs" / name for name in args.grids]
    print("\n" + combined_table(dirs) + "\n")
    for d in dirs:
        print(f"- {d / 'comparison.md'}")
    print(f"\nmachine: {os.cpu_count()} CPUs, torch {torch.__version__}, {watch.line()}; "
          f"{args.n_train} train / {args.n_test} test images at {args.size} px, {args.epochs} epochs (patch dropout: "
          f"{args.vit_train} / {args.vit_test}, {args.vit_epochs} epochs), "
          f"batch {args.batch_size}, lr {args.lr}, seeds {args.seeds}; total {time.time() - t0:.0f} s")
    if failed:
        print(f"grids with failed runs: {', '.join(failed)} (see their output above)")
        sys.exit(1)


if __name__ == "__main__":
    main()
