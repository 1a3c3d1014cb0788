"""Every failure a user can cause is one line on stderr, exit 2, naming the file or field; and the surprising
results of issue 24 behave as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.data.builtin import synthesize

from .test_outputs import TINY_RUN, one_error

runner = CliRunner()


def _class_folder(root, n=6):
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), i * 30, np.uint8)).save(root / c / f"{i}.png")
    return root


def test_a_symlink_loop_in_a_class_folder_is_a_bad_row_not_a_traceback(tmp_path):
    root = _class_folder(tmp_path / "cls")
    (root / "a" / "loop.png").symlink_to("loop.png")
    one_error(runner.invoke(app, ["data", "pack", str(root), "--out", str(tmp_path / "out")]), "loop.png",
              "max_bad_fraction")
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, ["data", "pack", str(root), "--out", str(tmp_path / "out"), "--max-bad-fraction", "0.2"])
    assert result.exit_code == 0 and "skipped 1 bad rows" in result.stdout and "loop.png" in result.stdout


def test_a_picture_over_the_readers_limit_is_refused_at_pack_time(tmp_path):
    root = _class_folder(tmp_path / "cls")
    Image.new("L", (4097, 4097)).save(root / "b" / "big.png")
    result = runner.invoke(app, ["data", "pack", str(root), "--out", str(tmp_path / "out"), "--max-bad-fraction", "0.2"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad rows" in result.stdout and "4097x4097" in result.stdout
    assert "DecompressionBomb" not in result.stderr
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["skipped"] == 1 and "big.png" in info["skipped_rows"][0]


@pytest.mark.parametrize("override", ["data.image_size=0", "data.image_size=-3", "data.context_length=0"])
def test_sizes_below_one_name_the_field(tmp_path, digits_dir, override):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_RUN.format(name="x", out=tmp_path / "runs", data=digits_dir))
    one_error(runner.invoke(app, ["train", str(cfg), "--set", override]), override.split("=")[0])
    assert not (tmp_path / "runs").exists()


def test_errors_go_to_stderr_only(tmp_path):
    result = runner.invoke(app, ["data", "inspect", str(tmp_path / "nonexistent")])
    one_error(result, "nonexistent", "no such")
    assert result.stdout == ""


def test_a_corrupt_dataset_json_is_named(tmp_path):
    synthesize("digits", tmp_path / "ds", n=9)
    (tmp_path / "ds" / "dataset.json").write_text("{not json")
    one_error(runner.invoke(app, ["data", "inspect", str(tmp_path / "ds")]), "dataset.json")


def test_an_empty_config_file_is_refused(tmp_path):
    (tmp_path / "empty.yaml").write_text("\n# nothing\n")
    one_error(runner.invoke(app, ["train", str(tmp_path / "empty.yaml")]), "empty.yaml", "empty")
    assert not (tmp_path / "runs").exists()


def test_a_synthesised_folder_of_another_size_is_not_reused(tmp_path):
    data = tmp_path / "digits"
    synthesize("digits", data, n=30)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(TINY_RUN.format(name="x", out=tmp_path / "runs", data=data))
    one_error(runner.invoke(app, ["train", str(cfg), "--set", "data.synth=digits", "--set", "data.synth_size=300"]),
              "synth_size", "n=30")


def test_set_and_tracker_reach_every_stage_of_a_pipeline(tmp_path, digits_dir):
    stage = TINY_RUN.format(name="s", out=tmp_path, data=digits_dir)
    (tmp_path / "stage.yaml").write_text(stage)
    (tmp_path / "p.yaml").write_text(f"task: pipeline\nname: p\noutput_dir: {tmp_path / 'runs'}\n"
                                     "stages:\n  - {name: joint, config: stage.yaml}\n")
    result = runner.invoke(app, ["train", str(tmp_path / "p.yaml"), "--set", "train.batch_size=10",
                                 "--tracker", "tensorboard", "--set", "name=q"])
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "runs" / "q" / "joint" / "config.yaml").read_text()
    assert "batch_size: 10" in saved and "tracker: tensorboard" in saved
    assert any((tmp_path / "runs" / "q" / "joint" / "tb").iterdir())
    one_error(runner.invoke(app, ["train", str(tmp_path / "p.yaml"), "--set", "train.bacth_size=10"]),
              "bacth_size")
