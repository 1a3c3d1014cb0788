"""Loader throughput: samples/s of the data path alone (no model), jointspace vs webdataset's own
per-sample decode pipeline on the same shards.

    python bench/loader.py --data data/shapes --batch-size 128
"""

from __future__ import annotations

import argparse
import time

import torch
import webdataset as wds

from jointspace.data.dataset import epoch_batches, load_split
from jointspace.data.shards import read_info, split_urls
from jointspace.data.stream import ShardStream, stream_loader


def timed(fn) -> tuple[float, int]:
    """(seconds, samples) of one full pass."""
    t0 = time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/shapes")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = ap.parse_args()
    torch.set_num_threads(2)
    info = read_info(args.data)
    kinds = info["modalities"]
    urls = split_urls(args.data, args.split)
    rows = []

    def in_memory_decode() -> int:
        return len(load_split(args.data, args.split, list(kinds), image_size=args.image_size))

    secs, n = timed(in_memory_decode)
    rows.append(("jointspace load_split (decode once, tensors)", secs, n))
    data = load_split(args.data, args.split, list(kinds), image_size=args.image_size)

    def in_memory_epoch() -> int:
        return sum(len(data.batch(idx)["label"]) for idx in epoch_batches(len(data), args.batch_size, 0, 0))

    secs, n = timed(in_memory_epoch)
    rows.append(("jointspace in-memory epoch (index batches)", secs, n))
    for w in args.workers:
        def streamed(w=w) -> int:
            stream = ShardStream(urls, kinds, args.batch_size, image_size=args.image_size)
            return sum(len(b["label"]) for b in stream_loader(stream, num_workers=w))

        secs, n = timed(streamed)
        rows.append((f"jointspace ShardStream, {w} workers (batch collate)", secs, n))
    ext = {"image": "png", "text": "txt", "sequence": "npy", "range": "npy"}
    files = [f"{m}.{ext[k]}" for m, k in kinds.items()] + ["cls"]
    for w in args.workers:
        def peer(w=w) -> int:  # decodes every file per sample; does not tokenize or resize
            ds = (wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("torchrgb")
                  .to_tuple(*files).batched(args.batch_size, partial=False))
            loader = wds.WebLoader(ds, batch_size=None, num_workers=w)
            return sum(len(b[1]) for b in loader)

        secs, n = timed(peer)
        rows.append((f"webdataset .decode('torchrgb').batched, {w} workers *", secs, n))
    print(f"{'loader':55} {'samples':>8} {'seconds':>8} {'samples/s':>10}")
    for name, secs, n in rows:
        print(f"{name:55} {n:8d} {secs:8.2f} {n / secs:10.0f}")
    print(f"(data {args.data}/{args.split}, modalities {list(kinds)}, batch {args.batch_size}, 2 torch threads; "
          "* the peer decodes the same files but neither tokenizes captions nor resizes images)")


if __name__ == "__main__":
    main()
