"""Command line for search: `index build|add|delete|info` and `search` (mounted by jointspace.cli)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from jointspace.cli_errors import errors, friendly
from jointspace.index.lock import LOCK_TIMEOUT_S

index_app = typer.Typer(no_args_is_help=True, help="Build, extend and inspect a search index (FAISS + SQLite, or Milvus).")
console = Console()
WhereOpt = Annotated[list[str] | None, typer.Option("--where", help="metadata filter key=value, repeatable "
                                                    "(keys: key, modality, label, label_name, caption, source, split)")]
SplitOpt = Annotated[list[str] | None, typer.Option("--split", help="split to index, repeatable (default: all)")]
ModalityOpt = Annotated[list[str] | None, typer.Option("--modality", help="modality to index, repeatable "
                                                       "(default: every modality of the model in the data)")]
MilvusTokenOpt = Annotated[str | None, typer.Option("--token", envvar="JOINTSPACE_MILVUS_TOKEN", help="milvus "
                                                   "server token (user:password); never written down")]
LockTimeoutOpt = Annotated[float, typer.Option("--lock-timeout", min=0, help="seconds to wait while another writer "
                                               "holds the index's writer lock, then fail")]
_friendly = friendly(console)


def _say_waiting(line: str) -> None:
    errors.print(line, markup=False, highlight=False, soft_wrap=True)


@index_app.command("build")
@_friendly
def index_build(
    run: Annotated[Path, typer.Argument(help="trained run folder")],
    shards: Annotated[Path, typer.Argument(help="shard folder (dataset.json + split/*.tar)")],
    out: Annotated[Path, typer.Option("--out", help="index folder to write")],
    split: SplitOpt = None,
    modality: ModalityOpt = None,
    factory: Annotated[str | None, typer.Option(help="'auto' (exact below 50k vectors, IVF above) or a FAISS "
                                                "factory string, e.g. Flat, IVF1024,Flat, HNSW32, IVF4096,PQ32 "
                                                "(default: the run config's index.factory, else auto)")] = None,
    nprobe: Annotated[int | None, typer.Option(min=1, help="IVF lists searched per query (default: index.nprobe, "
                                               "else nlist/256, at least 8); more = better recall, slower")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="default: index.batch_size (256)")] = None,
    device: str = "cpu",
    overwrite: Annotated[bool, typer.Option(help="replace an existing index folder")] = False,
    lock_timeout: LockTimeoutOpt = LOCK_TIMEOUT_S,
    backend: Annotated[str, typer.Option(help="faiss (a FAISS file in the folder) or milvus (a Milvus "
                                         "collection; the folder records its --uri)")] = "faiss",
    uri: Annotated[str | None, typer.Option(help="milvus: ./name.db (Milvus Lite, in this process; default "
                                            "<out>.milvus.db) or http://host:19530 (a server)")] = None,
    milvus_token: MilvusTokenOpt = None,
    collection: Annotated[str | None, typer.Option(help="milvus: collection alias (default: the folder's "
                                                   "name)")] = None,
) -> None:
    """Embed every sample of the chosen splits and modalities into a new index, written atomically.
    Settings not given as flags come from the `index:` section of the run's config. Under `torchrun
    --nproc_per_node N -m jointspace.cli index build ...` every rank embeds its part of the shards."""
    from jointspace.config import load_config
    from jointspace.index.build import build_index
    from jointspace.run_dir import CONFIG
    from jointspace.tasks import require_verb

    require_verb(run, "index")

    t0 = time.time()
    ic = load_config(run / CONFIG).index if (run / CONFIG).exists() else None
    if ic is not None:
        factory, nprobe = factory or ic.factory, nprobe or ic.nprobe
        batch_size, split, modality = batch_size or ic.batch_size, split or ic.splits or None, modality or ic.modalities or None
    store = build_index(run, shards, out, split, modality, factory or "auto", batch_size or 256, device, overwrite,
                        nprobe=nprobe, lock_timeout_s=lock_timeout, on_wait=_say_waiting, backend=backend,
                        uri=uri, token=milvus_token, collection=collection)
    if store is None:  # a rank of a torchrun job other than 0: rank 0 wrote the index and says so
        return
    s = store.stats()
    console.print(f"wrote {out}: {s['n_items']} items ({s['n_samples']} samples; {s['modalities']}), "
                  f"{s['factory']} {s['search'] or ''}, model {s['fingerprint'][:12]} in {time.time() - t0:.1f}s")


@index_app.command("add")
@_friendly
def index_add(
    index: Annotated[Path, typer.Argument(help="index folder")],
    shards: Annotated[Path, typer.Argument(help="shard folder to add")],
    split: SplitOpt = None,
    modality: ModalityOpt = None,
    run: Annotated[Path | None, typer.Option(help="the index's run, if it moved (fingerprint-checked)")] = None,
    replace: Annotated[bool, typer.Option(help="replace items whose key/modality is already indexed")] = False,
    device: str = "cpu",
    lock_timeout: LockTimeoutOpt = LOCK_TIMEOUT_S,
) -> None:
    """Embed more samples with the index's own model and add them (one writer at a time: a second waits)."""
    from jointspace.index.build import add_shards

    n = add_shards(index, shards, split, modality, run, replace, device=device, lock_timeout_s=lock_timeout,
                   on_wait=_say_waiting)
    console.print(f"added {n} items to {index}")


@index_app.command("delete")
@_friendly
def index_delete(
    index: Annotated[Path, typer.Argument(help="index folder")],
    keys: Annotated[list[str] | None, typer.Argument(help="sample keys to delete (all their modalities)")] = None,
    where: WhereOpt = None,
    lock_timeout: LockTimeoutOpt = LOCK_TIMEOUT_S,
) -> None:
    """Delete items by sample key(s) and/or metadata filter (both given: items matching both)."""
    from jointspace.index.backend import open_store
    from jointspace.index.lock import writer_lock

    with writer_lock(index, lock_timeout, _say_waiting):
        store = open_store(index, recover=True)
        n = store.delete(keys or None, where or None)
        store.save()
    console.print(f"deleted {n} items from {index}; {store.n_items} left")


@index_app.command("info")
@_friendly
def index_info(index: Annotated[Path, typer.Argument(help="index folder")]) -> None:
    """Counts per modality and split, factory, dimension, the model fingerprint and the memory it takes."""
    from jointspace.index.backend import open_store

    store = open_store(index, recover=True)
    console.print_json(json.dumps({**store.stats(), "memory": store.memory()}))


@_friendly
def search(
    index: Annotated[Path, typer.Argument(help="index folder")],
    text: Annotated[str | None, typer.Option(help="text query")] = None,
    file: Annotated[Path | None, typer.Option(help="query file: an image, a .npy array (frames, range image, "
                                              "point cloud), ...; read by its modality's kind")] = None,
    modality: Annotated[str | None, typer.Option(help="modality of --file or --text: a name of the model's, or a "
                                                 "kind word (image, audio, lidar, points); default: the one "
                                                 "that reads the file's extension")] = None,
    vector: Annotated[Path | None, typer.Option(help=".npy raw vector [D]")] = None,
    image: Annotated[Path | None, typer.Option(hidden=True, help="= --file F --modality image")] = None,
    audio: Annotated[Path | None, typer.Option(hidden=True, help="= --file F --modality audio")] = None,
    lidar: Annotated[Path | None, typer.Option(hidden=True, help="= --file F --modality lidar")] = None,
    k: Annotated[int, typer.Option(min=1, help="results")] = 10,
    where: WhereOpt = None,
    target: Annotated[str | None, typer.Option(help="only results of this modality (= --where modality=...)")] = None,
    nprobe: Annotated[int | None, typer.Option(min=1, help="IVF lists to search (default: the index's)")] = None,
    run: Annotated[Path | None, typer.Option(help="the index's run, if it moved (fingerprint-checked)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Search an index with text, a file of any modality, or a vector; any modality in, any out."""
    from jointspace.index.backend import open_store
    from jointspace.index.build import open_for_run
    from jointspace.index.query import parse_vector, read_npy

    for word, path in (("image", image), ("audio", audio), ("lidar", lidar)):  # the older per-kind flags
        if path is not None:
            file, modality = (path, modality or word) if file is None else (file, modality)
            if file != path:
                raise typer.BadParameter("give exactly one query file")
    given = {n: v for n, v in (("text", text), ("file", file), ("vector", vector)) if v is not None}
    if len(given) != 1:
        raise typer.BadParameter(f"give exactly one of --text, --file, --vector (got {list(given)})")
    (flag, value), = given.items()
    where = list(where or []) + ([f"modality={target}"] if target else [])
    if flag == "vector":
        store = open_store(index, recover=True)
        q = parse_vector(read_npy(value, str(value)), store.dim, str(value))
    else:
        store, enc = open_for_run(index, run)
        if flag == "text":
            q = enc.encode(modality or enc.text_modality(), [value])
        else:
            q = enc.encode_file(modality or enc.modality_for_file(value), value)
    hits = store.search(q, k, where or None, nprobe=nprobe)[0]
    if as_json:
        console.print_json(json.dumps(hits))
        return
    table = Table(title=f"{flag}: {value}")
    for col in ("#", "score", "key", "modality", "label", "split", "caption"):
        table.add_column(col, no_wrap=col != "caption")
    for i, h in enumerate(hits, 1):
        table.add_row(str(i), f"{h['score']:.4f}", h["key"], h["modality"], str(h["label_name"] or h["label"]),
                      h["split"] or "", (h["caption"] or "")[:60])
    console.print(table)
