"""`init_from`: towers (and matching heads) of a new run started from finished runs whose towers form a
joint space."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from jointspace.config import RunConfig, TowerConfig
from jointspace.errors import UsageError
from jointspace.kinds import get_kind
from jointspace.model import JointModel
from jointspace.run_dir import RUN_INFO, read_run_info
from jointspace.runs import load_run, model_fingerprint
from jointspace.tasks.registry import able, get_task
from jointspace.towers.lora import merge_lora


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
    """A finished run whose towers form a joint space, loaded once, and its fingerprint recorded."""
    if run not in loaded:
        if not get_task(read_run_info(run).task, f"init_from {spec}: {RUN_INFO}: task").joint_space:
            raise UsageError(f"init_from {spec}: {run} is not a {able(lambda t: t.joint_space)} run (its towers "
                             "are not a joint space)")
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
            raise UsageError(f"init_from {spec}: {run} has fingerprint {fingerprint[:12]}, not {pin}: it changed")
        if src not in model.towers:
            if own and own.init_from:
                raise UsageError(f"model.towers.{m}.init_from: {run} has no modality {src!r} ({', '.join(model.towers)})")
            continue  # model.init_from: a modality the run does not have starts fresh
        if own is None:
            base = src_cfg.model.towers.get(src) or TowerConfig(name=get_kind(kind).default_tower)
            untuned = {"lora": None, "freeze": False, "unlocked_groups": None, "freeze_norms": False,
                       "layer_decay": None, "patch_dropout": 0.0}  # the run's architecture, not how it was tuned
            towers[m] = base.model_copy(update={**untuned, "init_from": spec})
        init["towers"][m] = (spec, _merged_tower(model, src))
        init["heads"][m] = model.heads[src].state_dict()
    model_cfg = cfg.model.model_copy(update={"towers": towers})
    return cfg.model_copy(update={"model": model_cfg}), init
