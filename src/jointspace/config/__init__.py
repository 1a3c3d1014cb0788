"""Typed run configuration: YAML in, `--set key=value` overrides, errors that name the field.

base.py: the strict base model and the config's errors; sections.py: data, model, loss, train, eval and index
sections; run.py: a run's whole config and grids; loading.py: reading, overriding, validating and writing."""

from jointspace.config.base import ConfigError, RunsFailed, _Strict, renamed_key
from jointspace.config.loading import (
    apply_overrides,
    config_from_dict,
    load_config,
    load_grid,
    read_yaml,
    save_config,
    split_override,
    validate_config,
)
from jointspace.config.run import (
    CONTRASTIVE_ONLY,
    FORMER_SECTIONS,
    GridConfig,
    RunConfig,
    RunFolder,
    VariantConfig,
    plain_folder_name,
    refuse_unread,
)
from jointspace.config.sections import (
    DataConfig,
    DistillConfig,
    EvalConfig,
    HeadConfig,
    IndexConfig,
    LoraSettings,
    LossConfig,
    ModelConfig,
    SourceConfig,
    TowerConfig,
    TrainConfig,
)

__all__ = ["CONTRASTIVE_ONLY", "FORMER_SECTIONS", "ConfigError", "DataConfig", "DistillConfig", "EvalConfig", "GridConfig", "HeadConfig", "IndexConfig",
           "LoraSettings", "LossConfig", "ModelConfig", "RunConfig", "RunFolder", "RunsFailed", "SourceConfig",
           "TowerConfig", "TrainConfig", "VariantConfig", "_Strict", "apply_overrides", "config_from_dict",
           "load_config", "load_grid", "plain_folder_name", "read_yaml", "refuse_unread", "renamed_key", "save_config",
           "split_override", "validate_config"]
