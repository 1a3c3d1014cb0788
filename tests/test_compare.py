"""`jointspace compare`: a tiny grid runs, tabulates, and a second run skips the finished runs."""

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.compare import _is_current, expand_grid, run_grid
from jointspace.config import ConfigError, load_grid

from .conftest import tiny_overrides


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from jointspace.data.builtin import synthesize

    root = tmp_path_factory.mktemp("shards") / "shapes"
    synthesize("shapes", root, seed=0, n=84, maxcount=100)
    return root


def _grid(tmp_path, shapes_dir, variants):
    base = {"tracker": "none", "data": {"path": str(shapes_dir), "modalities": ["image", "lidar"], "image_size": 16},
            "model": {"embed_dim": 8, "towers": {"image": {"name": "cnn", "params": {"channels": [4, 8]}},
                                                 "lidar": {"name": "range_cnn", "params": {"channels": [4, 8]}}}},
            "fusion": {"channels": [4, 8], "size": [16, 16]},
            "train": {"epochs": 1, "batch_size": 16, "warmup_steps": 0, "checkpoint_every": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    grid = {"name": "tiny", "output_dir": str(tmp_path / "runs"), "task": "classify", "base": "base.yaml",
            "isolate": False, "seeds": [0, 1], "set": {"train.lr": 0.003}, "variants": variants}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_grid_runs_tabulates_and_resumes(tmp_path, shapes_dir):
    variants = [{"name": "early", "set": {"fusion.strategy": "early"}},
                {"name": "late", "set": {"fusion.strategy": "late", "fusion.combine": "logits"}}]
    path = _grid(tmp_path, shapes_dir, variants)
    log: list[str] = []
    grid_dir = run_grid(path, log=log.append)
    assert sum(x.startswith("done ") for x in log) == 4 and not any(x.startswith("skip") for x in log)
    rows = list(csv.DictReader((grid_dir / "comparison.csv").open()))
    assert [r["variant"] for r in rows] == ["early", "late"] and all(r["n_seeds"] == "2" for r in rows)
    for key in ("test_accuracy", "val_loss", "seconds_per_epoch", "peak_mem_mb"):
        assert all(r[f"{key}_mean"] not in ("", "nan") and r[f"{key}_std"] != "" for r in rows), key
    assert int(rows[0]["n_params"]) > 0
    md = (grid_dir / "comparison.md").read_text()
    assert "| early |" in md and "± " in md and (grid_dir / "comparison.png").stat().st_size > 0
    assert len(list(csv.DictReader((grid_dir / "runs.csv").open()))) == 4
    done = grid_dir / "runs" / "early-s0" / "done.json"
    stamp = done.stat().st_mtime_ns

    # second run, through the command line: everything finished -> all skipped, the table printed again
    result = CliRunner().invoke(app, ["compare", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("skip ") == 4 and "done " not in result.output and "| late |" in result.output
    assert done.stat().st_mtime_ns == stamp

    # an unfinished run (no done marker) runs again, the rest is skipped
    (grid_dir / "runs" / "late-s1" / "done.json").unlink()
    log.clear()
    run_grid(path, log=log.append)
    assert [x.split(":")[0] for x in log if x.startswith("done ")] == ["done late-s1"]
    assert json.loads((grid_dir / "grid.json").read_text())["ran"] == 1

    # a finished run whose config no longer matches the grid is not current
    runs = expand_grid(load_grid(path), path)
    cfg = next(c for v, t, c in runs if c.name == "early-s0")
    assert _is_current(cfg)
    assert not _is_current(cfg.model_copy(update={"fusion": cfg.fusion.model_copy(update={"downsample": "stride"})}))


def test_grid_errors_name_the_field(tmp_path, shapes_dir):
    path = _grid(tmp_path, shapes_dir, [{"name": "x", "set": {"fusion.knid": "early"}}])
    with pytest.raises(ConfigError, match=r"variant x.*fusion.knid: unknown field"):
        run_grid(path)
    path.write_text(yaml.safe_dump({"base": "base.yaml", "variants": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(ConfigError, match="duplicate"):
        run_grid(path)


def test_a_run_saved_with_every_former_section_is_still_current(tmp_path):
    """Run folders written when RunConfig held every task's section have them all in config.yaml."""
    from jointspace.config import save_config
    from jointspace.run_dir import RunDir
    from jointspace.tasks import config_for

    cfg = config_for({"task": "classify", "name": "old", "output_dir": str(tmp_path)}, "<test>")
    run = RunDir(cfg.run_dir)
    cfg.run_dir.mkdir(parents=True)
    save_config(cfg, run.config)
    old = {**yaml.safe_load(run.config.read_text()), "metric": {"knn_k": 5}, "cilp": {"source": "image"}}
    run.config.write_text(yaml.safe_dump(old, sort_keys=False))
    run.write_done({"test_accuracy": 0.5})
    assert _is_current(cfg)
    assert not _is_current(cfg.model_copy(update={"seed": 1}))


def test_a_preempted_grid_stops_and_goes_on_from_the_checkpoint(tmp_path, shapes_dir):
    """SIGTERM to `jointspace compare` (isolated runs): the running run stops at its next step with a
    checkpoint, no other run starts, exit 75; the grid run again resumes that run and finishes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = _grid(tmp_path, shapes_dir, [{"name": "a", "set": {}}, {"name": "b", "set": {"fusion.strategy": "early"}}])
    grid = yaml.safe_load(path.read_text())
    grid.update(isolate=True, seeds=[0], set={"train.epochs": 4, "train.log_every": 1})
    path.write_text(yaml.safe_dump(grid))
    cmd = [str(Path(sys.executable).parent / "jointspace"), "compare", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "runs" / "tiny" / "runs" / "a-s0" / "metrics.jsonl", time.time() + 120
    while not (metrics.exists() and metrics.read_text().count('"train"') >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)  # the parent alone: it passes the signal on to the running run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert "preempted: stopped by SIGTERM" in err and "continue with: jointspace compare" in err
    assert not (metrics.parent.parent / "b-s0").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x]
    assert steps == list(range(1, 13))  # resumed, not redone: every step once
    assert (metrics.parent.parent / "b-s0" / "done.json").exists()


def test_a_contrastive_grid_tabulates_zero_shot_and_the_linear_probe(tmp_path, digits_dir):
    """A contrastive run's done.json carries the mean zero-shot top-1 and linear-probe accuracy of its
    eval.json, and the comparison shows them (mean ± std over seeds)."""
    from jointspace.cli import builtin_config

    overrides = dict(o.split("=", 1) for o in tiny_overrides(digits_dir, tmp_path / "unused", epochs=1))
    grid = {"name": "joint", "output_dir": str(tmp_path / "runs"), "base": str(builtin_config("digits")),
            "isolate": False, "seeds": [0, 1], "set": {k: yaml.safe_load(v) for k, v in overrides.items()
                                                     if k not in ("name", "output_dir")},
            "variants": [{"name": "plain"}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    grid_dir = run_grid(path, log=lambda _: None)
    runs = [json.loads((grid_dir / "runs" / f"plain-s{s}" / "eval.json").read_text()) for s in (0, 1)]
    zero = [sum(r["top1"] for r in ev["zero_shot"].values()) / len(ev["zero_shot"]) for ev in runs]
    probe = [sum(ev["linear_probe"].values()) / len(ev["linear_probe"]) for ev in runs]
    row = next(csv.DictReader((grid_dir / "comparison.csv").open()))
    assert float(row["zero_shot_top1_mean"]) == pytest.approx(sum(zero) / 2)
    assert float(row["linear_probe_mean"]) == pytest.approx(sum(probe) / 2)
    md = (grid_dir / "comparison.md").read_text()
    assert "zero-shot top-1" in md and "linear probe" in md
    for s in (0, 1):  # peak memory and wall time as classify runs report them, from the training summary
        run = grid_dir / "runs" / f"plain-s{s}"
        done, trained = (json.loads((run / f).read_text()) for f in ("done.json", "train_summary.json"))
        assert done["peak_mem_mb"] == trained["peak_mem_mb"] == trained["rss_rise_mb"] >= 0
        assert done["wall_seconds"] >= trained["wall_seconds"] > 0
    assert row["peak_mem_mb_mean"] not in ("", "nan") and row["wall_seconds_mean"] not in ("", "nan")
