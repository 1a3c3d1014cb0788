"""`jointspace embed`: a trained run's embeddings of a shard folder, one file per modality (+ keys, labels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jointspace.data.shards import DataError
from jointspace.data.sources import shards_arg
from jointspace.errors import UsageError, require
from jointspace.evaluate.embed import embed_split
from jointspace.outputs import OutputType, json_with
from jointspace.runs import load_run, load_run_split, resolve_device

FORMATS = ("npy", "parquet")
META = "meta.json"
EMBEDDINGS_FOLDER = OutputType("embeddings folder", ((META, "keys.npy"), (META, "*.parquet")),
                               json_with(META, "files", "dims"))


def _write_npy(out: Path, name: str, array: np.ndarray) -> str:
    tmp = out / f".{name}.npy.tmp"
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
    tmp.replace(out / f"{name}.npy")
    return f"{name}.npy"


def _write_parquet(out: Path, modality: str, emb: np.ndarray, keys: list[str], labels: np.ndarray,
                   class_names: list[str]) -> str:
    import pyarrow as pa  # the optional extra `parquet`, checked by export_embeddings
    import pyarrow.parquet as pq
    names = [class_names[i] if 0 <= i < len(class_names) else str(i) for i in labels.tolist()]
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "label": pa.array(labels, pa.int64()),
        "class_name": pa.array(names, pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]),
    })
    tmp = out / f".{modality}.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(out / f"{modality}.parquet")
    return f"{modality}.parquet"


def embed_to_folder(run_dir: str | Path, shards: str | Path, out: str | Path, split: str = "test",
                      fmt: str = "npy", device: str = "auto", batch_size: int = 512, overwrite: bool = False) -> dict:
    """Embed `split` of `shards` with the run's model and write it under `out`; returns what `meta.json` says.

    npy: `<modality>.npy` [N, D] float32 (L2-normalised), `keys.npy`, `labels.npy`; parquet: `<modality>.parquet`
    with columns key, label, class_name, embedding. Modalities are the run's that the shards have. The
    folder appears whole; it replaces earlier embeddings only with `overwrite`, any other folder never.
    """
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "parquet":
        require("parquet", "pyarrow.parquet", "--format parquet")
    sources = [run_dir, *([shards] if Path(str(shards)).exists() else [])]
    EMBEDDINGS_FOLDER.check(out, overwrite, sources)
    cfg, model, info = load_run(run_dir)
    shards = shards_arg(shards, cfg.data)
    have = shards.info["modalities"]
    modalities = [m for m in cfg.data.modalities if m in have and m in model.towers]
    if not modalities:
        raise DataError(f"{shards}: none of the run's modalities ({', '.join(cfg.data.modalities)}) are in it "
                        f"(has: {', '.join(have)})")
    dev = resolve_device(device)
    data = load_run_split(cfg, info, shards, split, modalities)
    emb = embed_split(model.to(dev), data, batch_size=batch_size, device=dev)
    with EMBEDDINGS_FOLDER.staged(out, overwrite, sources) as stage:
        return _write(stage, fmt, emb, data, {"run": str(run_dir), "shards": str(shards), "split": split})


def _write(out: Path, fmt: str, emb: dict, data, about: dict) -> dict:
    """The embedding files and meta.json in `out`."""
    labels = data.labels.numpy().astype(np.int64)
    files: dict[str, str] = {}
    if fmt == "npy":
        files["keys"] = _write_npy(out, "keys", np.array(data.keys))
        files["labels"] = _write_npy(out, "labels", labels)
    for m, e in emb.items():
        arr = e.numpy().astype(np.float32)
        files[m] = (_write_npy(out, m, arr) if fmt == "npy"
                    else _write_parquet(out, m, arr, data.keys, labels, data.class_names))
    meta = {**about, "format": fmt, "n_samples": len(data),
            "skipped_samples": data.stats.n_missing, "dims": {m: int(e.shape[1]) for m, e in emb.items()},
            "class_names": data.class_names, "files": files}
    (out / META).write_text(json.dumps(meta, indent=2))
    return meta
