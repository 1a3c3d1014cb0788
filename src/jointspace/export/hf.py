"""Export in the Hugging Face folder layout: per modality, `config.json` (the tower and head that rebuild
it), `model.safetensors` (LoRA merged), `preprocessor_config.json` (how the run turned values into
inputs) and, for transformers-based towers, the backbone's own save_pretrained folder with its
tokenizer or image processor. Each folder loads back as the `jointspace` tower."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from jointspace.model import tower_config
from jointspace.runs import run_prep
from jointspace.towers import tower_parameters, tower_tokenizer
from jointspace.towers.exported import BACKBONE, CONFIG, MODEL_TYPE, PREPROCESSOR, WEIGHTS, ExportedTower
from jointspace.towers.lora import merge_lora


def _save_backbone(tower: nn.Module, source: str | None, folder: Path) -> bool:
    """A transformers backbone (`tower.model`) saved with its tokenizer / image processor; False if none."""
    backbone = getattr(tower, "model", None)
    if not hasattr(backbone, "save_pretrained"):
        return False
    backbone.save_pretrained(folder)
    if source:
        from transformers import AutoImageProcessor, AutoTokenizer

        for auto in (AutoTokenizer, AutoImageProcessor):
            try:
                auto.from_pretrained(source, local_files_only=True).save_pretrained(folder)
            except (OSError, ValueError, KeyError):
                continue
    return True


def _tower_entry(job, m: str, tower: nn.Module, folder: Path) -> tuple[dict, str | None]:
    """The tower's config entry (weights come from the export, never downloaded) and its tokenizer spec."""
    kinds = job.info.kinds
    tcfg = tower_config(job.cfg.model, m, kinds[m], run_prep(job.cfg, job.info))
    params = dict(tcfg.params)
    tokenizer = tower_tokenizer(tcfg.name, params)
    accepted = tower_parameters(tcfg.name) or {}
    source = tokenizer[3:] if tokenizer and tokenizer.startswith("hf:") else params.get("path")
    if _save_backbone(tower, source, folder / BACKBONE):
        if "path" in accepted:
            params["path"] = BACKBONE
        if tokenizer and tokenizer.startswith("hf:"):
            tokenizer = f"hf:{BACKBONE}"
    if "pretrained" in accepted:
        params["pretrained"] = None  # the weights are in model.safetensors
    params.pop("cache_dir", None)
    return {"name": tcfg.name, "params": params}, tokenizer


def _export_modality(job, m: str, folder: Path) -> dict:
    folder.mkdir()
    model, kinds = job.model, job.info.kinds
    tower = merge_lora(copy.deepcopy(model.towers[m]))
    entry, tokenizer = _tower_entry(job, m, tower, folder)
    h = job.cfg.model.head
    cfg = {"model_type": MODEL_TYPE, "modality": m, "kind": kinds[m], "tower": entry,
           "head": {"type": h.type, "hidden": h.hidden, "dropout": h.dropout}, "in_dim": int(tower.out_dim),
           "embed_dim": int(model.embed_dim), "tokenizer": tokenizer, "normalize": True,
           "run": str(job.run_dir), "fingerprint": job.fingerprint}
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2))
    prep = run_prep(job.cfg, job.info).to_json()
    (folder / PREPROCESSOR).write_text(json.dumps({"modality": m, "kind": kinds[m], **prep}, indent=2))
    state = {f"tower.{k}": v for k, v in tower.state_dict().items()}
    state |= {f"head.{k}": v for k, v in model.heads[m].state_dict().items()}
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / WEIGHTS), metadata=job.stamp())
    return cfg


def _check(job, m: str, folder: Path) -> float:
    """The reloaded tower against the run's on one batch of inputs: the largest difference."""
    from jointspace.export.onnx import example_batch

    batch = example_batch(job, [m])
    back = ExportedTower(folder).eval()
    with torch.no_grad():
        ours = job.model.encode(m, batch, normalize=False)
        theirs = back(batch[m], batch.get(f"{m}_len"))
    return float((ours - theirs).abs().max())


def export_hf(job, out: Path) -> dict:
    """One folder per modality; returns the manifest's fields."""
    diffs = {}
    for m in job.model.towers:
        _export_modality(job, m, out / m)
        diffs[m] = _check(job, m, out / m)
        if diffs[m] > 1e-5:
            raise RuntimeError(f"the exported {m} tower's output differs from the run's by {diffs[m]:.2e}")
    return {"modalities": list(job.model.towers), "files": [f"{m}/" for m in job.model.towers],
            "max_abs_diff": diffs, "load": "model.towers.<m> = {name: jointspace, params: {pretrained: DIR/<m>}}"}
