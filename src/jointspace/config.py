"""Typed run configuration: YAML in, `--set key=value` overrides, errors that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    path: str = "data/digits"
    synth: Literal["digits", "shapes"] | None = None  # generate this built-in set if `path` is missing
    synth_size: int | None = None  # samples to synthesise (None: the generator's default)
    modalities: list[str] = Field(default_factory=lambda: ["image", "text", "audio"])
    label_key: str = "label"
    image_size: int = 32
    context_length: int = 16
    max_frames: int = 96
    max_bad_fraction: float = Field(0.01, ge=0.0, le=1.0)


class TowerConfig(_Strict):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class HeadConfig(_Strict):
    kind: Literal["linear", "mlp"] = "linear"
    hidden: int = 256
    dropout: float = 0.0


class ModelConfig(_Strict):
    embed_dim: int = 64
    towers: dict[str, TowerConfig] = Field(default_factory=dict)
    head: HeadConfig = Field(default_factory=HeadConfig)
    init_temperature: float = Field(0.07, gt=0.0)
    learn_temperature: bool = True
    max_logit_scale: float = 100.0


class LossConfig(_Strict):
    name: Literal["infonce", "siglip"] = "infonce"
    positives: Literal["instance", "label", "caption"] = "label"
    anchor: str | None = None  # ImageBind-style: bind every other modality to this one
    pairs: list[tuple[str, str]] | None = None  # explicit pairs; default: anchor pairs or all pairs
    weights: dict[str, float] = Field(default_factory=dict)  # "a-b" or modality name -> weight


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=2)
    accum_steps: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(50, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0)
    grad_clip: float | None = 1.0
    amp: Literal["auto", "bf16", "fp16", "none"] = "auto"
    device: str = "auto"
    num_threads: int | None = None
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(1, ge=1)  # epochs
    checkpoint_every: int = Field(1, ge=1)  # epochs
    keep_checkpoints: int = Field(2, ge=1)


class EvalConfig(_Strict):
    split: str = "test"
    positives: Literal["label", "instance"] = "label"  # class-level (CLIP_benchmark) or same-sample hits
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10])
    map_k: int = 10
    chunk_size: int = Field(1024, ge=1)
    zero_shot: bool = True
    linear_probe: bool = True


class RunConfig(_Strict):
    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"
    tracker: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain folder name")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def config_from_dict(raw: dict, source: str = "<config>") -> RunConfig:
    """Validate a nested dict into a RunConfig; errors name every offending field."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or defaults when `path` is None) and apply CLI overrides."""
    raw: dict = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved config as YAML."""
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
