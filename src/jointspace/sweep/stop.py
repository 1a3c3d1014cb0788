"""A sweep stopped by a preemption signal (SIGTERM, SIGUSR1: `train.preempt_signals`), sent to the sweep's
process, to its workers, or to all of them as a cluster sends it to a process group.

The parent passes the signal on, once, to every worker (and a worker that heard it alone has it passed
on to the others); each worker's running trial stops at its next step with a mid-epoch checkpoint, no
new trial starts, and the sweep exits with PREEMPTED_EXIT. A stopped trial is marked failed, with the
user attribute `preempted`, and its parameters are queued again with the user attribute `run_dir` naming
its folder: the next run of the same sweep command takes that queued trial first and resumes the run
in that folder from its checkpoint, so it ends as it would have without the stop.

A worker that fails (too many trials raised, or an error of its own) fails the sweep once every worker
has ended: the parent raises SweepFailed, one line, and the study keeps every finished trial.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence

from jointspace.engine.preempt import PreemptWatch
from jointspace.errors import JointspaceError
from jointspace.preemption import DEFAULT_SIGNALS, PREEMPTED_EXIT, Preempted, signal_number


class SweepFailed(JointspaceError, RuntimeError):
    """A sweep that cannot go on: more trials raised than it allows, or a worker process failed."""


class TrialTakenOver(BaseException):
    """A running trial that another worker marked failed (its heartbeat looked stale: this process
    stalled past the grace period) and queued again: carried out of `study.optimize` as a BaseException,
    so that Optuna does not try to record it, and the worker goes on with the next trial."""

    def __init__(self, number: int):
        super().__init__(number)
        self.number = number


def still_running(trial) -> bool:
    """Whether the study still has the trial running (not failed by another worker meanwhile)."""
    import optuna

    return trial.storage.get_trial(trial._trial_id).state == optuna.trial.TrialState.RUNNING


class TrialStopped(BaseException):
    """A trial's Preempted, carried out of `study.optimize` as a BaseException: Optuna then neither
    records the trial nor logs it as failed, and the worker records it with `put_back`."""

    def __init__(self, trial, stop: Preempted):
        super().__init__(trial.number, stop)
        self.trial, self.stop = trial, stop


class SweepPreempted(Preempted):
    """A sweep stopped by `signal_name`: the trials that stopped with a checkpoint (number, their stop),
    none when the signal came between trials."""

    def __init__(self, signal_name: str, trials: Sequence[tuple[int, Preempted]] = ()):
        trials = list(trials)
        first = trials[0][1] if trials else Preempted(signal_name, 0, 0, 0, "none (no trial was under way)")
        super().__init__(signal_name, first.step, first.total_steps, first.epoch, first.checkpoint)
        self.args = (signal_name, trials)  # what it pickles with, across processes
        self.trials = trials

    def __str__(self) -> str:
        if not self.trials:
            return f"stopped by {self.signal_name} between trials (none was under way)"
        return f"stopped by {self.signal_name}: " + ", ".join(
            f"trial {n} at step {s.step} of {s.total_steps} (epoch {s.epoch}, checkpoint {s.checkpoint})"
            for n, s in self.trials)


def signals_of(raw: dict) -> tuple[str, ...]:
    """The preemption signals of a sweep's runs (`train.preempt_signals` of its base config and `set`)."""
    return tuple((raw.get("train") or {}).get("preempt_signals") or DEFAULT_SIGNALS)


def put_back(study, stopped: TrialStopped) -> None:
    """Queue the stopped trial's parameters again, to resume in its folder, then mark it failed (in this
    order: a process killed in between leaves the trial running, to be retried by its heartbeat)."""
    import optuna

    trial, stop = stopped.trial, stopped.stop
    if not still_running(trial):  # failed by another worker, which has queued its values again already
        return
    run_dir = trial.user_attrs["run_dir"]
    study.enqueue_trial(trial.params, user_attrs={"run_dir": run_dir, "continues": trial.number})
    trial.set_user_attr("preempted", str(stop))
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def run_workers(target: Callable, args: tuple, jobs: int, signals: Sequence[str]) -> SweepPreempted | None:
    """Run `target(*args, worker, queue)` in `jobs` spawned processes until they end. A preemption signal
    to this process, or a worker's stop (a SweepPreempted it puts on the queue), is passed on once to
    every worker still running; returns the sweep's stop, if any. A worker that failed (a SweepFailed on
    the queue, or any other exit code) raises SweepFailed once all have ended."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    stops: list[SweepPreempted] = []
    told: list[SweepFailed] = []  # each from a worker that then exits 2
    passed = False
    with PreemptWatch(signals) as watch:
        procs = [ctx.Process(target=target, args=(*args, i, queue)) for i in range(jobs)]
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs) or not queue.empty():
            while not queue.empty():
                said = queue.get()
                (stops if isinstance(said, SweepPreempted) else told).append(said)
            asked = watch.requested or (stops[0].signal_name if stops else None)
            if asked and not passed:
                for p in procs:
                    if p.is_alive() and p.pid is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(p.pid, signal_number(asked))
                passed = True
            time.sleep(0.1)
        for p in procs:
            p.join()
    asked = watch.requested or (stops[0].signal_name if stops else None)
    if asked is not None:
        return SweepPreempted(asked, [t for s in stops for t in s.trials])
    silent = [SweepFailed(f"sweep worker {i} {_ended(p.exitcode)}; the study keeps every finished trial")
              for i, p in enumerate(procs) if p.exitcode not in (0, PREEMPTED_EXIT) and not (p.exitcode == 2 and told)]
    if told or silent:
        raise (told + silent)[0]
    return None


def _ended(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code} (its traceback is above)"
