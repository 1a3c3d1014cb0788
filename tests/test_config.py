import pytest

from jointspace.config import ConfigError, apply_overrides, config_from_dict, load_config, save_config


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n  lr_typo: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.lr_typo: unknown field"):
        load_config(path)


def test_bad_value_names_field():
    with pytest.raises(ConfigError, match=r"train\.batch_size"):
        config_from_dict({"train": {"batch_size": "lots"}})
    with pytest.raises(ConfigError, match=r"loss\.name"):
        config_from_dict({"loss": {"name": "triplet-ish"}})


def test_unknown_override_is_named():
    with pytest.raises(ConfigError, match=r"model\.nope"):
        load_config(None, ["model.nope=1"])


def test_overrides_parse_yaml_values():
    raw = apply_overrides({}, ["train.epochs=7", "data.modalities=[image, text]", "loss.anchor=null", "name=x"])
    cfg = config_from_dict(raw)
    assert cfg.train.epochs == 7 and cfg.data.modalities == ["image", "text"] and cfg.loss.anchor is None
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])


def test_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.towers.image.name=vit"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_example_config_validates():
    """Each examples/*.yaml is a valid config of its task (or a valid grid, or a sweep checked as before
    its first trial)."""
    from pathlib import Path

    from jointspace.config import load_grid, read_yaml
    from jointspace.sweep.config import load_sweep
    from jointspace.sweep.space import check_sweep
    from jointspace.tasks import TASKS, config_for, task_of_raw

    examples = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.yaml"))
    assert len(examples) >= 10
    for path in examples:
        raw = read_yaml(path)
        if "variants" in raw:
            load_grid(path)
        elif "space" in raw:
            cfg, base = load_sweep(path)
            check_sweep(cfg, base, config_for, lambda r, p=path: task_of_raw(r, str(p)), lambda t: TASKS[t].val_metrics)
        else:
            assert config_for(raw, str(path)).task == raw.get("task", "contrastive"), path


def test_guide_and_mined_negatives_are_refused_together():
    """The guide scores in-batch candidates only: with mined extra candidates the run is refused at load."""
    with pytest.raises(ConfigError, match=r"^<config>: loss\.guide and data\.hard_negatives do not combine"):
        config_from_dict({"loss": {"guide": "runs/g"}, "data": {"hard_negatives": "neg.parquet"}})
    config_from_dict({"loss": {"guide": "runs/g"}})  # each alone loads
    config_from_dict({"data": {"hard_negatives": "neg.parquet"}})


@pytest.mark.parametrize("task, field, value", [
    ("metric", "data.batch_sampler", "no_duplicates"), ("metric", "loss.guide", "runs/g"),
    ("classify", "data.hard_negatives", "neg.parquet"), ("classify", "loss.distill", {"teacher": "runs/t"}),
])
def test_a_task_refuses_the_contrastive_fields_it_would_ignore(task, field, value):
    """data.hard_negatives, loss.guide and loss.distill act in contrastive runs only (and the metric task
    samples its own batches): another task's config naming them is refused in one line naming the field."""
    from jointspace.tasks import config_for

    section, key = field.split(".")
    with pytest.raises(ConfigError, match=rf"^<t>: {field}: not read by a {task} run \(drop it\)$"):
        config_for({"task": task, section: {key: value}}, "<t>")
    config_for({"task": "contrastive", section: {key: value}}, "<t>")  # where it is read, it loads
