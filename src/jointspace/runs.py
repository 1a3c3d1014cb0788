"""Run folder layout and loading a trained model back from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from jointspace.config import RunConfig, load_config
from jointspace.model import JointModel, build_model

CONFIG = "config.yaml"
RUN_INFO = "run.json"
WEIGHTS = "model.safetensors"
METRICS = "metrics.jsonl"
EVAL = "eval.json"
REPORT = "report.html"


def write_run_info(run_dir: Path, info: dict) -> None:
    """What is needed to rebuild the model without the data: modality kinds, channels, classes."""
    (run_dir / RUN_INFO).write_text(json.dumps(info, indent=2))


def read_run_info(run_dir: Path) -> dict:
    """run.json of a run folder."""
    path = Path(run_dir) / RUN_INFO
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: not a jointspace run (no {RUN_INFO}); train one with `jointspace train`")
    return json.loads(path.read_text())


def build_from_info(cfg: RunConfig, info: dict) -> JointModel:
    """Build the (untrained) model a run describes."""
    return build_model(cfg.model, info["kinds"], image_channels=info.get("image_channels"),
                       context_length=cfg.data.context_length, image_size=cfg.data.image_size)


def load_run(run_dir: str | Path, weights: str | Path | None = None) -> tuple[RunConfig, JointModel, dict]:
    """Config, model with its final (or given) weights, and run info of a finished run."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    cfg = load_config(run_dir / CONFIG)
    model = build_from_info(cfg, info)
    path = Path(weights) if weights else run_dir / WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{path}: no weights; has the run finished?")
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return cfg, model, info


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, can_resume: bool = True) -> Path:
    """Create the run folder; an existing one is kept to resume, replaced with `overwrite`, else refused
    (the error names the flags the command has: `can_resume` False for commands without --resume)."""
    if run_dir.exists() and not resume:
        if not overwrite:
            hint = "pass --resume to continue it or --overwrite to replace it" if can_resume else \
                "pass --overwrite to replace it"
            raise FileExistsError(f"{run_dir} exists: {hint}")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir
