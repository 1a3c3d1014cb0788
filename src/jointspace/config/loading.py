"""YAML in, `--set key=value` overrides, validation errors that name the field, YAML out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ValidationError,
)

from jointspace.config.base import ConfigError, M
from jointspace.config.run import GridConfig, RunConfig


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")  # a whole-config check: no field
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    """An override's value as YAML (numbers, lists, mappings...); what YAML cannot parse is a plain string."""
    if text == "":
        return ""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def split_override(item: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    return key.strip(), _parse_value(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        key, value = split_override(item)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = value
    return raw


def config_from_dict(raw: dict, source: str = "<config>") -> RunConfig:
    """Validate a nested dict into a RunConfig; errors name every offending field."""
    return validate_config(RunConfig, raw, source)


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML mapping from a file; a missing file, bad YAML or a non-mapping is a ConfigError naming the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what} file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"{path}: the {what} file is empty (start from one of the shipped configs, e.g. "
                          "jointspace/configs/digits.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


def validate_config(model: type[M], raw: dict, source: str) -> M:
    """Validate a nested dict into `model`; errors name every offending field."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None, model: type[M] = RunConfig) -> M:
    """Load a YAML config (or defaults when `path` is None), apply CLI overrides and validate it into `model`
    (a task's own config type: `jointspace.tasks.load_task_config` picks it by `task:`)."""
    raw = {} if path is None else read_yaml(path)
    raw = apply_overrides(raw, overrides or [])
    return validate_config(model, raw, "<defaults>" if path is None else str(path))


def save_config(cfg: BaseModel, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def load_grid(path: str | Path) -> GridConfig:
    """Load a `jointspace compare` grid file; errors name the field."""
    grid = validate_config(GridConfig, read_yaml(path, "grid"), str(path))
    names = [v.name for v in grid.variants]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{path}: variants: duplicate names {dup}")
    return grid
