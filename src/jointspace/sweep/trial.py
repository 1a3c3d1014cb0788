"""One trial of a sweep: a normal run of the base task with the trial's values, in `trials/<name>/`.

A trial queued again (after a preemption, or by the heartbeat retry after its process went silent) carries
the user attribute `run_dir` and resumes the run in that folder from its checkpoint. A process holds an
flock on `<sweep>/.locks/trial-<name>.lock` while its run trains in `trials/<name>/` (a dead process lets go
of it), so a retry whose first process is alive after all (stalled past the grace period) trains in its own
folder instead.

A live trial that another worker has marked failed (its heartbeat judged stale) is dropped at its next
validated epoch, or where it ends: TrialTakenOver, which the worker hears, and Optuna never records it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import IO

from jointspace.config import apply_overrides
from jointspace.engine.loop import epoch_hook
from jointspace.errors import UsageError
from jointspace.preemption import Preempted
from jointspace.sweep.config import SweepConfig
from jointspace.sweep.space import metric_value, overrides_of, suggest
from jointspace.sweep.stop import TrialStopped, TrialTakenOver, still_running


class TrialRunner:
    """Optuna's objective: one trial = one run of the base task with the trial's overrides."""

    def __init__(self, cfg: SweepConfig, base: dict, task: str):
        self.cfg, self.base, self.task = cfg, base, task

    def __call__(self, trial) -> float | tuple[float, ...]:
        with contextlib.ExitStack() as held:
            try:
                out = self._run(trial, held)
            except Exception:  # raised after another worker failed the trial: Optuna could not record it
                if not still_running(trial):
                    raise TrialTakenOver(trial.number) from None
                raise
            if not still_running(trial):
                raise TrialTakenOver(trial.number)
            return out

    def _run(self, trial, held: contextlib.ExitStack) -> float | tuple[float, ...]:
        from jointspace.tasks import config_for, get_task
        from jointspace.tasks.lifecycle import has_checkpoint, same_config

        values = suggest(trial, self.cfg.space, self.base)
        raw = apply_overrides(json.loads(json.dumps(self.base)), overrides_of(self.cfg.set) + overrides_of(values))
        name, stopped_in = self._folder(trial, held)
        raw.update({"name": name, "output_dir": str(self.cfg.sweep_dir / "trials")})
        run_cfg = config_for(raw, f"sweep {self.cfg.name} trial {trial.number}")
        resume = stopped_in and has_checkpoint(run_cfg.run_dir) and same_config(run_cfg)
        last: dict[str, float] = {}
        os.environ.setdefault("WANDB_RUN_GROUP", self.cfg.name)  # W&B (offline) groups a sweep's trials
        trial.set_user_attr("run_dir", str(run_cfg.run_dir))
        _carry_over(trial)
        try:
            with epoch_hook(lambda epoch, val: self._report(trial, epoch, val, last)):
                run_dir = get_task(self.task).train(run_cfg, resume=resume, overwrite=not resume,
                                                    show_progress=False)
        except Preempted as stop:
            raise TrialStopped(trial, stop) from None
        if resume:  # epochs validated before the stop (all of them where the run had finished) count too
            _logged_before(run_dir, self.cfg.objectives, last)
        wants_summary = any(not o.metric.startswith("val/") for o in self.cfg.objectives)
        summary = (get_task(self.task).finish(run_dir) or {}) if wants_summary else {}
        out = []
        for o in self.cfg.objectives:
            value = last.get(o.metric, summary.get(o.metric))
            if value is None:
                raise UsageError(f"trial {trial.number}: objective {o.metric} was never logged")
            out.append(float(value))
        return out[0] if len(out) == 1 else tuple(out)

    def _folder(self, trial, held: contextlib.ExitStack) -> tuple[str, bool]:
        """The run folder's name, held for the trial (`held`), and whether it continues a stopped run there."""
        locks = self.cfg.sweep_dir / ".locks"
        stopped_in = trial.user_attrs.get("run_dir")  # a trial queued again: its first run's folder
        if stopped_in and (lock := _claim(locks, Path(stopped_in).name)) is not None:
            held.enter_context(lock)
            return Path(stopped_in).name, True
        if stopped_in:
            print(f"sweep {self.cfg.name}: trial {trial.number} runs in its own folder: {stopped_in}, where its "
                  "values ran before, is still in use by a live process", file=sys.stderr)
        if (lock := _claim(locks, str(trial.number))) is None:
            raise RuntimeError(f"sweep {self.cfg.name}: trial {trial.number}'s folder is in use by another process")
        held.enter_context(lock)
        return str(trial.number), False

    def _report(self, trial, epoch: int, val: dict, last: dict[str, float]) -> None:
        """After each validated epoch: keep the objectives' values; a single objective goes to Optuna's pruner."""
        import optuna

        if not still_running(trial):
            raise TrialTakenOver(trial.number)
        for o in self.cfg.objectives:
            if o.metric.startswith("val/") and (v := metric_value(o.metric, val)) is not None:
                last[o.metric] = v
        first = self.cfg.objectives[0].metric
        if len(self.cfg.objectives) == 1 and first in last:
            trial.report(last[first], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {first} {last[first]:.4f}")


def _claim(locks: Path, name: str) -> IO | None:
    """`locks/trial-<name>.lock`, locked (flock) for this process; None where another live process holds it."""
    locks.mkdir(parents=True, exist_ok=True)
    f = open(locks / f"trial-{name}.lock", "a")  # noqa: SIM115 (held for the trial, closed with it)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _logged_before(run_dir: Path, objectives, last: dict[str, float]) -> None:
    """A resumed run's objectives that it did not report since it resumed, from its last validation."""
    from jointspace.run_dir import RunDir

    val = [r for r in RunDir(run_dir).read_metrics() if r.get("split") == "val"]
    for o in objectives:
        value = metric_value(o.metric, val[-1]) if val and o.metric.startswith("val/") else None
        if o.metric not in last and value is not None:
            last[o.metric] = value


def _carry_over(trial) -> None:
    """A trial continuing a preempted one gets the per-epoch values that one reported (pruning compares them)."""
    if (before := trial.user_attrs.get("continues")) is None:
        return
    (stopped,) = [t for t in trial.study.get_trials(deepcopy=False) if t.number == before]
    for epoch, value in sorted(stopped.intermediate_values.items()):
        trial.report(value, epoch)
