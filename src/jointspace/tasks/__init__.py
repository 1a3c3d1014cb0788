"""The tasks a run can train (`task:` in its config), each an objective for the one engine, and what the
run verbs (`eval`, `embed`, `report`, `index`) accept of each.

Adding a task is a module with a `train(cfg, resume, overwrite, show_progress) -> run folder` and an entry
below."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jointspace.augment.config import AugmentConfig
from jointspace.config import ConfigError, RunConfig, apply_overrides, read_yaml, validate_config
from jointspace.run_dir import EVAL, EVAL_DIR, RUN_INFO, WEIGHTS, RunDir
from jointspace.tasks import cilp, classify, contrastive, diffusion, metric, pipeline
from jointspace.tasks.common import read_done


@dataclass(frozen=True)
class Task:
    """A task: how it trains, the run verbs its runs support, and what its runs' folders hold."""

    name: str
    train: Callable[..., Path]
    verbs: tuple[str, ...]
    results: str  # where a finished run's results are, for verbs it does not support
    summary: Callable[[Path], str]
    finish: Callable[[Path], dict | None] = read_done  # the summary `jointspace compare` tabulates
    val_metrics: tuple[str, ...] = ()  # what its validation logs each epoch (fnmatch patterns; sweeps)


def _done_line(run_dir: Path) -> str:
    s = read_done(run_dir) or {}
    shown = ", ".join(f"{k} {v:.4f}" for k, v in s.items() if k in SUMMARY_KEYS and isinstance(v, float))
    return f"done: {run_dir}  {shown}".rstrip()


SUMMARY_KEYS = ("test_accuracy", "precision_at_1", "mean_average_precision_at_r", "val_loss", "final_loss",
                "classifier_accuracy", "projector_mse")


def _classify_summary(run_dir: Path) -> str:
    run = RunDir(run_dir)
    split = run.read_eval().get("split", "test")
    return run.classification(split, ".txt").read_text() + "\n" + _done_line(run_dir)


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("contrastive", contrastive.train, ("eval", "embed", "report", "index", "export"), "", lambda d: f"done: {d}",
         contrastive.summarise, ("loss", "R@1", "*->*/R@1")),
    Task("classify", classify.train_classifier, (), f"{EVAL} and classification_<split>.txt (written "
         "when it trained)", _classify_summary, val_metrics=("loss", "accuracy")),
    Task("metric", metric.train_metric, ("report",), f"{EVAL} and {EVAL_DIR}/embeddings_<split>.npz", _done_line,
         val_metrics=("loss",)),
    Task("cilp", cilp.train_cilp, (), "cilp.md and cilp.json; its contrastive stage is the run RUN/pretrain",
         lambda d: cilp.cilp_table([read_done(d)])),
    Task("diffusion", diffusion.train_diffusion, (), f"{WEIGHTS}: sample it with `jointspace augment "
         "sample`", _done_line),
    Task("pipeline", lambda cfg, resume=False, overwrite=False, show_progress=True: pipeline.run_pipeline(
        cfg, TASKS, config_for, resume, overwrite, show_progress), (), "its stages' folders (RUN/<stage>)",
        _done_line),
)}


def task_of_raw(raw: dict, source: str) -> str:
    """The task a config mapping names (default contrastive); an unknown one is a ConfigError."""
    name = raw.get("task") or "contrastive"
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"{source}: task: {name!r} is not a task (known: {', '.join(TASKS)})")
    stray = [s for s in ("fusion", "metric", "cilp") if s in raw and name != s.replace("fusion", "classify")]
    if "task" not in raw and stray:  # a config written for `jointspace classify`/`metric`/`cilp`
        raise ConfigError(f"{source}: has a {stray[0]}: section but no task: line; say which task it trains "
                          f"(task: {stray[0].replace('fusion', 'classify')})")
    return name


def config_for(raw: dict, source: str) -> RunConfig | AugmentConfig | pipeline.PipelineConfig:
    """Validate a config mapping into its task's config type."""
    task = task_of_raw(raw, source)
    model = {"diffusion": AugmentConfig, "pipeline": pipeline.PipelineConfig}.get(task, RunConfig)
    return validate_config(model, raw, source)


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


def run_task(run_dir: str | Path) -> str:
    """The task a run folder was trained for (runs from before tasks were recorded: contrastive)."""
    run = RunDir(run_dir)
    if run.has_info():
        return run.read_info().get("task", "contrastive")
    if (run / cilp.CILP_JSON).exists() or (run / cilp.PRETRAIN).is_dir():
        return "cilp"
    raise FileNotFoundError(f"{run_dir}: not a jointspace run (no {RUN_INFO}); train one with `jointspace train`")


def require_verb(run_dir: str | Path, verb: str) -> None:
    """Raise a ValueError naming the task when its runs do not support `verb`."""
    name = run_task(run_dir)
    if name not in TASKS:
        raise ValueError(f"{run_dir}: {RUN_INFO} names task {name!r}, which this version does not know")
    task = TASKS[name]
    if verb not in task.verbs:
        able = ", ".join(t.name for t in TASKS.values() if verb in t.verbs)
        raise ValueError(f"{run_dir} is a {task.name} run: `{verb}` works on {able} runs; this run's results "
                         f"are in {task.results}")


__all__ = ["TASKS", "Task", "config_for", "load_task_config", "require_verb", "run_task", "task_of_raw"]
