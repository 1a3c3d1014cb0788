"""`jointspace sweep`: checked before any trial, conditional keys, pruning, kill and resume, two
processes on one SQLite study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from jointspace.config import ConfigError
from jointspace.sweep import run_sweep
from jointspace.sweep.config import Param, load_sweep
from jointspace.sweep.run import open_study
from jointspace.sweep.space import suggest

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
    path = write_sweep(tmp_path, digits_dir, n_trials=3)
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
