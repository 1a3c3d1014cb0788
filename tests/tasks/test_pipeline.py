"""The pipeline task: a contrastive stage then a classifier over its joint space, from one config, with
exact resume across stages."""

from __future__ import annotations

import json
import shutil

import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from jointspace.cli import app

STAGES = """
task: pipeline
name: {name}
output_dir: {out}
stages:
  - name: joint
    config: {{task: contrastive, tracker: none, data: {{path: {data}, modalities: [image, text], image_size: 16}},
             model: {{embed_dim: 8, towers: {{image: {{name: cnn, params: {{channels: [4, 8]}}}},
                      text: {{name: transformer, params: {{width: 16, layers: 1, heads: 2}}}}}}}},
             train: {{epochs: 1, batch_size: 16, warmup_steps: 0}}, eval: {{linear_probe: false}}}}
  - name: classifier
    config: {{task: classify, tracker: none, data: {{path: {data}, modalities: [image, text], image_size: 16}},
             fusion: {{strategy: transformer, token_dim: 8, heads: 2, dropout: 0.2}},
             train: {{epochs: 3, batch_size: 16, warmup_steps: 0, keep_checkpoints: 5}}}}
    set: {{model.init_from: "{{stage:joint}}", model.embed_dim: 8}}
"""


def test_pipeline_runs_its_stages_and_resumes_across_them(shapes_dir, tmp_path):
    runner = CliRunner()
    path = tmp_path / "p.yaml"
    path.write_text(STAGES.format(name="full", out=tmp_path, data=shapes_dir))
    r = runner.invoke(app, ["train", str(path)])
    assert r.exit_code == 0, r.output
    root = tmp_path / "full"
    clf = json.loads((root / "classifier" / "run.json").read_text())
    assert clf["task"] == "classify" and list(clf["init_from"]) == [str(root / "joint")]
    done = json.loads((root / "done.json").read_text())
    assert done["task"] == "pipeline" and 0 <= done["test_accuracy"] <= 1
    # killed inside the classifier stage after its epoch-1 checkpoint; the joint stage is finished
    cut = tmp_path / "cut"
    shutil.copytree(root, cut)
    for f in ("done.json", "classifier/done.json", "classifier/model.safetensors"):
        (cut / f).unlink()
    ckpts = cut / "classifier" / "checkpoints"
    for name in ("epoch_0002", "epoch_0003"):
        shutil.rmtree(ckpts / name)
    (ckpts / "latest.json").write_text(json.dumps({"name": "epoch_0001"}))
    raw = yaml.safe_load(path.read_text())
    raw["name"] = "cut"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    joint_before = (cut / "joint" / "model.safetensors").stat().st_mtime
    r = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--resume"])
    assert r.exit_code == 0, r.output
    assert (cut / "joint" / "model.safetensors").stat().st_mtime == joint_before  # finished stage kept
    a = load_file(str(root / "classifier" / "model.safetensors"))
    b = load_file(str(cut / "classifier" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    r = runner.invoke(app, ["train", str(path)])
    assert r.exit_code == 2 and "--resume" in r.output
