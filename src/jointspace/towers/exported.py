"""The `jointspace` tower: one modality's tower + projection head, as `jointspace export --format hf`
wrote it (`config.json`, `model.safetensors`, tokenizer and preprocessing in one folder).

`{name: jointspace, params: {pretrained: DIR/image}}` starts a tower of any task from an exported joint
space; its output is the run's (unnormalised) embedding, so `out_dim` is the run's `embed_dim`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from jointspace.errors import UsageError
from jointspace.towers.heads import build_head
from jointspace.towers.registry import build_tower, register_tower

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
PREPROCESSOR = "preprocessor_config.json"
BACKBONE = "backbone"  # a transformers backbone's own save_pretrained folder, inside the export
MODEL_TYPE = "jointspace-tower"


def read_exported(folder: str | Path) -> dict:
    """config.json of an exported tower folder, with its relative paths made absolute."""
    folder = Path(folder).expanduser()
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CONFIG}; pass a modality folder that `jointspace export "
                                f"--format hf` wrote (e.g. DIR/image)")
    cfg = json.loads(path.read_text())
    if cfg.get("model_type") != MODEL_TYPE:
        raise UsageError(f"{path}: model_type is {cfg.get('model_type')!r}, not {MODEL_TYPE!r}")
    params = dict(cfg["tower"]["params"])
    if params.get("path") == BACKBONE:
        params["path"] = str(folder / BACKBONE)
    cfg["tower"]["params"] = params
    tok = cfg.get("tokenizer")
    if tok and tok == f"hf:{BACKBONE}":
        cfg["tokenizer"] = f"hf:{folder / BACKBONE}"
    return cfg


class ExportedTower(nn.Module):
    """An exported tower and its head: x -> head(tower(x))."""

    def __init__(self, folder: str | Path):
        super().__init__()
        cfg = read_exported(folder)
        self.tower = build_tower(cfg["tower"]["name"], **cfg["tower"]["params"])
        head = cfg["head"]
        head_type = head.get("type", head.get("kind"))  # `kind` in folders exported before the rename
        self.head = build_head(int(cfg["in_dim"]), int(cfg["embed_dim"]), head_type, head["hidden"], head["dropout"])
        self.load_state_dict(load_file(str(Path(folder).expanduser() / WEIGHTS)))
        self.default_lora_targets = tuple(getattr(self.tower, "default_lora_targets", ()))
        self.out_dim = int(cfg["embed_dim"])
        self.fingerprint = cfg.get("fingerprint")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.tower(x, lengths))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        fn = getattr(self.tower, "set_grad_checkpointing", None)
        if fn is None:
            raise UsageError(f"the exported {type(self.tower).__name__} tower does not support grad_checkpointing")
        fn(enable)


@register_tower("jointspace", tokenizer=lambda params: read_exported(params["pretrained"]).get("tokenizer"),
                pretrained_tags=lambda: "pretrained: a modality folder of `jointspace export --format hf`")
def jointspace(pretrained: str) -> ExportedTower:
    """A tower + head exported from a jointspace run (`jointspace export --format hf`)."""
    return ExportedTower(pretrained)
