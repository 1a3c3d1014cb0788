"""The pipeline task: several stages, each a run of any task, trained in order from one config and one
command, each in a folder of its own (so each resumes exactly; a finished stage is kept). A stage's
settings may name an earlier stage's run folder as `{stage:NAME}`, e.g. `model.init_from: "{stage:joint}"`:
the seed project's contrastive stage, then a classifier over its joint space.

    task: pipeline
    name: seed
    stages:
      - {name: joint, config: shapes.yaml, set: {train.epochs: 5}}
      - {name: classifier, config: shapes_fusion.yaml, set: {model.init_from: "{stage:joint}"}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from jointspace.config import RunFolder, _Strict, apply_overrides, split_override
from jointspace.engine.checkpoint import atomic_write_text
from jointspace.errors import UsageError
from jointspace.run_dir import RunDir
from jointspace.tasks.common import done_line, read_done, write_done
from jointspace.tasks.lifecycle import keeping_old_run, train_stage
from jointspace.tasks.registry import Task, config_for, get_task

STAGE_REF = "{stage:"


class StageConfig(_Strict):
    """One stage: a run config (a mapping; a file path is read relative to the pipeline's file) and
    dotted overrides."""

    name: str
    config: dict[str, Any] | str = Field(default_factory=dict)
    set: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(RunFolder):
    task: str = "pipeline"
    stages: list[StageConfig] = Field(min_length=1)


def overrides_as_set(overrides: list[str]) -> dict[str, Any]:
    """`--set key=value` overrides as a stage's `set:` mapping (values parsed as YAML)."""
    return dict(split_override(item) for item in overrides)


def _resolve(value: Any, dirs: dict[str, Path]) -> Any:
    """`{stage:NAME}` in any string -> that stage's run folder."""
    if isinstance(value, str):
        for name, path in dirs.items():
            value = value.replace(f"{STAGE_REF}{name}}}", str(path))
        if STAGE_REF in value:
            raise UsageError(f"{value!r}: names a stage that is not an earlier one ({', '.join(dirs) or 'none'})")
        return value
    if isinstance(value, dict):
        return {k: _resolve(v, dirs) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, dirs) for v in value]
    return value


def stage_config(cfg: PipelineConfig, stage: StageConfig, dirs: dict[str, Path]) -> BaseModel:
    """A stage's validated run config: its mapping + overrides, earlier stages' folders filled in,
    its folder under the pipeline's."""
    raw = json.loads(json.dumps(stage.config if isinstance(stage.config, dict) else {}))
    raw = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in stage.set.items()])
    raw = _resolve(raw, dirs)
    raw.setdefault("seed", cfg.seed)
    raw.update({"name": stage.name, "output_dir": str(cfg.run_dir)})
    return config_for(raw, f"pipeline {cfg.name}, stage {stage.name}")


def run_pipeline(cfg: PipelineConfig, resume: bool = False, overwrite: bool = False,
                 show_progress: bool = True) -> Path:
    """Train every stage in order (finished stages kept, an interrupted one resumed with `resume`)."""
    root = cfg.run_dir
    with keeping_old_run(root, resume, overwrite):
        return _run_stages(cfg, resume, overwrite, show_progress)


def _run_stages(cfg: PipelineConfig, resume: bool, overwrite: bool, show_progress: bool) -> Path:
    root = cfg.run_dir
    atomic_write_text(RunDir(root).create(resume, overwrite).config, json.dumps(cfg.model_dump(mode="json"), indent=2))
    dirs: dict[str, Path] = {}
    for stage in cfg.stages:
        one = stage_config(cfg, stage, dirs)
        dirs[stage.name] = one.run_dir
        task = get_task(one.task)
        if task.finished(one.run_dir):
            continue
        train_stage(task.train, one, resume, show_progress)
    last = read_done(dirs[cfg.stages[-1].name]) or {}
    write_done(root, {**last, "task": "pipeline", "name": cfg.name, "stages": {k: str(v) for k, v in dirs.items()}})
    return root


TASK = Task("pipeline", PipelineConfig, run_pipeline, done_line, results="its stages' folders (RUN/<stage>)",
            measure="its last stage's test accuracy")
