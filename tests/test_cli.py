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
