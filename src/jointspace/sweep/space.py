"""Sampling a trial's overrides from the search space (conditional keys only when their condition
holds) and checking a sweep before its first trial: every key, range and objective named."""

from __future__ import annotations

import fnmatch
import json
from typing import Any

from jointspace.config import ConfigError, apply_overrides
from jointspace.sweep.config import Param, SweepConfig

SUMMARY_METRICS = ("trainable_params", "n_params", "wall_seconds", "seconds_per_epoch", "test_accuracy")


def _lookup(raw: dict, key: str) -> Any:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def condition_holds(param: Param, chosen: dict[str, Any], base: dict) -> bool:
    """Every `when` {key: value} of `param` holds for the values chosen so far (else the base config's)."""
    return all((chosen[k] if k in chosen else _lookup(base, k)) == v for k, v in (param.when or {}).items())


def _ordered(space: dict[str, Param]) -> list[str]:
    """Keys in dependency order: a conditional key after every searched key its condition names."""
    order: list[str] = []
    while len(order) < len(space):
        ready = [k for k, p in space.items() if k not in order
                 and all(c not in space or c in order for c in (p.when or {}))]
        if not ready:
            raise ConfigError(f"space: conditions form a cycle among {sorted(set(space) - set(order))}")
        order += ready
    return order


def suggest(trial, space: dict[str, Param], base: dict) -> dict[str, Any]:
    """A trial's {dotted key: value}; a conditional key is drawn after the keys its condition names,
    and only when the condition holds."""
    chosen: dict[str, Any] = {}
    for key in _ordered(space):
        p = space[key]
        if not condition_holds(p, chosen, base):
            continue
        if p.type == "categorical":
            chosen[key] = trial.suggest_categorical(key, p.choices)
        elif p.type == "int":
            chosen[key] = trial.suggest_int(key, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            chosen[key] = trial.suggest_float(key, p.low, p.high, step=p.step,
                                              log=p.type == "log-float" or p.log)
    return chosen


def overrides_of(values: dict[str, Any]) -> list[str]:
    """{dotted key: value} -> `--set` strings (JSON is YAML)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _probe_values(space: dict[str, Param]) -> list[dict[str, Any]]:
    """Values that reach every key and every choice: the low and high ends, each categorical choice."""
    probes = []
    width = max(len(p.choices) if p.type == "categorical" else 2 for p in space.values())
    for i in range(width):
        probe: dict[str, Any] = {}
        for key in _ordered(space):
            p = space[key]
            if any(k in space and probe.get(k) != v for k, v in (p.when or {}).items()):
                continue  # only where its condition on searched keys holds (one on the base: as if it did)
            if p.type == "categorical":
                probe[key] = p.choices[i % len(p.choices)]
            else:
                value = p.low if i % 2 == 0 else p.high
                probe[key] = int(value) if p.type == "int" else value
        probes.append(probe)
    return probes


def check_sweep(cfg: SweepConfig, base: dict, config_for, task_of, val_metrics_of) -> str:
    """Fail before any trial: a key the task's config does not have, a condition on an unknown key,
    or an objective its validation never logs. Returns the task name."""
    for key, p in cfg.space.items():
        for cond in p.when or {}:
            if cond not in cfg.space and _lookup(base, cond) is None:
                raise ConfigError(f"space.{key}.when: {cond!r} is neither a searched key nor in the base config")
    task = task_of(base)
    for probe in _probe_values(cfg.space):
        raw = apply_overrides(json.loads(json.dumps(base)), overrides_of(cfg.set) + overrides_of(probe))
        try:
            config_for(raw, f"sweep {cfg.name}")
        except ConfigError as err:
            raise ConfigError(f"space: {err}") from None
    logged = val_metrics_of(task)
    for i, obj in enumerate(cfg.objectives):
        if obj.metric in SUMMARY_METRICS:
            continue
        name = obj.metric.removeprefix("val/")
        if not obj.metric.startswith("val/") or not any(fnmatch.fnmatchcase(name, pat) for pat in logged):
            shown = ", ".join(f"val/{m}" for m in logged) or "nothing"
            raise ConfigError(f"objective[{i}].metric: {obj.metric!r} is never logged by a {task} run (it logs "
                              f"{shown}; or a summary field: {', '.join(SUMMARY_METRICS)})")
    return task


def metric_value(metric: str, val: dict) -> float | None:
    """A `val/...` objective from one epoch's validation results: the key itself, or the mean of every
    pair's value (`val/R@1`: the mean of `a->b/R@1`)."""
    name = metric.removeprefix("val/")
    if name in val:
        return float(val[name])
    values = [float(v) for k, v in val.items() if k.endswith("/" + name)]
    return sum(values) / len(values) if values else None
