"""Loading a trained model back from its run folder (the folder itself: run_dir.RunDir)."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from jointspace.config import RunConfig, TowerConfig, load_config
from jointspace.data.dataset import SplitData, load_split
from jointspace.kinds import Prep, get_kind, with_role
from jointspace.model import JointModel, build_model, text_tokenizers
from jointspace.run_dir import CONFIG, WEIGHTS, RunDir, RunInfo, read_run_info
from jointspace.towers.lora import merge_lora


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
    """Build the (untrained, or `init`-started) model a run describes."""
    return build_model(cfg.model, RunInfo.of(info).kinds, run_prep(cfg, info), init)


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


def _init_spec(spec: str, modality: str) -> tuple[Path, str, str]:
    """"runs/x#image@ab12" -> (run folder, its modality, fingerprint prefix to check ("" for none))."""
    head, _, rest = spec.partition("#")
    run, _, pin_run = head.partition("@")
    name, _, pin = rest.partition("@")
    return Path(run), name or modality, pin or pin_run


def _merged_tower(model: JointModel, modality: str) -> dict[str, torch.Tensor]:
    """A tower's weights with its LoRA adapters merged in, named as in a plain tower."""
    return merge_lora(copy.deepcopy(model.towers[modality])).state_dict()


def _source_run(run: Path, spec: str, loaded: dict, init: dict) -> tuple:
    """A finished contrastive run, loaded once, and its fingerprint recorded."""
    if run not in loaded:
        if read_run_info(run).task != "contrastive":
            raise ValueError(f"init_from {spec}: {run} is not a contrastive run (its towers are not a joint space)")
        loaded[run] = load_run(run)
        init["sources"][str(run)] = model_fingerprint(run)
    return loaded[run]


def resolve_init(cfg: RunConfig, kinds: dict[str, str]) -> tuple[RunConfig, dict]:
    """Towers (and matching heads) started from finished contrastive runs: `model.init_from` (every
    modality the run has, with its tower config unless this config gives one) or a tower's own
    `init_from`. Returns the config with those tower configs filled in, and {"towers": {m: (spec, state)},
    "heads": {m: state}, "sources": {run: fingerprint}}; a pinned fingerprint that differs is an error."""
    init: dict = {"towers": {}, "heads": {}, "sources": {}}
    towers, loaded = dict(cfg.model.towers), {}
    for m, kind in kinds.items():
        own = towers.get(m)
        spec = (own.init_from if own and own.init_from else None) or (f"{cfg.model.init_from}#{m}"
                                                                      if cfg.model.init_from else None)
        if spec is None:
            continue
        run, src, pin = _init_spec(spec, m)
        src_cfg, model, _ = _source_run(run, spec, loaded, init)
        fingerprint = init["sources"][str(run)]
        if pin and not fingerprint.startswith(pin):
            raise ValueError(f"init_from {spec}: {run} has fingerprint {fingerprint[:12]}, not {pin}: it changed")
        if src not in model.towers:
            if own and own.init_from:
                raise ValueError(f"model.towers.{m}.init_from: {run} has no modality {src!r} ({', '.join(model.towers)})")
            continue  # model.init_from: a modality the run does not have starts fresh
        if own is None:
            base = src_cfg.model.towers.get(src) or TowerConfig(name=get_kind(kind).default_tower)
            towers[m] = base.model_copy(update={"lora": None, "freeze": False, "init_from": spec})
        init["towers"][m] = (spec, _merged_tower(model, src))
        init["heads"][m] = model.heads[src].state_dict()
    model_cfg = cfg.model.model_copy(update={"towers": towers})
    return cfg.model_copy(update={"model": model_cfg}), init


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
