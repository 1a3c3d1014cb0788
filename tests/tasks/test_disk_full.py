"""A full disk (issue 27): on a real small filesystem (a tmpfs mounted by the test; skipped where mounting
is not allowed), a checkpoint, the final weights or an `embed` output that cannot be written gives one
line with the path, the bytes needed and free, and leaves nothing half-written; older checkpoints make
room before a new one is written, so a run on a disk that holds two checkpoints (not three) goes on,
resumes, and ends with the weights of a run on a roomy disk."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jointspace.outputs import DiskFull
from jointspace.tasks.contrastive import train


@pytest.fixture
def small_disk(tmp_path):
    mounted: list[Path] = []

    def mount(n_bytes: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={n_bytes}", "tmpfs", str(folder)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); these tests need root, as CI has")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


STEPS = ["train.checkpoint_every_steps=2", "train.keep_checkpoints=2", "train.log_every=1"]


def test_a_disk_for_two_checkpoints_makes_room_and_resumes_to_the_same_weights(tiny_cfg, small_disk, tmp_path):
    roomy = train(tiny_cfg(*STEPS, name="roomy", epochs=3), show_progress=False)
    one = max(_size(p) for p in (roomy / "checkpoints").iterdir() if p.is_dir())
    disk = small_disk(int(2.6 * one) + _size(roomy) - _size(roomy / "checkpoints") + 256 * 1024)
    cfg = tiny_cfg(*STEPS, f"output_dir={disk}", name="tight", epochs=3)
    run = train(cfg, show_progress=False)  # without make_room the third checkpoint does not fit
    kept = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert len(kept) <= 2 and not _leftovers(run)
    (run / "model.safetensors").unlink()  # resumed from its last checkpoint on the same tight disk
    (run / "checkpoints" / "latest.json").write_text(json.dumps({"name": kept[0]}))
    run = train(cfg, resume=True, show_progress=False)
    a, b = load_file(str(roomy / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_disk_too_small_for_one_checkpoint_is_one_line_and_leaves_nothing(tiny_cfg, small_disk, capsys):
    from typer.testing import CliRunner

    from jointspace.cli import app

    disk = small_disk(1_500_000)
    cfg = tiny_cfg(*STEPS, f"output_dir={disk}", name="full")
    with pytest.raises(DiskFull, match=r"needs about [\d.]+ MB, [\d.]+ MB free") as err:
        train(cfg, show_progress=False)
    assert str(cfg.run_dir / "checkpoints") in str(err.value) and "\n" not in str(err.value)
    assert not _leftovers(disk)
    result = CliRunner().invoke(app, ["embed", str(cfg.run_dir), "--out", str(disk / "emb")])
    assert result.exit_code == 2 and not (disk / "emb").exists() and not _leftovers(disk)
