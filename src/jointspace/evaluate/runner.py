"""Evaluate a finished run on a split: retrieval for every modality pair, zero-shot, linear probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from jointspace.data.dataset import SplitData, remap_info
from jointspace.data.sources import shards_arg, source_of
from jointspace.evaluate.classify import linear_probe, zero_shot_classify
from jointspace.evaluate.embed import embed_class_prompts, embed_split, embed_values
from jointspace.evaluate.prompts import choose_prompts
from jointspace.evaluate.retrieval import retrieval_report
from jointspace.kinds import get_kind, with_role
from jointspace.model import text_tokenizers
from jointspace.run_dir import RunDir
from jointspace.runs import load_run, load_run_split, resolve_device

PREVIEW_LIMIT = 2000  # samples whose raw inputs are kept in the embeddings file for galleries


def _save_embeddings(path: Path, emb: dict[str, torch.Tensor], data: SplitData) -> None:
    arrays: dict[str, np.ndarray] = {f"emb_{m}": e.numpy().astype(np.float32) for m, e in emb.items()}
    arrays["labels"] = data.labels.numpy().astype(np.int64)
    arrays["keys"] = np.array(data.keys)
    arrays["class_names"] = np.array(data.class_names or [str(i) for i in range(int(data.labels.max()) + 1)])
    for m, texts in data.captions.items():
        arrays["captions"] = np.array(texts)
        break
    n = min(len(data), PREVIEW_LIMIT)
    for m, values in data.raw.items():
        arrays[f"preview_{m}"] = get_kind(data.kinds[m]).stack_previews(values[:n])
    arrays["kinds"] = np.array(json.dumps(data.kinds))
    arrays["labelled"] = np.array(bool(data.class_names) or len(set(data.labels.tolist())) < len(data))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def evaluate_run(run_dir: str | Path, split: str | None = None, data_path: str | None = None,
                 device: str = "auto", zero_shot_prompts: str | Path | None = None) -> dict:
    """Compute and write `eval.json` and `eval/embeddings_<split>.npz`; returns the eval dict.
    `zero_shot_prompts`: a YAML/JSON file of prompts per class (default: the config's eval.zero_shot_prompts,
    else the dataset's captions or prompts, else templates x class names; eval.json says which)."""
    run_dir = Path(run_dir)
    cfg, model, info = load_run(run_dir)
    dev = resolve_device(device)
    model.to(dev)
    split = split or cfg.eval.split
    root = shards_arg(data_path, cfg.data) if data_path else source_of(cfg.data)
    data = load_run_split(cfg, info, root, split, keep_raw=True)
    emb = embed_split(model, data, device=dev)
    labels = data.labels if cfg.eval.positives == "label" else None
    variants = {m: (embed_values(model, m, values, dev), owner) for m, (values, owner) in data.variants.items()}
    result: dict = {
        "split": split, "n_samples": len(data), "modalities": list(emb), "positives": cfg.eval.positives,
        "skipped_samples": data.stats.n_missing,
        "retrieval": retrieval_report(emb, labels, variants=variants, ks=tuple(cfg.eval.ks), map_k=cfg.eval.map_k,
                                      chunk_size=cfg.eval.chunk_size),
        **({"n_values": {m: len(o) for m, (_, o) in variants.items()}} if variants else {}),
    }
    dataset_info = remap_info(root.info, cfg.data.label_map)
    text_mod = with_role(data.kinds, "captions")
    given = zero_shot_prompts or cfg.eval.zero_shot_prompts
    chosen = choose_prompts(dataset_info, given) if cfg.eval.zero_shot and text_mod else None
    if chosen:
        prompts, result["zero_shot_prompts"] = chosen
        class_emb = embed_class_prompts(model, text_mod, prompts, cfg.data.context_length, dev,
                                        tokenizer=text_tokenizers(cfg.model).get(text_mod))
        result["zero_shot"] = {m: zero_shot_classify(e, class_emb, data.labels, ks=(1, 5))
                               for m, e in emb.items() if m != text_mod}
    separate_train = root.has_split("train") and split != "train"  # never fit the probe on the test data
    if cfg.eval.linear_probe and dataset_info.get("labelled", True) and separate_train:
        train = load_run_split(cfg, info, root, "train")
        train_emb = embed_split(model, train, device=dev)
        result["linear_probe"] = {m: linear_probe(train_emb[m], train.labels, emb[m], data.labels) for m in emb}
    run = RunDir(run_dir)
    run.embeddings(split).parent.mkdir(exist_ok=True)
    _save_embeddings(run.embeddings(split), emb, data)
    run.write_eval(result)
    return result
