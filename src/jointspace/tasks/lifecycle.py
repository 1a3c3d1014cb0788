"""A run folder's life across commands: a fresh run that fails early leaves nothing, `--resume` of a
finished run changes nothing, and `--overwrite` keeps the old run until the new one can stand in its place."""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from jointspace.config import ConfigError, read_yaml
from jointspace.engine.checkpoint import latest_checkpoint
from jointspace.run_dir import RESUME_OR_OVERWRITE, RUN_FOLDER, WEIGHTS, RunDir
from jointspace.tasks.registry import config_for


def fresh_or_resumed(train: Callable[..., Path]) -> Callable[..., Path]:
    """Decorator for a task's train(cfg, resume, overwrite, show_progress): `--resume` on a run without a
    checkpoint starts from scratch (and says so); a run that fails before its first checkpoint leaves no
    folder behind, so the plain rerun works (a folder that was there and not replaced is never touched);
    an old run replaced with `overwrite` comes back when the new one fails before that (`keeping_old_run`)."""

    @functools.wraps(train)
    def wrapper(cfg, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> Path:
        run_dir = cfg.run_dir
        restore_replaced(run_dir)
        if resume and finished(cfg):
            print(f"{run_dir}: the run is finished ({WEIGHTS} written); nothing to resume, nothing changed "
                  "(--overwrite trains it again, more train epochs/steps continue it)", file=sys.stderr)
            return run_dir
        if resume and not has_checkpoint(run_dir):
            print(f"{run_dir}: no checkpoint to resume from: starting from scratch", file=sys.stderr)
            resume, overwrite = False, True
        untouchable = run_dir.exists() and not overwrite and not resume
        with keeping_old_run(run_dir, resume, overwrite):
            try:
                return train(cfg, resume=resume, overwrite=overwrite, show_progress=show_progress)
            except BaseException:
                main = int(os.environ.get("RANK", "0")) == 0
                if main and not untouchable and not resume and run_dir.exists() and not has_checkpoint(run_dir):
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise

    return wrapper


def finished(cfg) -> bool:
    """Whether cfg's run folder holds a finished run of as many epochs (steps) as cfg asks: its weights
    and what its task writes last (done.json; a contrastive run's train_summary.json)."""
    run = RunDir(cfg.run_dir)
    if not run.weights.exists() or not (run.done.exists() or run.train_summary.exists()):
        return False
    try:
        saved = read_yaml(run.config).get("train") or {}
    except ConfigError:
        return True
    return all(saved.get(k) == getattr(cfg.train, k) for k in ("epochs", "steps") if hasattr(cfg.train, k))


def _replaced(run_dir: Path) -> list[Path]:
    """Old runs set aside by replacements of `run_dir`, oldest first."""
    found = run_dir.parent.glob(f"{glob.escape(f'.{run_dir.name}.replaced-')}*")
    return sorted(found, key=lambda p: p.stat().st_mtime)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run folder holds a checkpoint to resume from (what `latest.json` names is there)."""
    return latest_checkpoint(RunDir(run_dir).checkpoints) is not None


def same_config(cfg) -> bool:
    """Whether cfg's run folder holds a saved config that is this very config (validated as its task's):
    a run stopped part-way goes on from its checkpoint only then."""
    import yaml

    path = RunDir(cfg.run_dir).config
    if not path.exists():
        return False
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        return False
    try:
        saved = config_for(raw, str(path))
    except ConfigError:  # written by a version with other settings: not the same config
        return False
    return saved.model_dump(mode="json") == cfg.model_dump(mode="json")


def train_stage(train: Callable[..., Path], cfg, resume: bool, show_progress: bool) -> Path:
    """Train a stage of a CILP or pipeline folder: resumed when asked and it has a checkpoint, else afresh
    (its unfinished folder replaced)."""
    go_on = resume and has_checkpoint(cfg.run_dir)
    return train(cfg, resume=go_on, overwrite=not go_on, show_progress=show_progress)


def _resumable(run_dir: Path) -> bool:
    return has_checkpoint(run_dir) or RunDir(run_dir).weights.exists()


def restore_replaced(run_dir: Path) -> None:
    """What a replacement killed hard (SIGKILL, power) left: its old run set aside. When the new run got
    as far as a checkpoint, the old one goes; when it did not, the old one comes back in place of what
    the new one left, but only where that is nothing, an empty folder or a run folder (one writer per
    run folder; rank 0 only)."""
    old = _replaced(run_dir)
    if not old or int(os.environ.get("RANK", "0")) != 0:
        return
    if run_dir.exists() and _resumable(run_dir):
        for stale in old:
            shutil.rmtree(stale, ignore_errors=True)
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not RUN_FOLDER.holds(run_dir):
        raise FileExistsError(f"{run_dir}: holds files that are not a run, beside an earlier run set aside at "
                              f"{old[-1]}: move one of them away")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.replace(old[-1], run_dir)


@contextlib.contextmanager
def keeping_old_run(run_dir: Path, resume: bool, overwrite: bool) -> Iterator[None]:
    """Before any work of a run that does not resume: a folder that is not a run, or a run without
    `overwrite`, is refused (RUN_FOLDER). With `overwrite` an old run is moved aside while the new one
    trains; it is removed when the new run finishes or fails with a checkpoint to resume from, and put
    back when the new run fails before that. Under torchrun the old folder is removed at once."""
    aside = None
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1
    replace = not resume and RUN_FOLDER.check(run_dir, overwrite, flag=RESUME_OR_OVERWRITE)
    if replace and single:
        aside = run_dir.parent / f".{run_dir.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(run_dir, aside)
    try:
        yield
    except BaseException:
        if aside is not None and not _resumable(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            os.replace(aside, run_dir)
            aside = None
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
