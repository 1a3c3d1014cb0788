"""The augment config: defaults, overrides, and errors that name the wrong field."""

import pytest
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.config import ConfigError
from jointspace.diffusion.config import load_augment_config


def test_defaults_and_overrides():
    cfg = load_augment_config(None, ["train.steps=7", "sample.scheduler=ddpm", "model.channels=[8, 16]"])
    assert cfg.train.steps == 7 and cfg.sample.scheduler == "ddpm" and cfg.model.channels == [8, 16]
    assert cfg.run_dir.name == "diffusion"


def test_wrong_fields_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown field"):
        load_augment_config(None, ["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"sample\.scheduler"):
        load_augment_config(None, ["sample.scheduler=euler"])
    bad = tmp_path / "aug.yaml"
    bad.write_text("fix:\n  upsampel: 2\n")
    with pytest.raises(ConfigError, match=r"aug\.yaml: fix\.upsampel: unknown field"):
        load_augment_config(bad)


def test_cli_names_the_field():
    result = CliRunner().invoke(app, ["augment", "train", "--set", "model.chanels=[8]"])
    assert result.exit_code == 2
    assert "model.chanels: unknown field" in result.output
