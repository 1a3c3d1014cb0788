"""`jointspace sweep`: checked before any trial, conditional keys, pruning, kill and resume, two
processes on one SQLite study, preemption (a signal to the sweep, or to one of its workers alone, stops
every running trial at its next step with a checkpoint and the sweep with exit code 75 and one line; the
same command then resumes those trials in their folders, ending bitwise equal to uninterrupted trials)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from safetensors.torch import load_file

from jointspace.config import ConfigError
from jointspace.engine.checkpoint import SLOW_WRITE_ENV
from jointspace.engine.preempt import PreemptWatch
from jointspace.preemption import PREEMPTED_EXIT
from jointspace.sweep import run_sweep
from jointspace.sweep.config import Param, load_sweep
from jointspace.sweep.run import open_study
from jointspace.sweep.space import suggest
from jointspace.tasks import config_for, get_task
from jointspace.tasks.lifecycle import has_checkpoint

pytestmark = pytest.mark.usefixtures("multiprocess_lock")  # several processes of its own: one such test at a time

DIGITS = Path(__file__).parents[2] / "src" / "jointspace" / "configs" / "digits.yaml"
JOINTSPACE = str(Path(sys.executable).parent / "jointspace")


def write_sweep(tmp_path: Path, digits_dir: Path, **fields) -> Path:
    """A sweep of tiny digits runs (a few seconds per trial)."""
    sweep = {
        "name": "s", "base": str(DIGITS), "output_dir": str(tmp_path / "runs"),
        "objective": {"metric": "val/R@1", "direction": "maximize"},
        "set": {"train.epochs": 2, "eval.linear_probe": False, "tracker": "none", "data.path": str(digits_dir),
                "data.synth": None, "train.batch_size": 16, "train.warmup_steps": 0,
                "model.towers.image.params.channels": [8, 16], "model.towers.text.params.width": 16,
                "model.towers.text.params.layers": 1, "model.towers.audio.params.channels": [16, 16]},
        "space": {"train.lr": {"type": "log-float", "low": 1e-4, "high": 1e-2}},
        "n_trials": 3, "sampler": "random", "pruner": "none", **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


@pytest.mark.parametrize(("fields", "message"), [
    ({"space": {"train.lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "train.lrr"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.1}}}, "empty range"),
    ({"space": {"loss.name": {"type": "categorical", "choices": []}}}, "choices"),
    ({"objective": {"metric": "val/accuracy"}}, "objective[0].metric"),
    ({"space": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2, "when": {"nope.x": 1}}}}, "nope.x"),
    ({"heartbeat_grace_s": 2}, "heartbeat_grace_s"),
])
def test_bad_input_fails_before_the_first_trial(tmp_path, digits_dir, fields, message):
    with pytest.raises(ConfigError) as err:
        run_sweep(write_sweep(tmp_path, digits_dir, **fields))
    assert message in str(err.value)
    assert not (tmp_path / "runs").exists()  # no study, no trial


def test_a_conditional_key_is_sampled_only_when_its_condition_holds():
    space = {"model.head.type": Param(type="categorical", choices=["linear", "mlp"]),
             "model.head.hidden": Param(type="int", low=16, high=64, when={"model.head.type": "mlp"}),
             "train.lr": Param(type="log-float", low=1e-4, high=1e-2)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: float(len(suggest(t, space, {}))), n_trials=30)
    kinds = {t.params["model.head.type"] for t in study.trials}
    assert kinds == {"linear", "mlp"}
    for t in study.trials:
        assert ("model.head.hidden" in t.params) == (t.params["model.head.type"] == "mlp")


def test_the_trial_worst_at_epoch_one_is_pruned(tmp_path, digits_dir):
    path = write_sweep(tmp_path, digits_dir, pruner="median", n_trials=3,
                       objective={"metric": "val/loss", "direction": "minimize"},
                       set={**yaml.safe_load(write_sweep(tmp_path, digits_dir).read_text())["set"], "train.epochs": 3},
                       enqueue=[{"train.lr": 1e-2}, {"train.lr": 5e-3}, {"train.lr": 1e-4}])
    run_sweep(path)
    cfg_study = open_study(load_sweep(path)[0])
    trials = sorted(cfg_study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials[:2]] == ["COMPLETE", "COMPLETE"]
    worst = trials[2]
    assert worst.params["train.lr"] == 1e-4 and worst.state.name == "PRUNED" and worst.last_step == 1
    assert worst.intermediate_values[1] > max(t.intermediate_values[1] for t in trials[:2])
    out = tmp_path / "runs" / "s"
    assert {"sweep.md", "sweep.csv", "sweep.html", "best.yaml", "study.db"} <= {p.name for p in out.iterdir()}
    assert "1 pruned" in (out / "sweep.md").read_text()


def test_killed_sweep_goes_on_without_losing_or_doubling_a_trial(tmp_path, digits_dir):
    path = write_sweep(tmp_path, digits_dir, n_trials=3, heartbeat_grace_s=6)  # one process: no live trial to misjudge
    cmd = [JOINTSPACE, "sweep", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    running = tmp_path / "runs" / "s" / "trials" / "1" / "metrics.jsonl"
    deadline = time.time() + 180
    while not running.exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    study = open_study(load_sweep(path)[0])
    by_state = {s: [t for t in study.trials if t.state.name == s] for s in ("COMPLETE", "FAIL", "RUNNING")}
    assert len(by_state["COMPLETE"]) == 3 and not by_state["RUNNING"]
    (killed,) = by_state["FAIL"]
    assert killed.number == 1  # the trial that was running, failed by its missing heartbeat ...
    retried = [t for t in by_state["COMPLETE"] if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == killed.params  # ... and run again once


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_sweep_whose_trials_keep_failing_stops_with_one_line_and_exit_2(tmp_path, digits_dir, jobs):
    base_set = yaml.safe_load(write_sweep(tmp_path, digits_dir).read_text())["set"]
    path = write_sweep(tmp_path, digits_dir, n_trials=2, jobs=jobs, set={**base_set, "data.path": str(tmp_path)})
    done = subprocess.run([JOINTSPACE, "sweep", str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr[-2000:]  # was 0 with two workers: each died, the sweep said nothing
    assert done.stderr.strip().splitlines()[-1].endswith(f"sweep s: more than 3 trials failed; see {tmp_path}/runs/s")
    assert not (tmp_path / "runs" / "s" / "sweep.md").exists()


def test_a_live_trial_that_another_worker_marks_failed_is_dropped_and_run_again(tmp_path, digits_dir, monkeypatch,
                                                                                capsys):
    """A worker with a shorter grace period (1 s) takes trial 0's heartbeat, written every 2 s, for a dead
    process's: it marks the trial failed and queues its values again (Optuna's own fail_stale_trials and
    retry callback). The trial's worker drops it at its next epoch and goes on; the retry resumes its folder."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials

    monkeypatch.setenv(SLOW_WRITE_ENV, "1")  # each checkpoint write pauses 1 s: time for the other worker
    base_set = yaml.safe_load(_sweep(tmp_path, digits_dir).read_text())["set"]
    path = _sweep(tmp_path, digits_dir, jobs=1, set={**base_set, "train.epochs": 4})  # 12 steps, each logged
    cfg = load_sweep(path)[0]
    taken: list[str] = []
    done = threading.Event()

    def other_worker() -> None:
        while not _steps(cfg.sweep_dir / "trials" / "0") and not done.is_set():
            time.sleep(0.05)
        storage = RDBStorage(cfg.storage_url, heartbeat_interval=1, grace_period=1,
                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        study = optuna.load_study(study_name="s", storage=storage)
        while not done.is_set():
            (state,) = [t.state.name for t in study.get_trials(deepcopy=False) if t.number == 0]
            if state != "RUNNING":
                taken.append(state)
                return
            fail_stale_trials(study)  # one worker: trial 0 is the only one running
            time.sleep(0.1)

    thread = threading.Thread(target=other_worker, daemon=True)
    thread.start()
    try:
        run_sweep(path)  # the old code raised here: ValueError('Cannot tell a FAIL trial.')
    finally:
        done.set()
        thread.join(timeout=10)
    assert taken == ["FAIL"]
    trials = open_study(cfg).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2
    (retried,) = [t for t in complete if t.system_attrs.get("failed_trial") == 0]
    assert retried.params == trials[0].params and Path(retried.user_attrs["run_dir"]).name == "0"
    assert "trial 0 was marked failed by another worker" in capsys.readouterr().err


def test_a_retry_whose_first_run_is_still_live_trains_in_its_own_folder(tmp_path, digits_dir, capsys):
    """A trial queued again with its first run's folder (`run_dir`) while the process that ran it still holds
    that folder (stalled, not dead) trains in a folder of its own and leaves the other one alone."""
    import fcntl

    path = write_sweep(tmp_path, digits_dir, n_trials=1, jobs=1)
    run_sweep(path)
    cfg = load_sweep(path)[0]
    first = cfg.sweep_dir / "trials" / "0"
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    (done,) = open_study(cfg).trials
    open_study(cfg).enqueue_trial(done.params, user_attrs={"run_dir": str(first)})
    (cfg.sweep_dir / ".locks").mkdir(exist_ok=True)
    with open(cfg.sweep_dir / ".locks" / "trial-0.lock", "a") as held:  # the stalled process's hold on it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        run_sweep(write_sweep(tmp_path, digits_dir, n_trials=2, jobs=1))
    second = [t for t in open_study(cfg).trials if t.number == 1]
    assert [t.state.name for t in second] == ["COMPLETE"] and second[0].user_attrs["run_dir"].endswith("trials/1")
    assert (cfg.sweep_dir / "trials" / "1" / "model.safetensors").exists()
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before
    assert "trial 1 runs in its own folder" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_preempted_trial_that_another_worker_failed_is_not_queued_twice(tmp_path, digits_dir):
    """put_back leaves a trial already failed and queued again by another worker's heartbeat check as it is."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    from jointspace.preemption import Preempted
    from jointspace.sweep.run import _failed
    from jointspace.sweep.stop import TrialStopped, put_back

    study = open_study(load_sweep(write_sweep(tmp_path, digits_dir))[0])
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    trial.set_user_attr("run_dir", str(tmp_path / "runs" / "s" / "trials" / "0"))
    study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)  # as fail_stale_trials
    RetryHeartbeatStaleTrialCallback(max_retry=3)(study, study._storage.get_trial(trial._trial_id))
    put_back(study, TrialStopped(trial, Preempted("SIGTERM", 2, 6, 1, "step_2")))  # raised before
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "WAITING"]  # one copy queued, by the retry
    assert _failed(study) == 0  # a trial queued again is no failure of its own


def test_two_processes_on_one_sqlite_study_never_run_the_same_trial(tmp_path, digits_dir):
    path = write_sweep(tmp_path, digits_dir, n_trials=4, jobs=2)
    run_sweep(path)

    study = open_study(load_sweep(path)[0])
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 4 <= len(complete) <= 5  # a worker may finish the trial it had started when the count was reached
    folders = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(folders) == len(set(folders))
    for t in complete:
        saved = yaml.safe_load((Path(t.user_attrs["run_dir"]) / "config.yaml").read_text())
        assert saved["train"]["lr"] == pytest.approx(t.params["train.lr"])


POINTS = [{"train.lr": 1e-3}, {"train.lr": 4e-3}]


def _sweep(tmp_path: Path, digits_dir: Path, **fields) -> Path:
    """Two enqueued trials of 2 epochs (6 steps, each logged), two at a time."""
    base_set = yaml.safe_load(write_sweep(tmp_path, digits_dir).read_text())["set"]
    fields = {"n_trials": 2, "jobs": 2, "enqueue": POINTS,
              "set": {**base_set, "train.log_every": 1}, **fields}
    return write_sweep(tmp_path, digits_dir, **fields)


def _steps(run: Path) -> list[int]:
    if not (run / "metrics.jsonl").exists():
        return []
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["step"] for r in rows if r.get("split") == "train"]


def _workers(parent: int) -> list[int]:
    """The sweep's worker processes (spawned children running `spawn_main`)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            pids.append(int(stat.parent.name))
    return pids


def _stop_when_both_train(tmp_path: Path, path: Path, to_worker: bool, steps: int = 6) -> Path:
    """Start the sweep, send SIGTERM (to it, or to one worker alone) once both trials have logged a step;
    check its exit and its one line; returns the trials folder. Each checkpoint write pauses 2 s, so that on a
    loaded machine the first trial cannot finish (6 steps, a checkpoint after 3) before the second one logs."""
    proc = subprocess.Popen([JOINTSPACE, "sweep", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, SLOW_WRITE_ENV: "2"})
    trials, deadline = tmp_path / "runs" / "s" / "trials", time.time() + 180
    while not all(_steps(trials / n) for n in ("0", "1")):
        if proc.poll() is not None or time.time() > deadline:
            err = proc.stderr.read()  # its first error (a worker's) as well as its last lines
            raise AssertionError(f"sweep ended or timed out before both trials logged a step:\n{err[:3000]}\n"
                                 f"[...]\n{err[-2000:]}")
        time.sleep(0.02)
    os.kill(_workers(proc.pid)[0] if to_worker else proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("preempted:")]
    assert len(lines) == 1, err[-3000:]
    assert "stopped by SIGTERM: trial" in lines[0] and lines[0].endswith(f"continue with: jointspace sweep {path}")
    for n in ("0", "1"):  # both stopped part-way, each with a checkpoint to resume from
        assert has_checkpoint(trials / n) and not (trials / n / "model.safetensors").exists(), err[-3000:]
        assert f"trial {n} at step {_steps(trials / n)[-1]} of {steps}" in lines[0]
    return trials


def test_a_preempted_sweep_resumes_its_trials_bitwise_equal_to_uninterrupted_ones(tmp_path, digits_dir):
    path = _sweep(tmp_path, digits_dir)
    trials = _stop_when_both_train(tmp_path, path, to_worker=False)  # the parent passes it on

    again = [JOINTSPACE, "sweep", str(path), "--jobs", "1"]  # one process: fewer imports of torch
    done = subprocess.run(again, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    study = open_study(load_sweep(path)[0])
    by_state = {s: [t for t in study.trials if t.state.name == s] for s in ("COMPLETE", "FAIL", "WAITING")}
    assert [t.number for t in by_state["FAIL"]] == [0, 1] and not by_state["WAITING"]
    assert all("preempted" in t.user_attrs for t in by_state["FAIL"])
    assert [t.number for t in by_state["COMPLETE"]] == [2, 3]  # queued again (in the order they stopped) ...
    assert sorted((t.user_attrs["continues"], t.user_attrs["run_dir"]) for t in by_state["COMPLETE"]) == [
        (0, str(trials / "0")), (1, str(trials / "1"))]  # ... and gone on in their folders
    assert sorted(p.name for p in trials.iterdir()) == ["0", "1"]
    for n in ("0", "1"):
        assert _steps(trials / n) == list(range(1, 7))  # every step once ...
        assert json.loads((trials / n / "train_summary.json").read_text())["epochs_run"] < 2  # ... resumed

    raw = {**yaml.safe_load((trials / "0" / "config.yaml").read_text()), "output_dir": str(tmp_path / "ref")}
    straight = get_task(raw["task"]).train(config_for(raw, "trial 0 uninterrupted"), show_progress=False)
    a = load_file(str(trials / "0" / "model.safetensors"))
    b = load_file(str(straight / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_to_one_worker_alone_stops_the_whole_sweep(tmp_path, digits_dir):
    """The worker stops its trial and tells the sweep, which passes the signal on to the other worker."""
    base_set = yaml.safe_load(_sweep(tmp_path, digits_dir).read_text())["set"]
    # 18 steps: time to pass it on, even where the other trial started many steps late on a loaded machine
    # (with 9, a clean-clone `make test` once saw the first trial finish before the signal reached it)
    path = _sweep(tmp_path, digits_dir, set={**base_set, "train.epochs": 6})
    _stop_when_both_train(tmp_path, path, to_worker=True, steps=18)


def test_a_watch_inside_another_starts_with_what_it_heard_and_hands_back_its_own():
    with PreemptWatch(["SIGUSR1"]) as outer:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.01)  # Python runs the handler between bytecodes of the main thread
        with PreemptWatch(["SIGUSR1"]) as inner:
            assert inner.requested == "SIGUSR1"
    with PreemptWatch(["SIGUSR1"]) as outer:
        with PreemptWatch(["SIGUSR1"]) as inner:
            assert inner.requested is None
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.01)
        assert inner.requested == outer.requested == "SIGUSR1"
