"""Crash tests: `jointspace train` killed with SIGKILL at random steps and once inside a checkpoint
write, resumed with --resume each time, ends with exactly the weights of an uninterrupted run (a
contrastive, a classifier and a diffusion run). The checkpoint write is only slowed (an environment
hook) to widen the window the kill lands in.

Preemption: SIGTERM or SIGUSR1 (what Slurm, Kubernetes and spot machines send before a kill) stops the
run at the next step with a mid-epoch checkpoint, one line naming it and the command that resumes, and
exit code 75; a second signal during that save changes nothing. Stopped at three random steps and
resumed each time, the run ends with exactly the weights of an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jointspace.cli import builtin_config
from jointspace.engine.checkpoint import SLOW_WRITE_ENV
from jointspace.preemption import PREEMPTED_EXIT

JOINTSPACE = str(Path(sys.executable).parent / "jointspace")
EXAMPLES = Path(__file__).parents[2] / "examples"


def _steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"split": "train"' in line for line in path.read_text().splitlines())


def _writing(run: Path) -> bool:
    """A checkpoint is being written (its staging folder exists)."""
    ckpts = run / "checkpoints"
    return ckpts.exists() and any(p.name.startswith(".") and ".tmp-" in p.name for p in ckpts.iterdir())


def _start(cmd: list[str], slow: bool) -> subprocess.Popen:
    env = {**os.environ, SLOW_WRITE_ENV: "3"} if slow else dict(os.environ)
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 180) -> bool:
    """SIGKILL `proc` once `ready()` holds; False if it finished first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.02)
    proc.kill()
    raise TimeoutError("the run neither reached the kill point nor finished")


