"""`jointspace sweep SWEEP.yaml`: an Optuna study over any task, in Optuna's RDB storage (SQLite by
default, `runs/<name>/study.db`), so a killed sweep goes on where it was and several processes or
machines can share one study.

Each trial is a normal run folder, `runs/<name>/trials/<number>/`. Heartbeats mark a trial whose process
died (SIGKILL, a lost machine) as failed once its grace period has passed, and Optuna's retry callback
queues the same parameters again (a live trial so marked, its process stalled that long, is dropped by
its worker, which goes on); the sweep stops once `n_trials` trials are complete or pruned. A
preemption signal stops the running trials with a checkpoint and the sweep with PREEMPTED_EXIT; the same
command run again resumes them in their folders (stop.py).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

from jointspace.config import ConfigError, apply_overrides
from jointspace.engine.preempt import PreemptWatch
from jointspace.errors import JointspaceError, require
from jointspace.preemption import PREEMPTED_EXIT
from jointspace.sweep.config import SweepConfig, load_sweep
from jointspace.sweep.space import check_sweep, overrides_of
from jointspace.sweep.stop import (
    SweepFailed,
    SweepPreempted,
    TrialStopped,
    TrialTakenOver,
    put_back,
    run_workers,
    signals_of,
)
from jointspace.sweep.trial import TrialRunner

HEARTBEAT_S = 2  # a trial's process writes a heartbeat this often (the grace period: heartbeat_grace_s)
SQLITE_BUSY_S = 60  # how long a write to a SQLite study waits for another process's (sqlite3's default: 5 s)


def _sampler(cfg: SweepConfig, seed: int):
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's group / multivariate
    return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
            "random": lambda: optuna.samplers.RandomSampler(seed=seed),
            "grid": lambda: optuna.samplers.GridSampler(
                {k: p.choices if p.type == "categorical" else _grid_values(p) for k, p in cfg.space.items()}, seed=seed),
            "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
            }[cfg.sampler]()


def _grid_values(p) -> list:
    """A numeric key's grid: its `step` from low to high, else 5 points (geometric for log scales)."""
    import numpy as np

    if p.step:
        return np.arange(p.low, p.high + p.step / 2, p.step).tolist()
    points = np.geomspace(p.low, p.high, 5) if (p.type == "log-float" or p.log) else np.linspace(p.low, p.high, 5)
    return [round(v) for v in points] if p.type == "int" else points.tolist()


def _pruner(cfg: SweepConfig):
    import optuna

    if cfg.pruner == "none" or len(cfg.objectives) > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def open_study(cfg: SweepConfig, worker: int = 0):
    """The sweep's study (created on first use) in its RDB storage, with heartbeats and retries. Its
    sampler is seeded from the sweep's seed, the worker and the trials already in the study, so that
    neither a resumed sweep nor a second worker proposes the same points again."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    cfg.sweep_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # heartbeats and their retry callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sqlite = {"connect_args": {"timeout": SQLITE_BUSY_S}} if cfg.storage_url.startswith("sqlite") else None
        storage = RDBStorage(cfg.storage_url, heartbeat_interval=HEARTBEAT_S, grace_period=cfg.heartbeat_grace_s,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                             engine_kwargs=sqlite)
    directions = [o.direction for o in cfg.objectives]
    study = optuna.create_study(study_name=cfg.name, storage=storage, load_if_exists=True,
                                directions=directions, sampler=_sampler(cfg, cfg.seed), pruner=_pruner(cfg))
    if worker or study.trials:
        study.sampler = _sampler(cfg, cfg.seed + 7919 * worker + len(study.trials))
    if not study.user_attrs.get("enqueued") and cfg.enqueue:
        for point in cfg.enqueue:
            study.enqueue_trial(point, skip_if_exists=True)
        study.set_user_attr("enqueued", True)
    return study


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _settle(study, cfg: SweepConfig) -> None:
    """Trials left running by a dead process are failed (and queued again) once their heartbeat is older
    than the grace period: wait that long at start, so a restarted sweep retries them before it counts."""
    import optuna

    deadline = time.time() + cfg.heartbeat_grace_s + 2 * HEARTBEAT_S
    running = (optuna.trial.TrialState.RUNNING,)
    while study.get_trials(deepcopy=False, states=running) and time.time() < deadline:
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.5)


def _signals(cfg: SweepConfig, base: dict) -> tuple[str, ...]:
    return signals_of(apply_overrides(json.loads(json.dumps(base)), overrides_of(cfg.set)))


def _failed(study) -> int:
    """Trials that raised: not those stopped by a preemption, nor those whose heartbeat went stale (both
    are queued again)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return sum(t.state == optuna.trial.TrialState.FAIL and "preempted" not in t.user_attrs
               and t.number not in retried for t in trials)


