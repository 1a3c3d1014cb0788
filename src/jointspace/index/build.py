"""Embed every sample of chosen modalities of shard splits with a trained run into an IndexStore."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from jointspace.data.shards import DataError, ReadStats
from jointspace.data.source import Source
from jointspace.data.sources import shards_arg
from jointspace.index.backend import Store, check_backend, open_store
from jointspace.index.build_milvus import SLOW_MILVUS_BUILD_ENV, fill_milvus, milvus_staging, rank_staging  # noqa: F401
from jointspace.index.build_parts import build_ranked, my_part, rank_inserts, ranks, together
from jointspace.index.bulk import build_store
from jointspace.index.folder import INDEX_FOLDER
from jointspace.index.lock import LOCK_TIMEOUT_S, writer_lock
from jointspace.index.milvus_conn import is_lite
from jointspace.index.query import Encoder
from jointspace.kinds import get_kind, preview_modality, with_role
from jointspace.run_dir import RunDir

PREVIEW_MIN, PREVIEW_MAX = 64, 128
CHUNK_ROWS = 65_536  # vectors embedded before they go to the index


@dataclass
class Embedded:
    """Vectors [N, D] with one item per row and PNG previews per sample key: one chunk of an embedding."""

    vectors: np.ndarray
    items: list[dict]
    previews: dict[str, bytes] = field(default_factory=dict)

    def __iter__(self):  # unpacks as (vectors, items, previews), what IndexStore.add and build_store take
        return iter((self.vectors, self.items, self.previews))


def preview_png(kind: str, value: np.ndarray) -> bytes:
    """A small PNG of one value, as its kind previews it (upscaled to >= 64 px, at most 128)."""
    img = Image.fromarray(get_kind(kind).preview(value))
    side = max(img.size)
    if side < PREVIEW_MIN:
        f = math.ceil(PREVIEW_MIN / side)
        img = img.resize((img.width * f, img.height * f), Image.NEAREST)
    img.thumbnail((PREVIEW_MAX, PREVIEW_MAX))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _batches(root: Source, splits: list[str], modalities: list[str], stats: ReadStats, batch_size: int,
             part: tuple[int, int] = (0, 1)) -> Iterator[list[tuple[dict, str, str]]]:
    """Batches of (sample, split, source) read shard by shard; samples missing a modality are counted.
    `part` (rank, ranks): only this rank's part of the samples (build_parts.my_part)."""
    batch: list[tuple[dict, str, str]] = []
    mine, whole = my_part([(split, url) for split in splits for url in root.urls(split)], *part)
    n_read = 0
    for split, url in mine:
        for sample in root.samples([url], stats):
            n_read += 1
            if not whole and (n_read - 1) % part[1] != part[0]:
                stats.n_ok -= 1  # another rank's sample: counted there
                continue
            missing = [m for m in modalities if m not in sample]
            if missing:
                stats.n_ok -= 1  # iter_samples counted it as good
                stats.record(f"{url}:{sample['key']}: missing {missing}")
                continue
            source = sample["meta"].get("source") or sample["meta"].get("path") or f"{url}#{sample['key']}"
            batch.append((sample, split, str(source)))
            if len(batch) == batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def _first(value):
    """A sample's value, or the first of several (captions)."""
    return value[0] if isinstance(value, list) else value


def merge_classes(classes: list[str], names: list[str]) -> dict[int, int]:
    """The data's label -> the index's label, by class name: `names` missing from `classes` (the index's
    class list) are appended to it, so one label number means one class in the whole index."""
    for name in names:
        if name not in classes:
            classes.append(name)
    return {i: classes.index(name) for i, name in enumerate(names)}


def expected_samples(info: dict, splits: list[str] | None) -> int | None:
    """How many samples a dataset's info says `splits` (default: all) hold; None when it does not say."""
    splits = splits or list(info.get("splits", {}))
    return sum(info.get("splits", {}).get(s, {}).get("n_samples") or 0 for s in splits) or None


