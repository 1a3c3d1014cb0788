"""Streamed loader throughput, no model: jointspace's ShardStream against open_clip_train's own webdataset
pipeline (`open_clip_train.data.get_wds_dataset`) on the same shards, in one run.

The shards are written here as img2dataset writes them (`<key>.png|jpg`, `<key>.txt`, `<key>.cls`), 224 px
colour pictures and a caption each, so both loaders read the same bytes. Each row is one full pass over
the split; the table shows the median of `--rounds` rounds (loaders alternated inside every round) and the
ratio of jointspace to open_clip_train at the same number of workers. open_clip_train runs with its training
transform (RandomResizedCrop to 224, as its users train) and with its evaluation transform (resize + centre
crop: nothing to do on 224 px pictures), and tokenizes captions with the same BPE tokenizer as jointspace.

    python bench/loader.py --rounds 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from jointspace.data.stream import ShardStream, stream_loader
from jointspace.data.webdataset import OPENCLIP_KEYS, Layout, parse_keys
from jointspace.kinds import Prep

KINDS = {"image": "image", "text": "text"}


def picture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth colour field with a few bright blocks and mild noise: compresses like a photo, not like noise."""
    low = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.float32)
    img = np.asarray(Image.fromarray(low.astype(np.uint8)).resize((size, size), Image.BICUBIC), dtype=np.float32)
    for _ in range(3):
        y, x, h, w = rng.integers(0, size - size // 4, 2).tolist() + rng.integers(size // 8, size // 4, 2).tolist()
        img[y:y + h, x:x + w] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_shards(folder: Path, fmt: str, n_samples: int, size: int, per_shard: int) -> list[str]:
    """img2dataset-style shards of `n_samples` pictures (PNG or JPEG quality 95) with captions and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0, mtime=0) as sink:
        for i in range(n_samples):
            buf = io.BytesIO()
            Image.fromarray(picture(rng, size)).save(buf, format="PNG" if fmt == "png" else "JPEG", quality=95)
            label = i % 100
            sink.write({"__key__": f"{i:08d}", fmt: buf.getvalue(), "cls": str(label).encode(),
                        "txt": f"a photo of thing number {label}, seen from angle {i % 7}".encode()})
    return sorted(str(p) for p in folder.glob("*.tar"))


def jointspace_pass(urls: list[str], batch_size: int, workers: int, size: int) -> int:
    layout = Layout(parse_keys(OPENCLIP_KEYS), label_from="cls")
    stream = ShardStream(urls, KINDS, batch_size, prep=Prep(image_size=size, context_length=77),
                         decode=layout.decode)
    return sum(len(b["label"]) for b in stream_loader(stream, workers))


def openclip_pass(urls: list[str], n_samples: int, batch_size: int, workers: int, size: int,
                  train_transform: bool) -> int:
    from open_clip import get_tokenizer, image_transform
    from train_bench_worker import open_clip_train_data

    get_wds_dataset = open_clip_train_data().get_wds_dataset

    args = Namespace(train_data="::".join(urls), train_num_samples=n_samples, dataset_resampled=False,
                     train_data_upsampling_factors=None, seed=0, batch_size=batch_size, workers=workers,
                     world_size=1)
    info = get_wds_dataset(args, image_transform(size, is_train=train_transform), is_train=True, epoch=0,
                           tokenizer=get_tokenizer("ViT-B-32"))
    return sum(len(images) for images, _ in info.dataloader)


def timed(fn) -> float:
    """samples/s of one full pass."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=3500)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--per-shard", type=int, default=250)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--formats", nargs="+", default=["png", "jpg"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b, size, n = args.batch_size, args.size, args.n_samples
    loaders = {"jointspace ShardStream": lambda u, w: jointspace_pass(u, b, w, size),
               "open_clip_train (train transform)": lambda u, w: openclip_pass(u, n, b, w, size, True),
               "open_clip_train (eval transform)": lambda u, w: openclip_pass(u, n, b, w, size, False)}
    rates: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shards = {fmt: write_shards(Path(tmp) / fmt, fmt, args.n_samples, args.size, args.per_shard)
                  for fmt in args.formats}
        for _ in range(args.rounds):
            for fmt, urls in shards.items():
                for w in args.workers:
                    for name, run in loaders.items():
                        rates.setdefault((fmt, name, w), []).append(timed(lambda r=run, u=urls, w=w: r(u, w)))
    print(f"{'format':6} {'loader':36} {'workers':>7} {'samples/s':>10} {'per worker':>10} {'x open_clip_train':>18}")
    for (fmt, name, w), values in rates.items():
        rate = statistics.median(values)
        peer = statistics.median(rates[(fmt, "open_clip_train (train transform)", w)])
        print(f"{fmt:6} {name:36} {w:7d} {rate:10.0f} {rate / max(w, 1):10.0f} {rate / peer:18.2f}")
    print(f"({args.n_samples} samples of {args.size} px in shards of {args.per_shard}, batch {args.batch_size}, "
          f"{args.threads} torch threads, median of {args.rounds} rounds; x open_clip_train: against its "
          "training transform at the same number of workers)")


if __name__ == "__main__":
    main()
