"""`jointspace sweep SWEEP.yaml`: an Optuna study over any task, in Optuna's RDB storage (SQLite by
default, `runs/<name>/study.db`), so a killed sweep goes on where it was and several processes or
machines can share one study.

Each trial is a normal run folder, `runs/<name>/trials/<number>/`. Heartbeats mark a trial whose process
died (SIGKILL, a lost machine) as failed once its grace period has passed, and Optuna's retry callback
queues the same parameters again; the sweep stops once `n_trials` trials are complete or pruned.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import warnings
from pathlib import Path

from jointspace.config import ConfigError, apply_overrides
from jointspace.engine.loop import epoch_hook
from jointspace.errors import UsageError, require
from jointspace.sweep.config import SweepConfig, load_sweep
from jointspace.sweep.space import check_sweep, metric_value, overrides_of, suggest

HEARTBEAT_S = 2  # a trial's process writes a heartbeat this often
GRACE_S = 6  # a running trial without a heartbeat for this long is dead: failed, then retried


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
        storage = RDBStorage(cfg.storage_url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
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


class TrialRunner:
    """Optuna's objective: one trial = one run of the base task with the trial's overrides."""

    def __init__(self, cfg: SweepConfig, base: dict, task: str):
        self.cfg, self.base, self.task = cfg, base, task

    def __call__(self, trial) -> float | tuple[float, ...]:
        import optuna

        from jointspace.tasks import config_for, get_task

        values = suggest(trial, self.cfg.space, self.base)
        raw = apply_overrides(json.loads(json.dumps(self.base)), overrides_of(self.cfg.set) + overrides_of(values))
        raw.update({"name": str(trial.number), "output_dir": str(self.cfg.sweep_dir / "trials")})
        run_cfg = config_for(raw, f"sweep {self.cfg.name} trial {trial.number}")
        first = self.cfg.objectives[0].metric
        last: dict[str, float] = {}

        def report(epoch: int, val: dict) -> None:
            for o in self.cfg.objectives:
                if o.metric.startswith("val/") and (v := metric_value(o.metric, val)) is not None:
                    last[o.metric] = v
            if len(self.cfg.objectives) == 1 and first in last:
                trial.report(last[first], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: {first} {last[first]:.4f}")

        os.environ.setdefault("WANDB_RUN_GROUP", self.cfg.name)  # W&B (offline) groups a sweep's trials
        trial.set_user_attr("run_dir", str(run_cfg.run_dir))
        with epoch_hook(report):
            run_dir = get_task(self.task).train(run_cfg, overwrite=True, show_progress=False)
        wants_summary = any(not o.metric.startswith("val/") for o in self.cfg.objectives)
        summary = (get_task(self.task).finish(run_dir) or {}) if wants_summary else {}
        out = []
        for o in self.cfg.objectives:
            value = last.get(o.metric, summary.get(o.metric))
            if value is None:
                raise UsageError(f"trial {trial.number}: objective {o.metric} was never logged")
            out.append(float(value))
        return out[0] if len(out) == 1 else tuple(out)


def _finished(study) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _settle(study) -> None:
    """Trials left running by a dead process are failed (and queued again) once their heartbeat is older
    than the grace period: wait that long at start, so a restarted sweep retries them before it counts."""
    import optuna

    deadline = time.time() + GRACE_S + 2 * HEARTBEAT_S
    running = (optuna.trial.TrialState.RUNNING,)
    while study.get_trials(deepcopy=False, states=running) and time.time() < deadline:
        optuna.storages.fail_stale_trials(study)
        time.sleep(0.5)


def work(sweep_path: str, worker: int = 0) -> None:
    """One worker: run trials against the shared study until `n_trials` are complete or pruned."""
    import optuna
    from optuna.study import MaxTrialsCallback

    from jointspace.tasks import task_of_raw

    cfg, base = load_sweep(sweep_path)
    task = task_of_raw(base, str(sweep_path))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(cfg, worker)
    _settle(study)
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    failed_limit = max(3, cfg.n_trials // 2)  # trials that raise: stop rather than loop forever
    while _finished(study) < cfg.n_trials:
        if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))) > failed_limit:
            raise RuntimeError(f"sweep {cfg.name}: more than {failed_limit} trials failed; see {cfg.sweep_dir}")
        study.optimize(TrialRunner(cfg, base, task), n_trials=1, catch=(ValueError, RuntimeError),
                       callbacks=[MaxTrialsCallback(cfg.n_trials, states=states)])


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
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=work, args=(str(sweep_path), i)) for i in range(jobs)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
    report = write_report(cfg, open_study(cfg), time.time() - t0, base)
    log(f"wrote {report}")
    return cfg.sweep_dir