def embed_shards(encoder: Encoder, root: str | Path, splits: list[str] | None = None,
                 modalities: list[str] | None = None, batch_size: int = 256, max_bad_fraction: float = 0.01,
                 progress: Callable[[int], None] | None = None, stats: ReadStats | None = None,
                 chunk_rows: int = CHUNK_ROWS, classes: list[str] | None = None,
                 part: tuple[int, int] = (0, 1)) -> Iterator[Embedded]:
    """Embed every sample of `splits` (default: all) in each of `modalities` (default: the model's), in
    chunks of about `chunk_rows` vectors. `stats` (given or new) counts what was read; the bad-sample
    check runs when the last chunk is out. `classes` (an index's class list, extended in place): labels
    are renumbered into it by class name; without it they stay the data's own. `part` (rank, ranks): this
    rank's part of the samples; the whole's expected count and emptiness are then checked by rank 0."""
    root = shards_arg(root, encoder.cfg.data)
    info = root.info
    kinds, class_names = info["modalities"], [str(n) for n in info.get("class_names", [])]
    relabel = merge_classes(classes, class_names) if classes is not None else {}
    splits = splits or list(info.get("splits", {}))
    modalities = modalities or [m for m in encoder.kinds if m in kinds]
    bad = [m for m in modalities if m not in kinds or m not in encoder.kinds]
    if bad:
        raise DataError(f"{root}: modalities {bad} are not in both the data ({', '.join(kinds)}) "
                        f"and the model ({', '.join(encoder.kinds)})")
    text_mod, preview_mod = with_role(kinds, "captions"), preview_modality(kinds)
    stats = stats if stats is not None else ReadStats()
    stats.n_expected = expected_samples(info, splits) if part[1] == 1 else None
    chunk, n_items = Embedded([], [], {}), 0
    for batch in _batches(root, splits, modalities, stats, batch_size, part):
        for m in modalities:
            chunk.vectors.append(encoder.encode(m, [_first(s[m]) for s, _, _ in batch], check=False))
            for s, split, source in batch:
                label = s.get("label")
                name = class_names[label] if label is not None and 0 <= label < len(class_names) else None
                chunk.items.append({"key": s["key"], "modality": m, "label": relabel.get(label, label), "split": split,
                                    "source": source, "label_name": name,
                                    "caption": _first(s.get(text_mod)) if text_mod else None})
        if preview_mod:
            chunk.previews.update({s["key"]: preview_png(kinds[preview_mod], s[preview_mod])
                                   for s, _, _ in batch if preview_mod in s})
        if progress:
            progress(len(batch))
        if len(chunk.items) >= chunk_rows:
            n_items += len(chunk.items)
            yield Embedded(np.concatenate(chunk.vectors), chunk.items, chunk.previews)
            chunk = Embedded([], [], {})
    stats.check(max_bad_fraction, str(root))
    if not n_items and not chunk.items and part[1] == 1:
        raise DataError(f"{root}: no readable samples in splits {splits}")
    if chunk.items:
        yield Embedded(np.concatenate(chunk.vectors), chunk.items, chunk.previews)


