"""Issue 31, point 5 (first half): do mined hard negatives, a guide run (GISTEmbed's rule) and no-duplicate
batches help a joint space on the shapes set, scored at the scene level (144 scene kinds: shape, colour,
size, position), where Recall@1 is far from saturated?

Steps (all through the command line, as a user runs them):
1. shapes scenes (image + caption) re-packed with the scene as label, so that `eval` (positives: label)
   scores scene-level R@1, zero-shot top-1 over the 144 scene names and a linear probe;
2. a reference run of the plain recipe (its own seed): it mines the hard negatives (`jointspace mine`)
   and is the guide (`loss.guide`);
3. one `jointspace compare` grid: plain, hard negatives, guide, no-duplicates, 3 seeds each.
Prints the comparison and the machine line. Run: `.venv/bin/python bench/recipes_shapes.py`.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from train_bench_data import _scene_id

from jointspace.data.builtin import shapes, synthesize
from jointspace.data.shards import ReadStats, iter_samples, read_info, split_urls, write_dataset


def scene_names() -> list[str]:
    """The 144 scene kinds in `_scene_id` order, as caption words."""
    return [f"{size} {colour} {shape} {shapes.POSITION_WORDS[pos]}" for shape in shapes.SHAPES
            for colour in shapes.COLOURS for size in shapes.SIZES for pos in shapes.POSITIONS]


def scene_data(work: Path, n: int) -> Path:
    """Shapes image + caption shards labelled by scene (cached)."""
    src, out = work / f"shapes-{n}", work / f"scenes-{n}"
    if not (src / "dataset.json").exists():
        synthesize("shapes", src, seed=0, n=n)
    if not (out / "dataset.json").exists():
        def samples(split: str):
            for s in iter_samples(split_urls(src, split), ReadStats(), ["image", "text"]):
                yield {"key": s["key"], "image": s["image"], "text": s["text"], "label": _scene_id("shapes", s)}

        splits = [s for s in ("train", "val", "test") if s in read_info(src)["splits"]]
        write_dataset(out, {s: samples(s) for s in splits}, {"image": "image", "text": "text"}, scene_names(),
                      {"name": "shapes scenes (label = scene: shape, colour, size, position)"})
    return out


def base_config(data: Path, epochs: int) -> dict:
    """The plain recipe: CLIP-style (a caption's own image and any with the very same caption are positives),
    scored at the scene level."""
    return {"task": "contrastive", "tracker": "none",
            "data": {"path": str(data), "modalities": ["image", "text"], "image_size": 48, "context_length": 16},
            "model": {"embed_dim": 64, "towers": {"image": {"name": "cnn", "params": {"channels": [32, 64, 128]}},
                                                 "text": {"name": "transformer",
                                                          "params": {"width": 64, "layers": 2, "heads": 4}}}},
            "loss": {"name": "infonce", "positives": "caption"},
            "train": {"epochs": epochs, "batch_size": 128, "lr": 0.002, "warmup_steps": 30, "num_threads": 2},
            "eval": {"split": "test", "positives": "label"}}


def cli(*args: str) -> None:
    print("$ jointspace " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "jointspace.cli", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/recipes-shapes"))
    ap.add_argument("--n", type=int, default=4200, help="scenes synthesised (about 70 %% train)")
    ap.add_argument("--epochs", type=int, default=6, help="epochs of each compared run")
    ap.add_argument("--reference-epochs", type=int, default=8, help="epochs of the reference (miner, guide) run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--negatives", type=int, default=1, help="data.n_per_anchor")
    ap.add_argument("--margin", type=float, default=0.1, help="mine --margin (below the positive's cosine)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0, load0 = time.time(), os.getloadavg()[0]
    data = scene_data(args.work, args.n)
    base = base_config(data, args.epochs)
    (args.work / "base.yaml").write_text(yaml.safe_dump(base))
    ref = args.work / "runs" / "reference"
    if not (ref / "done.json").exists():
        cfg = base_config(data, args.reference_epochs)
        cfg.update(name="reference", output_dir=str(args.work / "runs"), seed=100)
        (args.work / "reference.yaml").write_text(yaml.safe_dump(cfg))
        cli("train", str(args.work / "reference.yaml"), "--resume" if (ref / "checkpoints").exists() else "--overwrite")
    negatives = args.work / "negatives.parquet"
    if not negatives.exists():
        cli("mine", str(ref), str(data), "--out", str(negatives), "--anchor", "image", "--candidate", "text",
            "--num-negatives", "5", "--margin", str(args.margin))
    grid = {"name": "recipes", "output_dir": str(args.work / "runs"), "base": "base.yaml", "seeds": args.seeds,
            "jobs": 1, "variants": [
                {"name": "plain"},
                {"name": "hard-negatives", "set": {"data.hard_negatives": str(negatives),
                                                   "data.n_per_anchor": args.negatives}},
                {"name": "guide", "set": {"loss.guide": str(ref)}},
                {"name": "no-duplicates", "set": {"data.batch_sampler": "no_duplicates"}}]}
    (args.work / "grid.yaml").write_text(yaml.safe_dump(grid))
    cli("compare", str(args.work / "grid.yaml"))
    table = (args.work / "runs" / "recipes" / "comparison.md").read_text()
    import torch

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}; shapes scenes "
          f"n={args.n}, {args.epochs} epochs (reference {args.reference_epochs}), batch 128, seeds {args.seeds}; load average at start {load0:.1f}, "
          f"at end {os.getloadavg()[0]:.1f}; {time.time() - t0:.0f} s in all")
    print("test accuracy = mean scene-level R@1 (image->text, text->image); zero-shot over the 144 scene names")
    print(table)


if __name__ == "__main__":
    main()
