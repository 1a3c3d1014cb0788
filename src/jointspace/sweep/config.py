"""The sweep file: a base config of any task, a search space over its dotted keys, an objective."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from jointspace.config import ConfigError, _Strict, read_yaml, validate_config
from jointspace.errors import UsageError


class Param(_Strict):
    """One searched key: `float`, `log-float`, `int` (`step`, `log`) or `categorical`; `when` makes it
    conditional: sampled only when every {key: value} holds (a searched key or the base config's)."""

    type: Literal["float", "log-float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.type == "categorical":
            if not self.choices:
                raise UsageError("categorical needs a non-empty `choices` list")
            return self
        if self.low is None or self.high is None:
            raise UsageError(f"{self.type} needs `low` and `high`")
        if not self.low < self.high:
            raise UsageError(f"empty range: low {self.low} is not below high {self.high}")
        if self.type == "log-float" and self.low <= 0:
            raise UsageError(f"log-float needs low > 0, got {self.low}")
        return self


class Objective(_Strict):
    """A validation metric (`val/R@1`, `val/accuracy`, `val/loss`, `val/image->text/R@1`) or a run
    summary field for a second objective (`trainable_params`, `n_params`, `wall_seconds`)."""

    metric: str
    direction: Literal["maximize", "minimize"] = "maximize"


class SweepConfig(_Strict):
    name: str
    base: str | dict[str, Any]
    objective: Objective | list[Objective]
    space: dict[str, Param] = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)  # overrides for every trial
    n_trials: int = Field(30, ge=1)
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    jobs: int = Field(1, ge=1)
    storage: str | None = None  # default sqlite:///<output_dir>/<name>/study.db; any SQLAlchemy URL
    # a running trial without a heartbeat (one every 2 s) for this long is taken for dead: failed, run again
    heartbeat_grace_s: int = Field(20, ge=6)
    seed: int = 0
    enqueue: list[dict[str, Any]] = Field(default_factory=list)  # points to try first
    output_dir: str = "runs"

    @property
    def objectives(self) -> list[Objective]:
        return self.objective if isinstance(self.objective, list) else [self.objective]

    @property
    def sweep_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.sweep_dir / 'study.db').resolve()}"


def load_sweep(path: str | Path) -> tuple[SweepConfig, dict]:
    """The sweep file and its base config mapping (a path is read relative to the sweep file)."""
    raw = read_yaml(path, "sweep")
    cfg = validate_config(SweepConfig, raw, str(path))
    if isinstance(cfg.base, dict):
        return cfg, cfg.base
    for candidate in (Path(path).parent / cfg.base, Path(cfg.base)):
        if candidate.exists():
            return cfg, read_yaml(candidate)
    raise ConfigError(f"{path}: base: no such config file {cfg.base!r} (looked next to the sweep and here)")
