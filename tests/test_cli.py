"""End to end through the command line on tiny data."""

import json

from typer.testing import CliRunner

from jointspace.cli import app

runner = CliRunner()


def test_synth_train_eval_report(tmp_path, digits_dir):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        f"""
name: cli
output_dir: {tmp_path / "runs"}
tracker: tensorboard
data: {{path: {digits_dir}, modalities: [image, text, audio], image_size: 16}}
model:
  embed_dim: 16
  towers:
    image: {{name: cnn, params: {{channels: [8, 16]}}}}
    text: {{name: transformer, params: {{width: 16, layers: 1, heads: 2}}}}
    audio: {{name: frames_cnn, params: {{channels: [16, 16]}}}}
loss: {{positives: label, anchor: image}}
train: {{epochs: 2, batch_size: 16, warmup_steps: 2, log_every: 1}}
"""
    )
    result = runner.invoke(app, ["train", str(cfg), "--set", "train.lr=0.003"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "cli"
    assert (run / "model.safetensors").exists() and any((run / "tb").iterdir())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert sum(x["split"] == "val" for x in lines) == 2

    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n_samples"] == 60 and len(ev["retrieval"]) == 6
    assert f"{ev['retrieval']['image->text']['R@1']:.3f}" in result.output
    assert set(ev["zero_shot"]) == {"image", "audio"} and set(ev["linear_probe"]) == {"image", "text", "audio"}

    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    html = (run / "report.html").read_text()
    assert "image-&gt;text" in html or "image->text" in html
    assert html.count("data:image/png;base64") >= 4


def test_data_synth_and_errors(tmp_path):
    result = runner.invoke(app, ["data", "synth", "digits", "--out", str(tmp_path / "d"), "--n", "30"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d" / "dataset.json").read_text())["splits"]["test"]["n_samples"] == 10
    result = runner.invoke(app, ["data", "synth", "mnist", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "unknown built-in dataset" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 1\n  bacth_size: 4\n")
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "train.bacth_size: unknown field" in result.output
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a jointspace run" in result.output


def test_one_train_verb_for_every_task_and_run_verbs_that_know_the_task(tmp_path, shapes_dir):
    """`train CONFIG` picks the task from `task:`; --set/--resume/--overwrite/--tracker work for it; run
    verbs refuse a task they do not support with one clear line (exit 2)."""
    cfg = tmp_path / "clf.yaml"
    cfg.write_text(f"""
task: classify
name: clf
output_dir: {tmp_path / "runs"}
data: {{path: {shapes_dir}, modalities: [image, lidar], image_size: 16}}
model:
  embed_dim: 8
  towers:
    image: {{name: cnn, params: {{channels: [4, 8]}}}}
    lidar: {{name: range_cnn, params: {{channels: [4, 8]}}}}
fusion: {{strategy: late}}
train: {{epochs: 2, batch_size: 16, warmup_steps: 0}}
""")
    result = runner.invoke(app, ["train", str(cfg), "--tracker", "none", "--set", "train.lr=0.003"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "clf"
    assert json.loads((run / "run.json").read_text())["task"] == "classify" and "precision" in result.output
    assert not (run / "tb").exists()  # --tracker none
    result = runner.invoke(app, ["train", str(cfg)])
    assert result.exit_code == 2 and "--resume" in result.output and "--overwrite" in result.output
    result = runner.invoke(app, ["train", str(cfg), "--resume", "--tracker", "none"])  # finished: nothing to do
    assert result.exit_code == 0, result.output
    for verb in (["eval", str(run)], ["embed", str(run), str(shapes_dir), "--out", str(tmp_path / "e")],
                 ["report", str(run)], ["index", "build", str(run), str(shapes_dir), "--out", str(tmp_path / "i")]):
        result = runner.invoke(app, verb)
        out = " ".join(result.output.split())
        assert result.exit_code == 2 and "is a classify run" in out and "contrastive" in out, (verb, result.output)
    result = runner.invoke(app, ["train", str(cfg), "--set", "task=segment"])
    assert result.exit_code == 2 and "task" in result.output


def test_towers_lists_kinds_and_towers():
    result = runner.invoke(app, ["towers"])
    assert result.exit_code == 0, result.output
    for word in ("points", "pointnet", "range_cnn", "openclip_image", "in_features", "frames_cnn", "sequence"):
        assert word in result.output, word
