"""Loading a trained model back from its run folder (the folder itself: run_dir.RunDir)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from jointspace.config import RunConfig, load_config
from jointspace.data.dataset import SplitData, load_split
from jointspace.kinds import Prep, get_kind, with_role
from jointspace.model import JointModel, build_model, text_tokenizers
from jointspace.run_dir import CONFIG, WEIGHTS, RunDir, RunInfo, read_run_info  # noqa: F401 - callers import it here


def config_prep(cfg: RunConfig) -> Prep:
    """The Prep a config implies before any data is seen (sizes, the text towers' tokenizers)."""
    return Prep(cfg.data.prep_sizes(), tokenizers=text_tokenizers(cfg.model))


def run_prep(cfg: RunConfig, info: RunInfo | dict) -> Prep:
    """How a run turns values into inputs: run.json's recorded `prep` over the config's sizes (runs
    from before `prep` was recorded: their `image_channels`)."""
    info = RunInfo.of(info)
    prep = Prep.from_json({**config_prep(cfg).to_json(), **(info.prep or {})})
    kinds = info.kinds
    if cfg.data.max_range is not None:  # runs from before max_range was recorded: the config's, if it has one
        prep = prep.updated(max_range={m: cfg.data.max_range for m, k in kinds.items()
                                       if get_kind(k).ranged and m not in prep.max_range})
    picture = with_role(kinds, "picture")
    if picture and picture not in prep.channels and info.get("image_channels"):
        prep = prep.updated(channels={picture: int(info["image_channels"])})
    return prep


def load_run_split(cfg: RunConfig, info: RunInfo | dict, root: str | Path, split: str, modalities: list[str] | None = None,
                   keep_raw: bool = False) -> SplitData:
    """A split of any shard folder prepared exactly as the run's training data was (label map, Prep)."""
    d = cfg.data
    return load_split(root, split, modalities or d.modalities, max_bad_fraction=d.max_bad_fraction,
                      keep_raw=keep_raw, label_map=d.label_map or None, prep=run_prep(cfg, info))


def build_from_info(cfg: RunConfig, info: RunInfo | dict, init: dict | None = None) -> JointModel:
    """Build the (untrained, or `init`-started) model a run describes, with its loss's logit parameters."""
    return build_model(cfg.model, RunInfo.of(info).kinds, run_prep(cfg, info), init, cfg.loss.name)


def model_fingerprint(run_dir: str | Path) -> str:
    """sha256 over the run's model.safetensors bytes and its config.yaml."""
    run_dir = Path(run_dir)
    h = hashlib.sha256()
    for name in (WEIGHTS, CONFIG):
        path = run_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; is {run_dir} a finished jointspace run?")
        h.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_run(run_dir: str | Path, weights: str | Path | None = None) -> tuple[RunConfig, JointModel, RunInfo]:
    """Config, model with its final (or given) weights, and run info of a finished run."""
    run = RunDir(run_dir)
    info = run.read_info()
    cfg = load_config(run.config)
    model = build_from_info(cfg, info)
    path = Path(weights) if weights else run.weights
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
