import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

from jointspace.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from jointspace.engine.optim import warmup_cosine


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))


def test_round_trip_model_optimizer_rng(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    opt.step()
    torch.manual_seed(123)
    save_checkpoint(tmp_path, "a", model, opt, {"epoch": 1, "step": 1})
    expected_next = torch.rand(3)
    other = _model()
    other_opt = torch.optim.AdamW(other.parameters(), lr=0.1)
    torch.manual_seed(999)
    state = load_checkpoint(latest_checkpoint(tmp_path), other, other_opt)
    assert state["epoch"] == 1
    torch.testing.assert_close(torch.rand(3), expected_next)  # RNG restored
    for (k, v), (_, w) in zip(model.state_dict().items(), other.state_dict().items()):
        torch.testing.assert_close(v, w, msg=k)
    s1, s2 = opt.state_dict(), other_opt.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for pid in s1["state"]:
        for name in s1["state"][pid]:
            torch.testing.assert_close(s1["state"][pid][name], s2["state"][pid][name])


def test_keeps_newest_and_points_latest(tmp_path):
    model = _model()
    for i in range(4):
        save_checkpoint(tmp_path, f"epoch_{i:04d}", model, None, {"epoch": i}, keep=2)
        time.sleep(0.01)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["epoch_0002", "epoch_0003"]
    assert latest_checkpoint(tmp_path).name == "epoch_0003"


WRITER = textwrap.dedent("""
    import sys, torch
    from jointspace.engine.checkpoint import save_checkpoint
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 512)).sum().backward(); opt.step()
    print("ready", flush=True)
    i = 0
    while True:
        save_checkpoint(__import__("pathlib").Path(sys.argv[1]), f"step_{i:05d}", model, opt, {"step": i}, keep=2)
        i += 1
""")


def test_kill_9_during_writes_never_breaks_latest(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    ckpt = tmp_path / "ckpt"
    model = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])
    for delay in (0.05, 0.13, 0.29, 0.41, 0.67):
        proc = subprocess.Popen([sys.executable, str(script), str(ckpt)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        latest = latest_checkpoint(ckpt)
        if latest is not None:  # nothing finished yet is fine; a broken one is not
            state = load_checkpoint(latest, model, restore_rng=False)
            assert f"step_{state['step']:05d}" == latest.name


class _Killed(BaseException):
    pass


def test_a_crash_while_a_checkpoint_of_the_same_name_is_replaced_leaves_the_old_one(tmp_path, monkeypatch):
    model = _model()
    save_checkpoint(tmp_path, "a", model, None, {"step": 1})
    real = os.replace

    def killed_after_moving_aside(src, dst):
        if ".tmp-" in str(src):  # the new one moving in: the process dies first
            raise _Killed
        real(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_moving_aside)
    try:
        save_checkpoint(tmp_path, "a", model, None, {"step": 2})
    except _Killed:
        pass
    monkeypatch.setattr(os, "replace", real)
    assert not (tmp_path / "a").exists()  # latest.json names a folder that is aside
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / "a" and load_checkpoint(latest, _model(), restore_rng=False)["step"] == 1
    save_checkpoint(tmp_path, "a", model, None, {"step": 3})
    assert load_checkpoint(latest_checkpoint(tmp_path), _model(), restore_rng=False)["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "latest.json"]


def test_warmup_cosine_shape():
    assert warmup_cosine(0, 10, 110) == 0.1
    assert warmup_cosine(9, 10, 110) == 1.0
    assert abs(warmup_cosine(60, 10, 110) - 0.5) < 1e-12
    assert warmup_cosine(110, 10, 110) == 0.0
    assert warmup_cosine(110, 10, 110, min_lr_ratio=0.1) == 0.1


def test_tracker_resume_cuts_the_log_and_survives_a_torn_last_line(tmp_path):
    import json as _json

    from jointspace.engine.tracking import Tracker

    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(_json.dumps({"step": s, "split": "train", "loss": 1.0}) + "\n" for s in range(1, 6))
                   + '{"step": 6, "spl')  # killed while writing step 6
    t = Tracker(tmp_path, "none")
    t.keep_until(4)
    assert [_json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4]
