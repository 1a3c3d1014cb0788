"""A finished run as a frozen guide (`loss.guide`) or teacher (`loss.distill`) of a smaller student, through
the command line: the terms logged, the resume exact, the mismatches refused in one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.runs import model_fingerprint

from ..test_outputs import one_error

runner = CliRunner()

TEXT = {"name": "transformer", "params": {"width": 16, "layers": 1, "heads": 2}}


def _config(path, digits_dir, name, image_channels, embed_dim, loss=None, modalities=("image", "text"), **extra):
    raw = {"name": name, "output_dir": str(path / "runs"), "tracker": "none",
           "data": {"path": str(digits_dir), "modalities": list(modalities), "image_size": 16},
           "model": {"embed_dim": embed_dim, "towers": {"image": {"name": "cnn", "params": {"channels": image_channels}},
                                                        "text": TEXT}},
           "loss": {"positives": "instance", **(loss or {})},
           "train": {"epochs": 2, "batch_size": 16, "warmup_steps": 0, "log_every": 1, "keep_checkpoints": 10},
           "eval": {"linear_probe": False}}
    for section, values in extra.items():
        raw[section] = {**raw.get(section, {}), **values}
    out = path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


@pytest.fixture(scope="module")
def teacher(digits_dir, tmp_path_factory):
    """A finished image-text run with the wider image tower and space (8, 16 channels; 16-d)."""
    path = tmp_path_factory.mktemp("teacher")
    result = runner.invoke(app, ["train", str(_config(path, digits_dir, "teacher", [8, 16], 16, train={"epochs": 1}))])
    assert result.exit_code == 0, result.output
    return path / "runs" / "teacher"


def _train_rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"split": "train"' in x]


def test_smaller_student_distills_with_a_guide_logs_the_terms_and_resumes_exactly(teacher, digits_dir, tmp_path):
    loss = {"guide": str(teacher), "guide_margin": 0.05, "distill": {"teacher": str(teacher), "weight": 0.5}}
    cfg = _config(tmp_path, digits_dir, "student", [4, 8], 8, loss)  # a smaller image tower, a narrower space
    result = runner.invoke(app, ["train", str(cfg)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "student"
    rows = _train_rows(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:  # the task loss plus weight x the distillation term, each logged
        assert r["loss"] == pytest.approx(r["loss/image-text"] + 0.5 * r["loss/distill"], rel=1e-5)
    fingerprint = model_fingerprint(teacher)
    refs = json.loads((run / "run.json").read_text())["references"]
    assert refs == {f: {"run": str(teacher), "fingerprint": fingerprint} for f in ("loss.guide", "loss.distill.teacher")}
    weights = load_file(str(run / "model.safetensors"))

    def image_tower_size(w):
        return sum(v.numel() for k, v in w.items() if k.startswith("towers.image."))

    assert image_tower_size(weights) < image_tower_size(load_file(str(teacher / "model.safetensors")))

    half = tmp_path / "runs" / "half"  # the run as if stopped after epoch 1, resumed
    shutil.copytree(run, half)
    (half / "model.safetensors").unlink()
    (half / "checkpoints" / "latest.json").write_text(json.dumps({"name": "epoch_0001"}))
    shutil.rmtree(half / "checkpoints" / "epoch_0002")
    result = runner.invoke(app, ["train", str(cfg), "--resume", "--set", "name=half"])
    assert result.exit_code == 0, result.output
    resumed = load_file(str(half / "model.safetensors"))
    for k, v in weights.items():
        assert torch.equal(resumed[k], v), k
    assert [r["loss/distill"] for r in _train_rows(half)] == [r["loss/distill"] for r in rows]

    info = json.loads((half / "run.json").read_text())  # a teacher replaced since the run started
    info["references"]["loss.distill.teacher"]["fingerprint"] = "0" * 64
    (half / "run.json").write_text(json.dumps(info))
    for f in ("model.safetensors", "done.json"):
        (half / f).unlink(missing_ok=True)
    one_error(runner.invoke(app, ["train", str(cfg), "--resume", "--set", "name=half"]), "loss.distill.teacher",
              "not the run")


def test_a_guide_margin_past_every_score_leaves_only_positives(teacher, digits_dir, tmp_path):
    """Cosines lie in [-1, 1]: margin 2.5 leaves out every candidate but the anchor's pair, so each
    softmax holds one entry and InfoNCE is exactly 0; margin -2.5 leaves out none: a plain run's loss."""
    for name, margin in (("all_out", 2.5), ("none_out", -2.5)):
        cfg = _config(tmp_path, digits_dir, name, [4, 8], 8, {"guide": str(teacher), "guide_margin": margin},
                      train={"epochs": 1})
        assert runner.invoke(app, ["train", str(cfg)]).exit_code == 0
    assert all(r["loss/image-text"] == 0.0 for r in _train_rows(tmp_path / "runs" / "all_out"))
    plain = _config(tmp_path, digits_dir, "plain", [4, 8], 8, train={"epochs": 1})
    assert runner.invoke(app, ["train", str(plain)]).exit_code == 0
    assert [r["loss"] for r in _train_rows(tmp_path / "runs" / "none_out")] == \
        [r["loss"] for r in _train_rows(tmp_path / "runs" / "plain")]


@pytest.mark.parametrize("case", ["not_a_run", "pml", "image_size", "modality", "unknown_field", "margin_alone"])
def test_a_reference_the_student_cannot_use_is_one_line(teacher, digits_dir, tmp_path, case):
    loss, words, kw, modalities = {"guide": str(teacher)}, ["loss.guide"], {}, ("image", "text")
    if case == "not_a_run":
        loss, words = {"guide": str(tmp_path)}, ["loss.guide", "not a finished jointspace run"]
    elif case == "pml":
        loss.update(name="pml", params={"loss": "MultiSimilarityLoss"})
        words = ["loss.guide", "'pml' cannot leave candidates out", "infonce"]
    elif case == "image_size":
        loss = {"distill": {"teacher": str(teacher)}}
        words, kw = ["loss.distill.teacher", str(teacher), "image_size 16 there, 12 here"], {"data": {"image_size": 12}}
    elif case == "modality":
        modalities, words = ("image", "text", "audio"), ["loss.guide", "has no sequence modality 'audio'"]
        towers = {"image": {"name": "cnn", "params": {"channels": [4, 8]}}, "text": TEXT,
                  "audio": {"name": "frames_cnn", "params": {"channels": [8, 8]}}}
        kw = {"model": {"towers": towers}}
    elif case == "unknown_field":
        loss, words = {"distill": {"teacher": str(teacher), "tau": 2}}, ["loss.distill.tau"]
    elif case == "margin_alone":
        loss, words = {"guide_margin": 0.1}, ["loss.guide_margin", "set loss.guide"]
    cfg = _config(tmp_path, digits_dir, "bad", [4, 8], 8, loss, modalities, **kw)
    one_error(runner.invoke(app, ["train", str(cfg)]), *words)
    assert not (tmp_path / "runs" / "bad").exists()
