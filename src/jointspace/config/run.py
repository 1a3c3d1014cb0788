"""A run's whole config (its folder, seed and sections) and grids of variants."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from jointspace.config.base import _Strict
from jointspace.config.sections import (
    DataConfig,
    EvalConfig,
    IndexConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
)
from jointspace.errors import UsageError


def plain_folder_name(v: str) -> str:
    """A run or variant name becomes a folder: no path separators, not hidden, not empty."""
    if not v or "/" in v or v.startswith("."):
        raise UsageError("must be a plain folder name")
    return v


class RunFolder(_Strict):
    """What every kind of run has: a name (its folder under `output_dir`) and a seed."""

    name: str = "run"
    seed: int = 0
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return plain_folder_name(v)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


# Sections RunConfig held for every task before each task declared its own. Every run folder written then
# has all of them in its config.yaml (and a config naming its task could carry another task's, unread), so
# a config whose type lacks one ignores it, as before. Newer task sections are not listed: they are errors.
FORMER_SECTIONS = ("fusion", "metric", "cilp")


class RunConfig(RunFolder):
    """The sections every task's run config has; a task whose runs need more subclasses it with its own
    section (tasks/: `task:` picks the type)."""

    task: str = "contrastive"  # a registered task (jointspace.tasks; checked there, where `task:` picks the type)
    tracker: Literal["tensorboard", "wandb", "none"] = "tensorboard"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    index: IndexConfig = Field(default_factory=IndexConfig)

    @model_validator(mode="before")
    @classmethod
    def _former_sections(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and any(k in raw and k not in cls.model_fields for k in FORMER_SECTIONS):
            return {k: v for k, v in raw.items() if k not in FORMER_SECTIONS or k in cls.model_fields}
        return raw

    @model_validator(mode="after")
    def _guide_or_mined_negatives(self) -> RunConfig:
        if self.loss.guide and self.data.hard_negatives:
            raise UsageError("loss.guide and data.hard_negatives do not combine yet (the guide does not score "
                             "mined candidates): drop one of them")
        return self


CONTRASTIVE_ONLY = ("data.hard_negatives", "loss.guide", "loss.distill")  # read by the contrastive loss only


def refuse_unread(cfg: RunConfig, fields: tuple[str, ...]) -> None:
    """One line naming the `fields` (dotted) that `cfg` sets although its task does not read them (they
    would be ignored without a word)."""
    default = RunConfig()
    given = [f for f in fields if _at(cfg, f) != _at(default, f)]
    if given:
        raise UsageError(f"{', '.join(given)}: not read by a {cfg.task} run (drop {'them' if len(given) > 1 else 'it'})")


def _at(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


class VariantConfig(_Strict):
    """One named variant of a comparison grid: overrides of the base config (dotted key -> value)."""

    name: str
    task: str | None = None  # a registered task (checked by compare); default: the grid's
    set: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        return plain_folder_name(v)


class GridConfig(_Strict):
    """`jointspace compare`: base config x variants x seeds."""

    name: str = "grid"
    output_dir: str = "runs"
    task: str | None = None  # a registered task (checked by compare); default: the base config's
    base: str | dict[str, Any] = Field(default_factory=dict)  # a config file (relative to the grid) or a mapping
    set: dict[str, Any] = Field(default_factory=dict)  # overrides for every variant
    variants: list[VariantConfig] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    isolate: bool = True  # each run in a fresh process: clean peak-memory numbers, no state leaks
    jobs: int = Field(1, ge=1)  # runs at once (with isolate); timings then share the CPU

    @property
    def grid_dir(self) -> Path:
        return Path(self.output_dir) / self.name
