"""RunDir: the run folder's names, run.json, metrics.jsonl (a torn last line), done.json."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from jointspace import run_dir as rd
from jointspace.engine import checkpoint
from jointspace.engine.tracking import Tracker
from jointspace.outputs import OutputError
from jointspace.run_dir import RunDir, RunDirError, RunInfo

SRC = Path(rd.__file__).parent


def test_names_are_the_on_disk_names(tmp_path):
    run = RunDir(tmp_path)
    assert (run.config.name, run.run_info.name, run.weights.name, run.metrics.name, run.eval.name,
            run.done.name, run.train_summary.name, run.checkpoints.name, run.report.name) == (
        "config.yaml", "run.json", "model.safetensors", "metrics.jsonl", "eval.json", "done.json",
        "train_summary.json", "checkpoints", "report.html")
    assert run.embeddings("test") == tmp_path / "eval" / "embeddings_test.npz"
    assert run.classification("val", ".txt") == tmp_path / "classification_val.txt"
    assert run.stage("pretrain").path == tmp_path / "pretrain"
    assert rd.LATEST == checkpoint.LATEST  # the run-folder mark follows the engine's pointer


def _strings(tree: ast.AST) -> list[str]:
    """The string constants of a module's code, its docstrings left out."""
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
            and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_no_other_module_spells_the_run_files():
    """Code outside run_dir.py (docstrings and comments aside) never spells a run-folder file name."""
    names = [rd.CONFIG, rd.RUN_INFO, rd.METRICS, rd.EVAL, rd.DONE, rd.TRAIN_SUMMARY]  # (a fix folder has its
    # own report.html)
    pattern = re.compile(r"(?<![\w.])(" + "|".join(re.escape(n) for n in names) + r")(?![\w.])")
    found = [f"{path.relative_to(SRC)}: {text!r}" for path in SRC.rglob("*.py") if path.name != "run_dir.py"
             for text in _strings(ast.parse(path.read_text())) if pattern.search(text)]
    assert found == []


def test_read_metrics_skips_a_torn_last_line(tmp_path):
    run = RunDir(tmp_path)
    assert run.read_metrics() == []  # no log yet
    tracker = Tracker(tmp_path, "none")
    tracker.log({"step": 1, "loss": 2.0})
    tracker.log({"step": 2, "loss": 1.5})
    tracker.close()
    with run.metrics.open("a") as f:
        f.write('{"step": 3, "lo')  # the writer was killed mid-append
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_read_metrics_skips_blank_and_non_object_lines(tmp_path):
    RunDir(tmp_path).metrics.write_text('{"step": 1}\n\n3\n{"step": 2}\n')
    assert RunDir(tmp_path).read_metrics() == [{"step": 1}, {"step": 2}]


def test_run_info_and_done_round_trip(tmp_path):
    run = RunDir(tmp_path)
    assert not run.has_info() and run.read_done() is None and run.read_eval() == {}
    with pytest.raises(FileNotFoundError, match="not a jointspace run"):
        run.read_info()
    info = {"task": "metric", "modality": "image", "kinds": {"image": "image"}, "n_params": 3}
    run.write_info(RunInfo(**info))
    assert run.run_info.read_text() == json.dumps(info, indent=2)  # the same bytes as the plain dict gave
    assert run.read_info().to_json() == info and run.read_info().part == {"modality": "image", "n_params": 3}
    run.write_done({"test_accuracy": 0.5})
    assert run.read_done() == {"test_accuracy": 0.5}


def test_run_folder_mark(tmp_path):
    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.config.write_text("seed: 0\n")
    assert not rd.RUN_FOLDER.holds(run.path)
    run.checkpoints.mkdir()
    (run.checkpoints / rd.LATEST).write_text("{}")
    assert rd.RUN_FOLDER.holds(run.path)


CONTRASTIVE = {"task": "contrastive", "kinds": {"image": "image", "text": "text"}, "prep": {"image_size": 16},
               "class_names": ["0", "1"], "skipped": {}, "image_channels": 1, "data_path": "data/digits",
               "dataset": {"modalities": {"image": "image", "text": "text"}}}


def test_run_info_round_trip_keeps_keys_and_order(tmp_path):
    info = RunInfo.from_json(CONTRASTIVE)
    assert info.kinds == {"image": "image", "text": "text"} and info.class_names == ["0", "1"]
    assert info.part == {"image_channels": 1, "dataset": CONTRASTIVE["dataset"]}
    assert list(info.to_json().items()) == list(CONTRASTIVE.items())
    RunDir(tmp_path).write_info(info)
    assert RunDir(tmp_path).run_info.read_text() == json.dumps(CONTRASTIVE, indent=2)
    moved = info.updated(skipped={"val": {"n_skipped": 1}}, init_from={"runs/a": "ab12"})
    assert list(moved.to_json()) == [*CONTRASTIVE, "init_from"] and moved.skipped == {"val": {"n_skipped": 1}}


def test_old_run_json_without_the_new_fields_still_reads(tmp_path):
    """A run from before tasks and Prep were recorded: only kinds and image_channels."""
    old = {"kinds": {"image": "image", "text": "text"}, "image_channels": 3}
    (tmp_path / "run.json").write_text(json.dumps(old))
    info = RunDir(tmp_path).read_info()
    assert (info.task, info.prep, info.class_names, info.skipped, info.init_from) == ("contrastive", None, None,
                                                                                      {}, None)
    assert info.get("image_channels") == 3 and info["kinds"] == old["kinds"] and info.get("prep") is None
    assert info.to_json() == old  # written back as it was: no defaults added


def test_a_damaged_run_json_is_one_line(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"kinds": ["image"]}))
    with pytest.raises(RunDirError, match=r"run.json: kinds: .*dictionary"):
        RunDir(tmp_path).read_info()
    (tmp_path / "run.json").write_text("[1]")
    with pytest.raises(RunDirError, match="not a JSON object"):
        RunDir(tmp_path).read_info()


def test_create_keeps_replaces_or_refuses(tmp_path):
    run = RunDir(tmp_path / "a" / "run").create()
    assert run.path.is_dir()
    run.config.write_text("seed: 0\n")
    run.write_info(RunInfo(kinds={}))
    with pytest.raises(OutputError, match="--resume to continue it or --overwrite"):
        run.create()
    assert run.create(resume=True).has_info()  # kept to resume
    assert not run.create(overwrite=True).has_info()  # replaced: an empty folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="is not a run folder"):
        RunDir(other).create(overwrite=True)  # never replaced
    assert (other / "notes.txt").exists()
    stage = RunDir(tmp_path / "stage")
    stage.path.mkdir()
    (stage / "half.txt").write_text("")
    assert list(stage.start_afresh().path.iterdir()) == []
