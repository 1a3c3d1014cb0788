"""The whole audit at scale: 100k samples x 2 modalities, every finder, time per finder and peak memory.

    .venv/bin/python bench/audit.py                    # 100k samples, 2 x 64-d, 70/15/15 splits
    .venv/bin/python bench/audit.py --n 20000 --dim 32
    .venv/bin/python bench/audit.py --pictures         # and 32x32 pictures: near copies by content too
    .venv/bin/python bench/audit.py --by-class         # the text modality paired by class, not by sample

The embeddings are synthetic (embedding 100k real samples on 2 cores is the run's own cost, not the
audit's): 10 classes, each sample a class centre plus its own direction plus noise in each modality, so
that neighbours, partner ranks and the linear probe face a realistic geometry. Planted: 1 % exact copies,
1 % near copies from train into test, 1 % swapped partners, 2 % flipped labels; their recall is printed as a
check that the run did the work. Peak memory is the process's maximum resident set size (ru_maxrss).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def synthetic_space(n: int, dim: int, seed: int = 0, pictures: bool = False, by_class: bool = False):
    """A Space of n samples in 2 modalities with planted faults; returns (space, planted keys per fault).
    `pictures`: with values (a picture per sample, a caption per class), so the near-copy search by
    content runs too. `by_class`: each sample's text is another sample's of its class (the modalities paired
    by class, as digits' recordings are): a swapped partner is planted only where the two classes differ."""
    from jointspace.audit.space import Space, content_hash

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    centres = rng.normal(size=(10, dim)) * 1.2
    own = {"image": rng.normal(size=(n, dim))}
    own["text"] = own["image"].copy()
    for c in range(10) if by_class else ():  # each text takes another sample's of its class
        rows = np.flatnonzero(labels == c)
        own["text"][rows] = own["image"][rng.permutation(rows)]
    emb = {m: _unit(centres[labels] + own[m] + 0.35 * rng.normal(size=(n, dim))).astype(np.float32)
           for m in ("image", "text")}
    splits = np.array(["train"] * n, dtype=object)
    splits[int(0.7 * n):int(0.85 * n)], splits[int(0.85 * n):] = "val", "test"
    hashes = {m: np.array([f"{m}{i:x}" for i in range(n)], dtype=object) for m in emb}
    train, test = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "test")
    pick = rng.permutation(train)
    dup_src, dup_dst = pick[:n // 100], pick[n // 100:n // 50]
    near_src, near_dst = pick[n // 50:3 * n // 100], rng.choice(test, n // 100, replace=False)
    swap = pick[3 * n // 100:4 * n // 100]
    flip = pick[4 * n // 100:6 * n // 100]
    for m, e in emb.items():
        e[dup_dst], hashes[m][dup_dst] = e[dup_src], hashes[m][dup_src]
        e[near_dst] = _unit(e[near_src] + 0.02 * rng.normal(size=(len(near_src), dim)))
    labels[dup_dst], labels[near_dst] = labels[dup_src], labels[near_src]
    a, b = swap[: len(swap) // 2], swap[len(swap) // 2:]
    emb["text"][a], emb["text"][b] = emb["text"][b].copy(), emb["text"][a].copy()
    if by_class:  # a swap within a class is no fault where any value of the class is a right partner
        swap = np.concatenate([a[labels[a] != labels[b]], b[labels[a] != labels[b]]])
    labels[flip] = (labels[flip] + rng.integers(1, 10, len(flip))) % 10
    keys = [f"k{i:06d}" for i in range(n)]
    space = Space(keys=keys, splits=splits, labels=labels.astype(np.int64), emb=emb, kinds={"image": "image", "text": "text"},
                  class_names=[str(c) for c in range(10)], hashes=hashes)
    if pictures:  # values for the content route: a 32x32 grey picture (8x8 random blocks) and a class caption
        images = np.kron(rng.integers(0, 256, (n, 8, 8)), np.ones((1, 4, 4))).astype(np.uint8)
        images[dup_dst] = images[dup_src]
        images[near_dst] = np.clip(np.round(images[near_src] + rng.normal(0, 2, images[near_src].shape)), 0, 255)
        space.values = {"image": list(images), "text": [f"a picture of class {c}" for c in labels.tolist()]}
        space.hashes = {m: np.array([content_hash(v) for v in vals], dtype=object) for m, vals in space.values.items()}
    planted = {"duplicate": dup_dst, "leak": near_dst, "mismatch": swap, "label": flip}
    return space, {k: {keys[i] for i in v.tolist()} for k, v in planted.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pictures", action="store_true", help="give the samples values (32x32 pictures, captions): "
                    "the near-copy search by content runs too")
    ap.add_argument("--by-class", action="store_true", help="pair the text modality by class: each sample's text "
                    "is another sample's of its class")
    args = ap.parse_args()
    import faiss

    from jointspace.audit.run import Settings, audit_space

    faiss.omp_set_num_threads(args.threads)
    t0 = time.perf_counter()
    space, planted = synthetic_space(args.n, args.dim, pictures=args.pictures, by_class=args.by_class)
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    found, summary, _ = audit_space(space, Settings())
    total = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"made {args.n} x 2 x {args.dim}-d in {made:.1f}s", file=sys.stderr)
    print("| samples | modalities x dim | finder | seconds |")
    print("|---:|---|---|---:|")
    for name, s in summary["seconds"].items():
        print(f"| {args.n:,} | 2 x {args.dim} | {name} | {s:.1f} |")
    print(f"| {args.n:,} | 2 x {args.dim} | **whole audit** | **{total:.1f}** |")
    print(f"\npeak resident memory: {peak_mb:,.0f} MB; threads: {args.threads}")
    print(f"mismatch candidates per split: {summary.get('mismatch_beaten_by')}")
    for issue, keys in planted.items():
        flagged = {f.key for f in found if f.issue == issue}
        flagged |= {f.partner_key for f in found if f.issue == issue and issue == "duplicate"}  # either copy
        print(f"planted {issue}: {len(keys)}, recall {len(flagged & keys) / len(keys):.3f}, flagged {len(flagged)}")


if __name__ == "__main__":
    main()