def crash_and_resume(config: Path, overrides: list[str], run: Path, total_steps: int, seed: int) -> Path:
    """Kill the run at two random steps and inside one checkpoint write, resuming each time."""
    base = [JOINTSPACE, "train", str(config)] + [a for o in overrides for a in ("--set", o)]
    rng = random.Random(seed)
    targets = sorted(rng.sample(range(1, total_steps - 1), 2))
    kills = [("step", targets[0]), ("checkpoint", None), ("step", targets[1])]
    killed = 0
    for how, target in kills:
        proc = _start(base + (["--resume"] if killed else []), slow=how == "checkpoint")
        ready = (lambda t=target: _steps_logged(run) >= t) if how == "step" else (lambda: _writing(run))
        killed += _kill_when(proc, ready)
    done = subprocess.run(base + ["--resume"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert killed == len(kills), f"only {killed} of {len(kills)} kills landed before the run finished"
    return run


def assert_exactly_equal(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _reference(config: Path, overrides: list[str]) -> None:
    cmd = [JOINTSPACE, "train", str(config)] + [a for o in overrides for a in ("--set", o)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def _train_rows(run: Path) -> list[int]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("task", ["contrastive", "classify", "diffusion"])
def test_sigkill_anywhere_then_resume_equals_an_uninterrupted_run(task, digits_dir, shapes_dir, tmp_path):
    out = tmp_path / "runs"
    common = {
        "contrastive": (builtin_config("digits"), [
            f"output_dir={out}", f"data.path={digits_dir}", "data.synth=null", "train.epochs=4",
            "train.batch_size=16", "train.warmup_steps=2", "train.log_every=1", "train.checkpoint_every_steps=2",
            "train.keep_checkpoints=3", "model.embed_dim=16", "model.towers.image.params.channels=[8, 16]",
            "model.towers.text.params.width=16", "model.towers.text.params.layers=1",
            "model.towers.audio.params.channels=[16, 16]", "eval.linear_probe=false", "tracker=none"], 12),
        "classify": (EXAMPLES / "shapes_fusion.yaml", [
            f"output_dir={out}", f"data.path={shapes_dir}", "data.synth=null", "data.modalities=[image, lidar]",
            "data.image_size=16", "model.embed_dim=8", "model.towers.image.params.channels=[4, 8]",
            "model.towers.lidar.params.channels=[4, 8]", "train.epochs=4", "train.batch_size=16",
            "train.warmup_steps=0", "train.log_every=1", "train.checkpoint_every_steps=2", "tracker=none"], 12),
        "diffusion": (EXAMPLES / "augment_digits.yaml", [
            f"output_dir={out}", f"data.path={digits_dir}", "data.image_size=8", "model.channels=[8, 16]",
            "model.norm_groups=4", "train.steps=16", "train.batch_size=16", "train.warmup_steps=2",
            "train.log_every=1", "train.checkpoint_every=2", "train.keep_checkpoints=3", "sample.steps=4",
            "sample.n_per_class=3", "tracker=none"], 16),
    }
    config, overrides, steps = common[task]
    _reference(config, overrides + ["name=straight"])
    crashed = crash_and_resume(config, overrides + ["name=crashed"], out / "crashed", steps, seed=len(task))
    assert_exactly_equal(out / "straight", crashed)
    assert _train_rows(crashed) == _train_rows(out / "straight")  # every step logged once


def _signal_when(proc: subprocess.Popen, run: Path, step: int, signals: list[int], timeout: float = 180) -> str:
    """Send `signals[0]` once `step` steps are logged and this process has logged one (and, with a second
    one, that one while the stop's checkpoint is being written); returns the process's stderr at its exit."""
    deadline, start = time.time() + timeout, _steps_logged(run)  # a resumed run's log holds earlier steps
    while _steps_logged(run) < max(step, start + 1):  # a step of this process: it is inside the engine
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "the run did not reach the step"
        time.sleep(0.02)
    os.kill(proc.pid, signals[0])
    for sig in signals[1:]:
        while not _writing(run) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=timeout)
    return err


def test_sigterm_at_three_random_steps_then_resume_equals_an_uninterrupted_run(digits_dir, tmp_path):
    out = tmp_path / "runs"
    overrides = [f"output_dir={out}", f"data.path={digits_dir}", "data.synth=null", "train.epochs=4",
                 "train.batch_size=16", "train.warmup_steps=2", "train.log_every=1", "train.keep_checkpoints=3",
                 "model.embed_dim=16", "model.towers.image.params.channels=[8, 16]",
                 "model.towers.text.params.width=16", "model.towers.text.params.layers=1",
                 "model.towers.audio.params.channels=[16, 16]", "eval.linear_probe=false", "tracker=none"]
    config = builtin_config("digits")
    _reference(config, overrides + ["name=straight"])
    base = [JOINTSPACE, "train", str(config)] + [a for o in overrides + ["name=stopped"] for a in ("--set", o)]
    run = out / "stopped"
    targets = sorted(random.Random(7).sample(range(1, 11), 3))  # of 12 steps
    stops = [[signal.SIGTERM], [signal.SIGUSR1], [signal.SIGTERM, signal.SIGTERM]]  # the last: twice
    for i, (target, sigs) in enumerate(zip(targets, stops, strict=True)):
        env = {**os.environ, SLOW_WRITE_ENV: "2"} if len(sigs) > 1 else dict(os.environ)
        proc = subprocess.Popen(base + (["--resume"] if i else []), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
        err = _signal_when(proc, run, target, sigs)
        assert proc.returncode == PREEMPTED_EXIT, err[-2000:]
        line = [x for x in err.splitlines() if x.startswith("preempted:")]
        name = signal.Signals(sigs[0]).name
        assert len(line) == 1 and f"stopped by {name} at step" in line[0] and line[0].endswith("--resume"), err
        checkpoint = Path(line[0].split("checkpoint ", 1)[1].split(";", 1)[0])
        assert checkpoint.is_dir() and (checkpoint / "model.safetensors").exists()
    done = subprocess.run(base + ["--resume"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_exactly_equal(out / "straight", run)
    assert _train_rows(run) == _train_rows(out / "straight")  # every step logged once
