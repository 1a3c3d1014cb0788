"""Identical inputs encoded once: training samples/s with `model.dedupe_inputs` on and off, on digits
(label positives: a batch of 128 holds about ten distinct captions) and shapes (caption positives).

    .venv/bin/python bench/dedupe.py                  # 3 rounds, order rotated, 2 epochs each
    .venv/bin/python bench/dedupe.py --rounds 1 --epochs 1

Each measurement is a fresh `jointspace train` process; samples/s is its train_summary.json figure
(training steps only: no data loading, validation or evaluation). One table: medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
JOINTSPACE = str(Path(sys.executable).parent / "jointspace")
CONFIGS = {"digits": ROOT / "src/jointspace/configs/digits.yaml", "shapes": ROOT / "examples/shapes.yaml"}


def measure(config: Path, dedupe: bool, epochs: int, out: Path) -> float:
    name = f"{config.stem}-{'on' if dedupe else 'off'}"
    cmd = [JOINTSPACE, "train", str(config), "--overwrite", "--set", f"name={name}", "--set", f"output_dir={out}",
           "--set", f"train.epochs={epochs}", "--set", f"model.dedupe_inputs={str(dedupe).lower()}",
           "--set", "eval.linear_probe=false", "--set", "tracker=none"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads((out / name / "train_summary.json").read_text())["samples_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    results: dict[tuple[str, bool], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, config in CONFIGS.items():
                for dedupe in ((False, True) if r % 2 == 0 else (True, False)):  # rotated order
                    results.setdefault((name, dedupe), []).append(measure(config, dedupe, args.epochs, Path(tmp)))
    print("| data | positives | off: samples/s | on: samples/s | ratio | rounds (off / on) |")
    print("|---|---|---:|---:|---:|---|")
    for name, positives in (("digits", "label"), ("shapes", "caption")):
        off, on = statistics.median(results[(name, False)]), statistics.median(results[(name, True)])
        print(f"| {name} | {positives} | {off:.0f} | {on:.0f} | {on / off:.2f}x | "
              f"{[round(v) for v in results[(name, False)]]} / {[round(v) for v in results[(name, True)]]} |")
    print(f"(median of {args.rounds} rounds, {args.epochs} epochs each, 2 CPU threads)")


if __name__ == "__main__":
    main()
