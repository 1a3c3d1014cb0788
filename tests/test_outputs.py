"""The one output guard: no command replaces a folder it did not write, the working directory, its source
or a folder holding them; its own kind of output only with --overwrite; a failed write leaves the old one."""

from __future__ import annotations

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.data.builtin import synthesize
from jointspace.data.shards import write_dataset
from jointspace.outputs import OutputError
from jointspace.runs import WEIGHTS

runner = CliRunner()


def one_error(result, *words: str) -> str:
    """The command failed with exit 2 and exactly one `error:` line on stderr holding `words`."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def user_folder(path):
    """A folder of the user's: a file and a subfolder with a file."""
    (path / "sub").mkdir(parents=True)
    (path / "thesis.txt").write_text("years of work")
    (path / "sub" / "results.csv").write_text("a,b\n1,2\n")
    return path


def intact(path) -> bool:
    return (path / "thesis.txt").read_text() == "years of work" and (path / "sub" / "results.csv").exists()


TINY_RUN = """
name: {name}
output_dir: {out}
tracker: none
data: {{path: {data}, modalities: [image, text], image_size: 16}}
model:
  embed_dim: 8
  towers:
    image: {{name: cnn, params: {{channels: [4, 8]}}}}
    text: {{name: transformer, params: {{width: 16, layers: 1, heads: 2}}}}
train: {{epochs: 1, batch_size: 20, warmup_steps: 0}}
eval: {{linear_probe: false}}
"""


@pytest.fixture(scope="module")
def tiny_config(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    path = out / "tiny.yaml"
    path.write_text(TINY_RUN.format(name="tiny", out=out / "runs", data=digits_dir))
    return path


@pytest.fixture(scope="module")
def tiny_run(tiny_config):
    result = runner.invoke(app, ["train", str(tiny_config)])
    assert result.exit_code == 0, result.output
    return tiny_config.parent / "runs" / "tiny"


def test_data_synth_keeps_a_users_folder_the_working_directory_and_asks_for_overwrite(tmp_path, monkeypatch):
    mine = user_folder(tmp_path / "precious2")
    one_error(runner.invoke(app, ["data", "synth", "digits", "--out", str(mine), "--n", "9"]), "not a shard folder")
    assert intact(mine)
    one_error(runner.invoke(app, ["data", "synth", "digits", "--out", str(mine), "--n", "9", "--overwrite"]),
              "not a shard folder")
    assert intact(mine)
    monkeypatch.chdir(mine)
    one_error(runner.invoke(app, ["data", "synth", "digits", "--out", ".", "--n", "9"]), "working directory")
    one_error(runner.invoke(app, ["data", "synth", "digits", "--out", "..", "--n", "9"]), "working directory")
    assert intact(mine)
    shards = tmp_path / "d"
    assert runner.invoke(app, ["data", "synth", "digits", "--out", str(shards), "--n", "9"]).exit_code == 0
    one_error(runner.invoke(app, ["data", "synth", "digits", "--out", str(shards), "--n", "30"]), "--overwrite")
    assert json.loads((shards / "dataset.json").read_text())["synth"]["n"] == 9
    assert runner.invoke(app, ["data", "synth", "digits", "--out", str(shards), "--n", "30", "--overwrite"]).exit_code == 0
    assert json.loads((shards / "dataset.json").read_text())["synth"]["n"] == 30
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.tmp")]


def test_a_failed_write_leaves_the_old_shard_folder_whole(tmp_path):
    root = tmp_path / "ds"
    synthesize("digits", root, n=9)
    before = (root / "dataset.json").read_text()

    def broken():
        yield {"key": "a", "image": None, "label": 0}
        raise RuntimeError("generator failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        write_dataset(root, {"train": broken()}, {"image": "image"}, ["a"], overwrite=True)
    assert (root / "dataset.json").read_text() == before and (root / "train").is_dir()
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ds.lock"] == ["ds"]


def test_data_subsample_never_replaces_its_source_or_a_folder_holding_it(tmp_path):
    data = tmp_path / "data"
    synthesize("digits", data / "digits", n=30)
    (data / "other").mkdir()
    (data / "other" / "important.txt").write_text("keep")
    for out in (data, data / "digits"):
        one_error(runner.invoke(app, ["data", "subsample", str(data / "digits"), "--out", str(out), "--keep",
                                      "three=0.5", "--overwrite"]), "source")
    mine = user_folder(tmp_path / "mine")
    one_error(runner.invoke(app, ["data", "subsample", str(data / "digits"), "--out", str(mine), "--keep",
                                  "three=0.5"]), "not a shard folder")
    assert intact(mine) and (data / "other" / "important.txt").read_text() == "keep"
    assert (data / "digits" / "dataset.json").exists()


def test_data_pack_keeps_a_users_folder(tmp_path):
    import numpy as np
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "cls" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), i * 40, np.uint8)).save(tmp_path / "cls" / c / f"{i}.png")
    mine = user_folder(tmp_path / "mine")
    one_error(runner.invoke(app, ["data", "pack", str(tmp_path / "cls"), "--out", str(mine), "--overwrite"]),
              "not a shard folder")
    assert intact(mine)
    one_error(runner.invoke(app, ["data", "pack", str(tmp_path / "cls"), "--out", str(tmp_path)]), "source")
    one_error(runner.invoke(app, ["data", "pack", str(tmp_path / "cls"), "--out", str(tmp_path / "cls" / "packed")]),
              "inside the class folders")


