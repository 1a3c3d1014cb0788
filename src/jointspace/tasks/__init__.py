"""The tasks a run can train (`task:` in its config), each an objective for the one engine, and what the
run verbs (`eval`, `embed`, `report`, `index`) accept of each.

Adding a task is a module that defines its `TASK = Task(...)` (tasks/registry.py says what a task
declares) and one `register(...)` line below."""

from __future__ import annotations

from pathlib import Path

from jointspace.config import apply_overrides, read_yaml
from jointspace.errors import UsageError
from jointspace.run_dir import RUN_INFO, RunDir
from jointspace.tasks import cilp, classify, contrastive, diffusion, metric, pipeline
from jointspace.tasks.registry import (
    DEFAULT_TASK,
    TASKS,
    Task,
    config_for,
    get_task,
    register,
    run_config,
    task_of_raw,
)

register(contrastive.TASK)
register(classify.TASK)
register(metric.TASK)
register(cilp.TASK)
register(diffusion.TASK)
register(pipeline.TASK)


def load_task_config(path: str | Path, overrides: list[str] | None = None):
    """Load any task's YAML config with `--set` overrides; `task:` picks the config type. A pipeline's
    stage configs given as file names are read relative to the pipeline's file."""
    raw = read_yaml(path)
    if raw.get("task") != "pipeline" and "task=pipeline" not in (overrides or []):
        return config_for(apply_overrides(raw, overrides or []), str(path))
    own = [o for o in overrides or [] if o.split("=", 1)[0].strip().split(".")[0] in pipeline.PipelineConfig.model_fields]
    raw = apply_overrides(raw, own)
    for stage in raw.get("stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("config"), str):
            stage["config"] = read_yaml(Path(path).parent / stage["config"])
        if isinstance(stage, dict):  # every other override (train.epochs=1, tracker=none) goes to every stage
            stage["set"] = {**(stage.get("set") or {}), **pipeline.overrides_as_set([o for o in overrides or []
                                                                                    if o not in own])}
    return config_for(raw, str(path))


def task_of_run(run_dir: str | Path) -> str:
    """The task a run folder was trained for (runs from before tasks were recorded: contrastive)."""
    run = RunDir(run_dir)
    if run.has_info():
        return run.read_info().get("task", DEFAULT_TASK)
    if (run / cilp.CILP_JSON).exists() or (run / cilp.PRETRAIN).is_dir():
        return "cilp"
    raise FileNotFoundError(f"{run_dir}: not a jointspace run (no {RUN_INFO}); train one with `jointspace train`")


def require_verb(run_dir: str | Path, verb: str) -> None:
    """Raise a ValueError naming the task when its runs do not support `verb`."""
    name = task_of_run(run_dir)
    if name not in TASKS:
        raise UsageError(f"{run_dir}: {RUN_INFO} names task {name!r}, which this version does not know")
    task = TASKS[name]
    if verb not in task.verbs:
        able = ", ".join(t.name for t in TASKS.values() if verb in t.verbs)
        raise UsageError(f"{run_dir} is a {task.name} run: `{verb}` works on {able} runs; this run's results "
                         f"are in {task.results}")


__all__ = ["DEFAULT_TASK", "TASKS", "Task", "config_for", "get_task", "load_task_config", "register", "require_verb",
           "run_config", "task_of_raw", "task_of_run"]
