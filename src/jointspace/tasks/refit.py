"""Runs of a run's own config, each trained without one fold of its train samples (`jointspace audit --refit K`):
a sample is then judged by a run that never saw it, as cleanlab asks of its predicted probabilities."""

from __future__ import annotations

import shutil
from pathlib import Path

from jointspace.audit.space import TRAIN
from jointspace.data.shards import DataError, read_info
from jointspace.data.subsample import clean_copy
from jointspace.errors import UsageError
from jointspace.tasks.registry import get_task, run_config


def train_without(run_dir: str | Path, data: str | Path, held: list[set[str]], work: str | Path,
                  device: str = "auto") -> list[Path]:
    """For each set of train keys in `held`: a copy of the shard folder `data` without them (in `work`,
    removed once trained) and a run of `run_dir`'s config trained on it, `work`/fold-K; returns the run
    folders. No tracker, no linear probe, no mined negatives, on `device`; the config is otherwise the run's
    (model, epochs, seed). A run started from or taught by another run (init_from, loss.guide, loss.distill)
    is refused: that run may have trained on the held folds."""
    try:
        read_info(data)
    except (DataError, FileNotFoundError, OSError) as e:
        raise DataError(f"{data}: --refit retrains on copies of a shard folder (`jointspace data pack` one): {e}") from e
    cfg = run_config(run_dir)
    _starts_fresh(cfg, run_dir)
    task = get_task(getattr(cfg, "task", "contrastive"))
    work = Path(work)
    runs = []
    for k, keys in enumerate(held):
        copy = work / f"data-{k}"
        clean_copy(data, copy, {(TRAIN, key) for key in keys})
        one = _fold_config(cfg, copy, work, f"fold-{k}", device)
        runs.append(Path(task.train(one, resume=False, overwrite=True)))
        shutil.rmtree(copy)  # this call's own copy
    return runs


def _starts_fresh(cfg, run_dir) -> None:
    """A fold run must not start from, or learn from, a run that may have trained on its held fold."""
    towers = getattr(cfg.model, "towers", {}) or {}
    named = [("model.init_from", getattr(cfg.model, "init_from", None)),
             *((f"model.towers.{m}.init_from", getattr(t, "init_from", None)) for m, t in towers.items()),
             ("loss.guide", getattr(getattr(cfg, "loss", None), "guide", None)),
             ("loss.distill", getattr(getattr(cfg, "loss", None), "distill", None))]
    given = [name for name, value in named if value]
    if given:
        raise UsageError(f"{run_dir}: --refit retrains its config without each fold, but {', '.join(given)} "
                         f"starts it from (or teaches it with) another run, which may have seen those folds")


def _fold_config(cfg, data: Path, work: Path, name: str, device: str):
    """`cfg` trained on the shard folder `data` (whatever data the run named: a CSV, foreign shards, mixed
    sources; without mined hard negatives, which name the run's own train keys) into `work`/`name`, on
    `device`, quietly (no tracker, no linear probe at the end)."""
    data_update = {"path": str(data), "synth": None, "urls": None, "val_urls": None, "test_urls": None,
                   "csv": None, "val_csv": None, "test_csv": None, "sources": [], "hard_negatives": None}
    update = {"name": name, "output_dir": str(work), "tracker": "none",
              "data": cfg.data.model_copy(update={k: v for k, v in data_update.items() if hasattr(cfg.data, k)})}
    if hasattr(cfg, "eval") and hasattr(cfg.eval, "linear_probe"):
        update["eval"] = cfg.eval.model_copy(update={"linear_probe": False})
    if hasattr(cfg.train, "device"):
        update["train"] = cfg.train.model_copy(update={"device": device})
    return cfg.model_copy(update=update)