def test_train_overwrite_replaces_only_a_run_and_a_failed_replacement_keeps_the_old_one(tiny_config, tmp_path):
    mine = user_folder(tmp_path / "runs" / "mine")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config.read_text().replace("name: tiny", "name: mine").replace(
        f"output_dir: {tiny_config.parent / 'runs'}", f"output_dir: {tmp_path / 'runs'}"))
    one_error(runner.invoke(app, ["train", str(cfg), "--overwrite"]), "not a run folder")
    assert intact(mine)
    cfg.write_text(cfg.read_text().replace("name: mine", "name: r"))
    assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
    run = tmp_path / "runs" / "r"
    (run / "notes.txt").write_text("my notes")
    weights = (run / WEIGHTS).read_bytes()
    one_error(runner.invoke(app, ["train", str(cfg)]), "--overwrite")
    # a replacement that fails before its first checkpoint puts the old run back, notes and all
    one_error(runner.invoke(app, ["train", str(cfg), "--overwrite", "--set", "data.modalities=[image, nope]"]),
              "nope")
    assert (run / "notes.txt").read_text() == "my notes" and (run / WEIGHTS).read_bytes() == weights
    assert runner.invoke(app, ["train", str(cfg), "--overwrite", "--set", "seed=3"]).exit_code == 0
    assert not (run / "notes.txt").exists() and (run / WEIGHTS).read_bytes() != weights
    assert sorted(p.name for p in run.parent.iterdir()) == ["mine", "r"]


def test_demo_refuses_an_existing_run_without_overwrite(digits_dir, tmp_path):
    run = tmp_path / "runs" / "digits"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: digits\n")
    (run / "run.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    one_error(runner.invoke(app, ["demo", "--output-dir", str(tmp_path / "runs"), "--data-dir", str(digits_dir)]),
              "--overwrite")
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_of_a_finished_run_changes_nothing(tiny_config, tiny_run):
    files = {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()}
    result = runner.invoke(app, ["train", str(tiny_config), "--resume"])
    assert result.exit_code == 0 and "finished" in result.stderr, result.output
    assert {p.name: p.read_bytes() for p in tiny_run.iterdir() if p.is_file()} == files


