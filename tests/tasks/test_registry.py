"""The task registry: every task declares what the cross-task commands ask of it; unknown task names are
config errors naming the field; no module outside tasks/ matches a task's name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jointspace.compare import expand_grid
from jointspace.config import ConfigError, GridConfig
from jointspace.tasks import TASKS, Task, config_for, get_task, register, task_of_raw

SRC = Path(__file__).resolve().parents[2] / "src" / "jointspace"


def test_every_task_declares_what_callers_ask():
    for name, task in TASKS.items():
        assert task.name == name and callable(task.train) and callable(task.summary) and task.measure
        assert all(s in task.config.model_fields for s in task.sections), name
        if name != "pipeline":  # a pipeline needs stages
            assert config_for({"task": name}, "<test>").task == name


def test_unknown_task_names_the_field_and_the_known_ones():
    with pytest.raises(ConfigError, match=r"a\.yaml: task: 'segment' is not a task \(known: contrastive, classify"):
        task_of_raw({"task": "segment"}, "a.yaml")
    grid = GridConfig(variants=[{"name": "a"}, {"name": "b", "task": "segment"}])
    with pytest.raises(ConfigError, match=r"g\.yaml: variants\.1\.task: 'segment' is not a task \(known: "):
        expand_grid(grid, Path("g.yaml"))
    with pytest.raises(ConfigError, match=r"g\.yaml: task: 'segment'"):
        expand_grid(GridConfig(task="segment", variants=[{"name": "a"}]), Path("g.yaml"))


def test_a_section_without_a_task_line_names_its_task():
    with pytest.raises(ConfigError, match=r"has a fusion: section but no task: line.*\(task: classify\)"):
        task_of_raw({"fusion": {}}, "c.yaml")


def test_each_task_reads_its_own_section_and_old_configs_still_load():
    sections = {n: t.sections for n, t in TASKS.items()}
    assert sections.items() >= {"contrastive": (), "classify": ("fusion",), "metric": ("metric",),
                                "cilp": ("cilp",)}.items()
    assert config_for({"task": "classify", "fusion": {"strategy": "early"}}, "c").fusion.strategy == "early"
    assert not hasattr(config_for({"task": "metric"}, "m"), "fusion")
    old = {"task": "contrastive", "fusion": {"kind": "late"}, "metric": {}, "cilp": {}}  # a run folder's, before
    assert config_for(old, "old/config.yaml").model_dump().keys().isdisjoint({"fusion", "metric", "cilp"})
    with pytest.raises(ConfigError, match=r"c\.yaml: fusion\.bogus: unknown field"):
        config_for({"task": "classify", "fusion": {"bogus": 1}}, "c.yaml")


def test_a_task_registers_once():
    with pytest.raises(ValueError, match="registered twice"):
        register(Task("contrastive", get_task("contrastive").config, lambda cfg: cfg, str))


def test_no_module_outside_tasks_matches_a_task_name():
    names = "|".join(TASKS)
    pattern = re.compile(rf'(==|!=|\bin)\s*\(?"({names})"|"({names})"\s*(==|!=)')
    found = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if "tasks" not in p.relative_to(SRC).parts
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found


def test_each_task_types_its_run_json_part(tmp_path):
    from jointspace.run_dir import RunDir, RunDirError, RunInfo
    from jointspace.tasks.registry import task_info

    assert all(issubclass(t.info, RunInfo) for t in TASKS.values())
    written = {"task": "classify", "kinds": {"image": "image"}, "prep": {"image_size": 16}, "class_names": ["a"],
               "input_shapes": {"image": [1, 16, 16]}, "data_path": "d", "n_params": 7, "skipped": {}}
    RunDir(tmp_path).write_info(RunInfo(**written))
    info = task_info(tmp_path)
    assert type(info) is get_task("classify").info and info.input_shapes == {"image": [1, 16, 16]}
    assert info.n_params == 7 and info.to_json() == written and info.part == {"input_shapes": {"image": [1, 16, 16]},
                                                                               "n_params": 7}
    RunDir(tmp_path).write_info(RunInfo(**{**written, "n_params": "many"}))  # a part of the wrong type is named
    with pytest.raises(RunDirError, match=r"run\.json: n_params: "):
        task_info(tmp_path)
    RunDir(tmp_path).write_info(RunInfo(**{**written, "task": "segment"}))
    with pytest.raises(ConfigError, match=r"run\.json: task: 'segment' is not a task"):
        task_info(tmp_path)