def work(sweep_path: str, worker: int = 0, settle: bool = True) -> None:
    """One worker: run trials against the shared study until `n_trials` are complete or pruned. A
    preemption signal stops it (SweepPreempted): the running trial with a checkpoint, queued again to
    resume; between trials, before the next one."""
    import optuna
    from optuna.study import MaxTrialsCallback

    from jointspace.tasks import task_of_raw

    cfg, base = load_sweep(sweep_path)
    task = task_of_raw(base, str(sweep_path))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    failed_limit = max(3, cfg.n_trials // 2)  # trials that raise: stop rather than loop forever
    with PreemptWatch(_signals(cfg, base)) as watch:
        study = open_study(cfg, worker)
        if settle:
            _settle(study, cfg)
        while _finished(study) < cfg.n_trials:
            if watch.requested:
                raise SweepPreempted(watch.requested)
            if _failed(study) > failed_limit:
                raise SweepFailed(f"sweep {cfg.name}: more than {failed_limit} trials failed; see {cfg.sweep_dir}")
            try:
                study.optimize(TrialRunner(cfg, base, task), n_trials=1, catch=(ValueError, RuntimeError),
                               callbacks=[MaxTrialsCallback(cfg.n_trials, states=states)])
            except TrialStopped as stopped:
                put_back(study, stopped)
                raise SweepPreempted(stopped.stop.signal_name, [(stopped.trial.number, stopped.stop)]) from None
            except TrialTakenOver as taken:
                print(f"sweep {cfg.name}: trial {taken.number} was marked failed by another worker, which judged its "
                      "heartbeat stale, and queued again; dropped here", file=sys.stderr)


def _worker(sweep_path: str, worker: int, queue) -> None:
    """A worker process: a stop goes to the parent on `queue`, and the process exits with PREEMPTED_EXIT;
    an error of ours goes there too, as one line (exit 2)."""
    try:
        work(sweep_path, worker, settle=False)
    except SweepPreempted as stop:
        queue.put(stop)
        raise SystemExit(PREEMPTED_EXIT) from None
    except JointspaceError as err:
        queue.put(err if isinstance(err, SweepFailed) else SweepFailed(f"sweep worker {worker}: {err}"))
        raise SystemExit(2) from None


def run_sweep(sweep_path: str | Path, jobs: int | None = None, log=print) -> Path:
    """Check the sweep, run its trials (`jobs` worker processes) and write sweep.md / .csv / .html."""
    require("sweep", "optuna", "a sweep")
    from jointspace.sweep.report import write_report
    from jointspace.tasks import config_for, get_task, task_of_raw
    from jointspace.tasks.registry import able

    cfg, base = load_sweep(sweep_path)
    jobs = jobs or cfg.jobs
    task = check_sweep(cfg, base, config_for, lambda raw: task_of_raw(raw, str(sweep_path)),
                       lambda t: get_task(t).val_metrics)
    if not get_task(task).val_metrics:
        raise ConfigError(f"{sweep_path}: a {task} run logs no per-epoch validation; sweeps take "
                          f"{able(lambda t: t.val_metrics)} runs")
    study = open_study(cfg)
    log(f"sweep {cfg.name}: {task} runs, {cfg.n_trials} trials ({_finished(study)} finished), {cfg.sampler} "
        f"sampler, {cfg.pruner} pruner, {jobs} at a time, storage {cfg.storage_url}")
    t0 = time.time()
    if jobs == 1:
        work(str(sweep_path))
    else:
        _settle(study, cfg)  # once, before the workers count the trials
        try:
            stop = run_workers(_worker, (str(sweep_path),), jobs, _signals(cfg, base))
        except SweepFailed as failed:
            if _finished(open_study(cfg)) < cfg.n_trials:
                raise
            log(f"warning: {failed}; every trial finished: writing the report")
            stop = None
        if stop is not None and (stop.trials or _finished(open_study(cfg)) < cfg.n_trials):
            raise stop
    report = write_report(cfg, open_study(cfg), time.time() - t0, base)
    log(f"wrote {report}")
    return cfg.sweep_dir
