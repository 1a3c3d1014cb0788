"""Fashion-MNIST class folders with captions for bench/recipes_fashion.py (issue 31, point 5).

Debian's `dataset-fashion-mnist` is installed when missing (apt-get, as root: the benchmark only, never the
tests); its IDX files are read, a balanced, seeded subset is written as `<out>/train|test/<class>/<i>.png`
with one caption `<i>.txt` per image, and `jointspace data pack` packs it with a stratified val split.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "dataset-fashion-mnist"
# Fashion-MNIST's 10 classes: (folder name, the words captions use)
CLASSES = [("tshirt_top", "t-shirt"), ("trouser", "pair of trousers"), ("pullover", "pullover"),
           ("dress", "dress"), ("coat", "coat"), ("sandal", "sandal"), ("shirt", "shirt"),
           ("sneaker", "sneaker"), ("bag", "bag"), ("ankle_boot", "ankle boot")]
TEMPLATES = ["a photo of a {name}", "{name}, product photo", "a black and white photo of a {name}",
             "a {name} on a plain background", "a small grey picture of a {name}", "catalogue image: {name}"]


def idx_dir() -> Path:
    """The package's IDX folder, installing the package first when it is missing."""
    listed = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=False)
    if listed.returncode != 0:
        print(f"installing {PACKAGE} (apt-get)", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", PACKAGE], check=True)
        listed = subprocess.run(["dpkg", "-L", PACKAGE], capture_output=True, text=True, check=True)
    files = [Path(p) for p in listed.stdout.split() if p.endswith("-idx3-ubyte.gz")]
    if not files:
        sys.exit(f"{PACKAGE}: no *-idx3-ubyte.gz among its files")
    return files[0].parent


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped): magic (0, 0, dtype 0x08 = uint8, n dims), big-endian int32 dims, the data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        sys.exit(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def balanced(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """per_class indices of each class, drawn without replacement, in a shuffled order."""
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(len(CLASSES))]
    return rng.permutation(np.concatenate(picks))


def write_folders(root: Path, n_train: int, n_test: int, size: int, seed: int = 0) -> dict:
    """`root/train|test/<class>/<i>.png` (RGB, size x size, bicubic) + `<i>.txt`; returns the counts."""
    src = idx_dir()
    rng = np.random.default_rng(seed)
    counts = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = read_idx(src / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(src / f"{prefix}-labels-idx1-ubyte.gz")
        for folder, _ in CLASSES:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        chosen = balanced(labels, n // len(CLASSES), rng)
        for i in chosen:
            folder, name = CLASSES[int(labels[i])]
            img = Image.fromarray(images[i]).resize((size, size), Image.BICUBIC).convert("RGB")
            img.save(root / split / folder / f"{i}.png")
            template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
            (root / split / folder / f"{i}.txt").write_text(template.format(name=name) + "\n")
        counts[split] = len(chosen)
    return counts


def build(work: Path, n_train: int, n_test: int, size: int, val_fraction: float, python: str) -> Path:
    """Class folders + packed shards under `work` (rebuilt from scratch); returns the shard folder."""
    folders, shards = work / "folders", work / "shards"
    for old in (folders, shards):
        if old.exists():
            shutil.rmtree(old)
    counts = write_folders(folders, n_train, n_test, size)
    print(f"class folders: {counts} at {size} px -> {folders}", flush=True)
    subprocess.run([python, "-m", "jointspace.cli", "data", "pack", str(folders), "--out", str(shards),
                    "--val-fraction", str(val_fraction)], check=True)
    return shards
