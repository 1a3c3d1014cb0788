"""The task registry: a `Task` says how its runs train, which config type they read, and what the
commands that work across tasks (compare, sweep, pipeline, augment fix, the run verbs) ask of them.
Nothing outside `tasks/` matches a task's name; it asks the task.

Task modules import this module (never `jointspace.tasks`, which imports them); `tasks/__init__.py`
registers each task with one `register(...)` line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from jointspace.config import ConfigError, RunConfig, read_yaml, validate_config
from jointspace.errors import UsageError
from jointspace.run_dir import RunDir, RunInfo

if TYPE_CHECKING:
    import torch

DEFAULT_TASK = "contrastive"  # what a config without a `task:` line trains


@dataclass(frozen=True)
class ClassPredictions:
    """Each sample's predicted and true class on a split, and what made the prediction (augment fix)."""

    predicted: torch.Tensor  # [N] class ids
    true: torch.Tensor  # [N] class ids
    class_names: list[str]
    measure: str  # what predicted: "prediction", "image->text R@1 (class-level)"
    overall: str  # the name of the share of right predictions: "accuracy", "R@1 (all queries)"


def done_summary(run_dir: Path) -> dict | None:
    """A finished run's done.json (None when it has not finished)."""
    return RunDir(run_dir).read_done()


def weights_and_done(run_dir: Path) -> bool:
    """A run finished: its weights and its done marker are there."""
    run = RunDir(run_dir)
    return run.weights.exists() and run.read_done() is not None


@dataclass(frozen=True)
class Task:
    """A task: how it trains, what config its runs read, and what its finished runs offer."""

    name: str
    config: type[BaseModel]  # what its configs are validated into (`config_for`)
    train: Callable[..., Path]  # (cfg, resume, overwrite, show_progress) -> the run folder
    summary: Callable[[Path], str]  # what `jointspace train` prints for a finished run
    verbs: tuple[str, ...] = ()  # the run verbs (eval, embed, report, index, export) its runs support
    results: str = ""  # where a finished run's results are, for verbs it does not support
    finish: Callable[[Path], dict | None] = done_summary  # its summary: compare's row, sweep objectives
    val_metrics: tuple[str, ...] = ()  # what its validation logs each epoch (fnmatch patterns; sweeps)
    info: type[RunInfo] = RunInfo  # its run.json: the common fields and its own part, typed
    measure: str = ""  # what its summary's `test_accuracy` is (the note of `jointspace compare`)
    joint_space: bool = False  # its towers form a joint space: `init_from` starts from them, augment fix asks it
    predictions: Callable[[Path, str], ClassPredictions] | None = None  # augment fix judges its runs by these
    finished: Callable[[Path], bool] = weights_and_done  # a pipeline keeps a finished stage
    # `jointspace audit` of a run without a joint space: (run, shards, splits, device) -> per split (name, the
    # split prepared as the run's with its values, its own class probabilities [N, C]) for cleanlab
    class_probabilities: Callable[[Path, str | Path, list[str] | None, str], list[tuple]] | None = None

    @property
    def sections(self) -> tuple[str, ...]:
        """The top-level config sections of its own (`fusion:`): what its config type adds to RunConfig."""
        if not issubclass(self.config, RunConfig):
            return ()
        return tuple(k for k in self.config.model_fields if k not in RunConfig.model_fields)


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to the registry under its name."""
    if task.name in TASKS:
        raise UsageError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def get_task(name: object, where: str = "task") -> Task:
    """The registered task `name`; anything else is a ConfigError naming `where` (a file and its field)
    and listing the known tasks."""
    if not isinstance(name, str) or name not in TASKS:
        raise ConfigError(f"{where}: {name!r} is not a task (known: {', '.join(TASKS)})")
    return TASKS[name]


def task_info(run_dir: str | Path) -> RunInfo:
    """A run's run.json, its task's own part typed by the task's RunInfo subclass (`Task.info`)."""
    info = RunDir(run_dir).read_info()
    where = f"{RunDir(run_dir).run_info}: task"
    return info.as_type(get_task(info.task, where).info)


def task_of_raw(raw: dict, source: str) -> str:
    """The task a config mapping names (default: DEFAULT_TASK); an unknown one is a ConfigError."""
    name = get_task(raw.get("task") or DEFAULT_TASK, f"{source}: task").name
    owners = {s: t.name for t in TASKS.values() for s in t.sections}
    stray = [s for s in owners if s in raw and owners[s] != name]
    if "task" not in raw and stray:  # a config written for `jointspace classify`/`metric`/`cilp`
        raise ConfigError(f"{source}: has a {stray[0]}: section but no task: line; say which task it trains "
                          f"(task: {owners[stray[0]]})")
    return name


def config_for(raw: dict, source: str) -> BaseModel:
    """Validate a config mapping into its task's config type."""
    return validate_config(TASKS[task_of_raw(raw, source)].config, raw, source)


def run_config(run_dir: str | Path) -> BaseModel:
    """A run folder's config.yaml, validated into its task's config type."""
    path = RunDir(run_dir).config
    return config_for(read_yaml(path), str(path))


def able(predicate: Callable[[Task], object]) -> str:
    """The names of the tasks for which `predicate` holds, for messages ("classify or contrastive")."""
    names = [t.name for t in TASKS.values() if predicate(t)]
    return " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]