def build_index(run_dir: str | Path, shards: str | Path, out: str | Path, splits: list[str] | None = None,
                modalities: list[str] | None = None, factory: str = "auto", batch_size: int = 256,
                device: str = "cpu", overwrite: bool = False, encoder: Encoder | None = None,
                progress: Callable[[int], None] | None = None, nprobe: int | None = None,
                lock_timeout_s: float = LOCK_TIMEOUT_S, on_wait: Callable[[str], None] | None = None,
                backend: str = "faiss", uri: str | None = None, token: str | None = None,
                collection: str | None = None) -> Store | None:
    """Embed shards with a run, build a FAISS index chosen by size (or `factory`) and save it atomically,
    holding `out`'s writer lock (waiting up to `lock_timeout_s` for another writer) from check to save.
    `backend="milvus"`: into a Milvus collection at `uri` (a Lite file, or a server with `token`).
    Under torchrun, every rank embeds its part of the shards and rank 0 writes the index (build_parts.py):
    rank 0 returns the store, the other ranks None."""
    out = Path(out)
    check_backend(backend, uri, token, collection)
    sources = [s for s in (run_dir, shards) if s]
    with ranks(device) as info, ExitStack() as held:
        main = info.is_main
        together(info, (lambda: INDEX_FOLDER.check(out, overwrite, sources=sources)) if main else None)  # before any embedding
        enc = together(info, lambda: encoder or Encoder.from_run(run_dir, device))
        classes: list[str] = []
        meta = {"fingerprint": enc.fingerprint, "run_dir": str(enc.run_dir), "run_name": enc.cfg.name, "kinds": enc.kinds,
                "data_path": str(Path(shards).resolve()) if Path(shards).exists() else str(shards)}
        stats = ReadStats()

        def lock() -> None:
            out.resolve().parent.mkdir(parents=True, exist_ok=True)  # the scratch folder goes beside it (same disk)
            held.enter_context(writer_lock(out, lock_timeout_s, on_wait))
            INDEX_FOLDER.check(out, overwrite, sources=sources)  # again: another writer may have written it meanwhile

        together(info, lock if main else None)
        chunks = embed_shards(enc, shards, splits, modalities, batch_size, enc.cfg.data.max_bad_fraction, progress,
                              stats, classes=classes, part=(info.rank, info.world_size))
        if backend == "milvus":
            staging = rank_staging(info, lambda: milvus_staging(out, enc.dim, meta, factory, nprobe, uri, token,
                                                                collection), token)
            if info.enabled and staging is not None and not is_lite(staging.meta["uri"]):  # a server: every rank inserts its rows
                chunks = rank_inserts(staging, chunks)
            make = partial(fill_milvus, staging)
        else:
            make = partial(build_store, factory=factory, meta=meta, nprobe=nprobe, scratch_dir=out.resolve().parent)

        def finish(store: Store) -> None:
            if info.enabled:  # each rank checked its own part; now the whole
                stats.n_expected = expected_samples(shards_arg(shards, enc.cfg.data).info, splits)
                stats.check(enc.cfg.data.max_bad_fraction, str(shards))
                if not stats.n_ok:
                    raise DataError(f"{shards}: no readable samples in splits {splits}")
            store.meta["class_names"] = classes
            for col in ("split", "modality"):
                store.meta[f"{col}s_indexed"] = store.distinct(col)
            store.meta["n_bad_samples"] = stats.n_missing
            store.save(out)

        if info.enabled:
            return build_ranked(info, chunks, stats, make, finish)
        store = make(chunks)
        finish(store)
    return store


def open_for_run(index_dir: str | Path, run_dir: str | Path | None = None,
                 device: str = "cpu") -> tuple[Store, Encoder]:
    """Open an index and the model that built it (or `run_dir`), refusing a different model."""
    store = open_store(index_dir, recover=True)
    run = Path(run_dir or store.meta.get("run_dir") or "")
    if not str(run) or not RunDir(run).weights.exists():
        raise FileNotFoundError(f"{index_dir}: built by run {store.meta.get('run_dir')!r}, which is not there; "
                                "pass --run with that run (or a copy of it)")
    enc = Encoder.from_run(run, device)
    store.check_model(enc.fingerprint, run)
    return store, enc


def add_shards(index_dir: str | Path, shards: str | Path, splits: list[str] | None = None,
               modalities: list[str] | None = None, run_dir: str | Path | None = None, replace: bool = False,
               batch_size: int = 256, device: str = "cpu", lock_timeout_s: float = LOCK_TIMEOUT_S,
               on_wait: Callable[[str], None] | None = None) -> int:
    """Embed more shards with the index's own model, add them and save atomically, holding the index's
    writer lock from open to save (waiting up to `lock_timeout_s` for another writer); returns items added."""
    with writer_lock(index_dir, lock_timeout_s, on_wait):
        store, enc = open_for_run(index_dir, run_dir, device)
        classes = index_classes(store)
        added = 0
        for vectors, items, previews in embed_shards(enc, shards, splits, modalities, batch_size,
                                                     enc.cfg.data.max_bad_fraction, classes=classes):
            store.add(vectors, items, previews, replace=replace)
            added += len(items)
        store.meta["class_names"] = classes
        store.save()
    return added


def index_classes(store: Store) -> list[str]:
    """The index's class list (label i is class_names[i]); labels its items hold beyond it (an index from
    before the list was recorded, or data without class names) keep their place under their own names."""
    classes = list(store.meta.get("class_names") or [])
    pairs = store.label_names(len(classes))
    for i in range(len(classes), max(pairs, default=-1) + 1):
        classes.append(pairs.get(i) or f"(label {i})")
    return classes