def test_embed_keeps_a_users_folder_and_its_run(tiny_run, digits_dir, tmp_path):
    mine = user_folder(tmp_path / "mine")
    one_error(runner.invoke(app, ["embed", str(tiny_run), str(digits_dir), "--out", str(mine), "--overwrite"]),
              "not an embeddings folder")
    assert intact(mine)
    one_error(runner.invoke(app, ["embed", str(tiny_run), str(digits_dir), "--out", str(tiny_run.parent)]),
              "source")
    out = tmp_path / "emb"
    assert runner.invoke(app, ["embed", str(tiny_run), str(digits_dir), "--out", str(out)]).exit_code == 0
    one_error(runner.invoke(app, ["embed", str(tiny_run), str(digits_dir), "--out", str(out)]), "--overwrite")
    assert runner.invoke(app, ["embed", str(tiny_run), str(digits_dir), "--out", str(out), "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["image.npy", "keys.npy", "labels.npy", "meta.json", "text.npy"]


def test_export_keeps_a_users_folder(tiny_run, tmp_path):
    mine = user_folder(tmp_path / "mine")
    one_error(runner.invoke(app, ["export", str(tiny_run), "--format", "hf", "--out", str(mine), "--overwrite"]),
              "not an export")
    assert intact(mine)


def test_outputs_follow_the_umask(tmp_path, tiny_config):
    old = os.umask(0o022)
    try:
        cfg = tmp_path / "u.yaml"
        cfg.write_text(tiny_config.read_text().replace("name: tiny", "name: u").replace(
            f"output_dir: {tiny_config.parent / 'runs'}", f"output_dir: {tmp_path / 'runs'}"))
        assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
        tiny_run = tmp_path / "runs" / "u"
        synthesize("digits", tmp_path / "ds", n=9)
        mode = stat.S_IMODE((tmp_path / "ds").stat().st_mode)
        assert mode == 0o755, oct(mode)
        assert stat.S_IMODE((tmp_path / "ds" / "dataset.json").stat().st_mode) == 0o644
        assert stat.S_IMODE((tiny_run / WEIGHTS).stat().st_mode) == 0o644
        assert stat.S_IMODE((tiny_run / "checkpoints" / "latest.json").stat().st_mode) == 0o644
        ckpt = next(p for p in (tiny_run / "checkpoints").iterdir() if p.is_dir())
        assert stat.S_IMODE(ckpt.stat().st_mode) == 0o755
    finally:
        os.umask(old)


def test_the_guard_itself(tmp_path, monkeypatch):
    from jointspace.data.shards import SHARD_FOLDER

    assert SHARD_FOLDER.check(tmp_path / "new") is False
    (tmp_path / "empty").mkdir()
    assert SHARD_FOLDER.check(tmp_path / "empty") is False
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        SHARD_FOLDER.check(tmp_path / "file", overwrite=True)
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(OutputError, match="symbolic link"):
        SHARD_FOLDER.check(tmp_path / "link", overwrite=True)
    synthesize("digits", tmp_path / "ds", n=9)
    assert SHARD_FOLDER.check(tmp_path / "ds", overwrite=True) is True
    monkeypatch.chdir(tmp_path / "ds")
    with pytest.raises(OutputError, match="working directory"):
        SHARD_FOLDER.check(tmp_path / "ds", overwrite=True)


def test_a_file_of_the_same_name_from_another_tool_is_not_an_output(tmp_path):
    """nnU-Net datasets have a dataset.json too: not a shard folder, not even with --overwrite."""
    nn = tmp_path / "nn"
    nn.mkdir()
    (nn / "dataset.json").write_text('{"name": "Task01", "labels": {"0": "background"}}')
    (nn / "thesis.txt").write_text("years of work")
    one_error(runner.invoke(app, ["data", "synth", "digits", "--out", str(nn), "--n", "9", "--overwrite"]),
              "not a shard folder")
    assert (nn / "thesis.txt").exists()


def test_parquet_embeddings_are_replaced_with_overwrite(tiny_run, digits_dir, tmp_path):
    out = tmp_path / "embp"
    args = ["embed", str(tiny_run), str(digits_dir), "--out", str(out), "--format", "parquet"]
    assert runner.invoke(app, args).exit_code == 0
    one_error(runner.invoke(app, args), "--overwrite")
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_an_earlier_run_set_aside_never_replaces_a_users_folder(tiny_config, tmp_path):
    """A hard-killed replacement left `.r.replaced-*`; a user's folder now at runs/r is not deleted for it."""
    runs = tmp_path / "runs"
    aside = runs / ".r.replaced-0000"
    aside.mkdir(parents=True)
    (aside / "config.yaml").write_text("name: r\n")
    (aside / "run.json").write_text("{}")
    mine = user_folder(runs / "r")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config.read_text().replace("name: tiny", "name: r").replace(
        f"output_dir: {tiny_config.parent / 'runs'}", f"output_dir: {runs}"))
    one_error(runner.invoke(app, ["train", str(cfg), "--overwrite"]), "set aside")
    assert intact(mine) and (aside / "run.json").exists()


def test_a_pipeline_replaced_with_overwrite_comes_back_when_the_new_one_fails(tiny_config, tmp_path):
    stage = tiny_config.read_text()
    (tmp_path / "stage.yaml").write_text(stage)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"task: pipeline\nname: p\noutput_dir: {tmp_path / 'runs'}\n"
                    "stages:\n  - {name: joint, config: stage.yaml}\n")
    assert runner.invoke(app, ["train", str(pipe)]).exit_code == 0
    root = tmp_path / "runs" / "p"
    (root / "joint" / "notes.txt").write_text("mine")
    one_error(runner.invoke(app, ["train", str(pipe), "--overwrite", "--set", "data.modalities=[image, nope]"]),
              "nope")
    assert (root / "joint" / "notes.txt").read_text() == "mine" and (root / "done.json").exists()
    assert sorted(p.name for p in root.parent.iterdir()) == ["p"]


def test_error_text_is_never_read_as_markup(tmp_path):
    line = one_error(runner.invoke(app, ["data", "inspect", str(tmp_path / "runs[bold]x[/x]")]))
    assert "runs[bold]x[/x]" in line
