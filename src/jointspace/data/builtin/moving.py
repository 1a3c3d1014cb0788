"""Procedural video set: a coloured square moving across a dark, noisy 16 x 16 frame; its direction is the
class, and a caption names its colour and direction. Clips have 6 to 12 frames."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CLASS_NAMES = ["left", "right", "up", "down"]
STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (row, column) per frame
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
           "white": (235, 235, 235)}
TEMPLATES = ["a {colour} square moving {direction}", "a {colour} block going {direction}",
             "something {colour} that moves {direction}"]
MODALITIES = {"video": "video", "text": "text"}
SIDE = 16
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def clip(rng: np.random.Generator, direction: str, colour: str) -> np.ndarray:
    """One clip, uint8 [T, SIDE, SIDE, 3]: the square starts where its whole path stays inside the frame."""
    n_frames, square, speed = int(rng.integers(6, 13)), int(rng.integers(3, 6)), 1
    travel = (n_frames - 1) * speed
    dr, dc = STEPS[direction]
    start = [int(rng.integers(0, SIDE - square + 1)) for _ in range(2)]
    for axis, d in enumerate((dr, dc)):
        if d:
            lo, hi = (travel, SIDE - square) if d < 0 else (0, SIDE - square - travel)
            start[axis] = int(rng.integers(max(lo, 0), max(hi, lo, 0) + 1))
    frames = rng.integers(0, 40, (n_frames, SIDE, SIDE, 3)).astype(np.uint8)
    for t in range(n_frames):
        r = int(np.clip(start[0] + dr * speed * t, 0, SIDE - square))
        c = int(np.clip(start[1] + dc * speed * t, 0, SIDE - square))
        frames[t, r : r + square, c : c + square] = COLOURS[colour]
    return frames


def samples(split: str, n: int, seed: int) -> Iterator[dict]:
    """`n` samples of one split, classes in turn, colours and captions drawn."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        label = i % len(CLASS_NAMES)
        direction, colour = CLASS_NAMES[label], str(rng.choice(list(COLOURS)))
        text = str(rng.choice(TEMPLATES)).format(colour=colour, direction=direction)
        yield {"key": f"moving-{split}-{i:05d}", "video": clip(rng, direction, colour), "text": text, "label": label}


def splits(n: int, seed: int) -> dict[str, Iterator[dict]]:
    """Train/val/test sample streams of `n` samples in all."""
    out = {}
    for j, (split, frac) in enumerate(SPLIT_FRACTIONS.items()):
        split_seed = int(np.random.SeedSequence([seed, j]).generate_state(1)[0])
        out[split] = samples(split, max(1, round(n * frac)), split_seed)
    return out


def info() -> dict:
    """dataset.json fields: name, source and the zero-shot prompts of each direction."""
    return {"name": "moving", "source": "procedural clips (jointspace.data.builtin.moving)",
            "zero_shot_prompts": {d: [t.format(colour=c, direction=d) for t in TEMPLATES for c in COLOURS]
                                  for d in CLASS_NAMES}}
