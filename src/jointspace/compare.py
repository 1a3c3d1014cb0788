"""`jointspace compare GRID.yaml`: a base config x named variants x seeds, run (resumably) and tabulated.

A grid file:

    name: fusion
    task: classify            # any task (default: the base config's `task:`)
    base: shapes_fusion.yaml  # a run config (path relative to the grid file) or an inline mapping
    set: {train.epochs: 10}   # overrides for every variant
    seeds: [0, 1, 2]
    variants:
      - {name: early, set: {fusion.strategy: early}}
      - {name: late, set: {fusion.strategy: late}}

Run `<variant>-s<seed>` lives in `<output_dir>/<name>/runs/`; its `done.json` marks it finished, and a
finished run whose resolved config is unchanged is skipped when the grid runs again. The grid folder gets
`comparison.md`, `comparison.csv` (mean and std over seeds), `runs.csv` (one row per run) and
`comparison.png`.
"""

from __future__ import annotations

import contextlib
import csv
import json
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import numpy as np
import yaml

from jointspace.config import ConfigError, GridConfig, RunConfig, RunsFailed, apply_overrides, load_grid
from jointspace.engine.preempt import PreemptWatch
from jointspace.preemption import Preempted
from jointspace.tasks import DEFAULT_TASK, config_for, get_task
from jointspace.tasks.common import read_done
from jointspace.tasks.lifecycle import has_checkpoint, same_config

METRICS = ("test_accuracy", "val_loss", "seconds_per_epoch", "peak_mem_mb", "test_top3", "trainable_params",
           "epochs_to_95", "wall_seconds", "zero_shot_top1", "linear_probe")
# columns shown only when some run reports them (classify / contrastive runs): (metric, header, digits)
OPTIONAL = (("test_top3", "test top-3", 4), ("zero_shot_top1", "zero-shot top-1", 4),
            ("linear_probe", "linear probe", 4), ("trainable_params", "trainable", 0),
            ("epochs_to_95", "epochs to 95 % of best", 1), ("wall_seconds", "seconds", 0))


def _base_raw(grid: GridConfig, grid_path: Path) -> dict:
    if isinstance(grid.base, dict):
        return json.loads(json.dumps(grid.base))  # deep copy
    for candidate in (grid_path.parent / grid.base, Path(grid.base)):
        if candidate.exists():
            raw = yaml.safe_load(candidate.read_text()) or {}
            if not isinstance(raw, dict):
                raise ConfigError(f"{candidate}: top level must be a mapping")
            return raw
    raise ConfigError(f"{grid_path}: base: no such config file {grid.base!r} "
                      "(looked next to the grid and in the current folder)")


def _as_overrides(values: dict) -> list[str]:
    """{dotted.key: value} -> ["dotted.key=<value as JSON>"] for apply_overrides (JSON is YAML)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def expand_grid(grid: GridConfig, grid_path: Path,
                overrides: list[str] | None = None) -> list[tuple[str, str, RunConfig]]:
    """(variant, task, resolved config) for every variant x seed, in run order."""
    check_tasks(grid, grid_path)
    base = _base_raw(grid, grid_path)
    runs_dir = grid.grid_dir / "runs"
    out = []
    for variant in grid.variants:
        for seed in grid.seeds:
            sets = _as_overrides(grid.set) + _as_overrides(variant.set) + list(overrides or [])
            raw = apply_overrides(json.loads(json.dumps(base)), sets)
            raw.update({"name": f"{variant.name}-s{seed}", "output_dir": str(runs_dir), "seed": seed})
            raw["task"] = variant.task or grid.task or raw.get("task") or DEFAULT_TASK
            cfg = config_for(raw, f"{grid_path} (variant {variant.name})")
            out.append((variant.name, raw["task"], cfg))
    return out


def check_tasks(grid: GridConfig, grid_path: Path) -> None:
    """The grid's `task:` and its variants' are registered tasks (a ConfigError names the field)."""
    if grid.task is not None:
        get_task(grid.task, f"{grid_path}: task")
    for i, variant in enumerate(grid.variants):
        if variant.task is not None:
            get_task(variant.task, f"{grid_path}: variants.{i}.task")


def _is_current(cfg: RunConfig) -> bool:
    """A run is skipped when it finished (done marker) with the very same resolved config (its saved one
    validated as its task's: sections of other tasks that older versions wrote there do not count)."""
    return read_done(cfg.run_dir) is not None and same_config(cfg)


def run_one(task: str, cfg_raw: dict) -> dict:
    """Run one configuration (in this process) and return its summary; used by the grid's workers. A run
    of the same config stopped part-way (preempted, killed) goes on from its checkpoint."""
    cfg = config_for({**cfg_raw, "task": task}, f"<{task} run>")
    spec = get_task(task)
    resume = has_checkpoint(cfg.run_dir) and same_config(cfg)
    return spec.finish(spec.train(cfg, resume=resume, overwrite=not resume, show_progress=False)) or {}


def _run_isolated(todo: list, jobs: int, log, failures: dict[str, str]) -> None:
    """Each run in a fresh process, `jobs` at a time, submitted only as a slot frees (so none waits queued
    inside the pool). After a preemption signal no other run starts and the signal goes on, once, to the
    running ones (each stops at its next step with a checkpoint); then Preempted is raised."""
    ctx = multiprocessing.get_context("spawn")
    fresh = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}  # a new process per run
    pending, running, stopped, passed, left_out = list(todo), {}, None, False, False
    with PreemptWatch() as watch, ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, **fresh) as pool:
        while pending or running:
            while pending and len(running) < jobs and not watch.requested and stopped is None:
                _v, t, c = pending.pop(0)
                running[pool.submit(run_one, t, c.model_dump(mode="json"))] = c.name
            finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            if watch.requested and not passed:
                for proc in list(getattr(pool, "_processes", {}).values()):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.Signals[watch.requested])
                passed = True
            for fut in finished:
                name = running.pop(fut)
                try:
                    log(_done_line(name, fut.result()))
                except Preempted as err:
                    stopped = err
                except Exception as err:  # noqa: BLE001 - one failed run must not lose the others
                    failures[name] = f"{type(err).__name__}: {err}"
            if stopped is not None or watch.requested:
                left_out, pending = left_out or bool(pending), []
    if stopped is None and left_out:  # the signal came between two runs
        stopped = Preempted(watch.requested or "a signal", 0, 0, 0, "none (no run was under way)")
    if stopped is not None:
        raise stopped


def _done_line(name: str, s: dict) -> str:
    acc, secs = s.get("test_accuracy"), s.get("seconds_per_epoch")
    return (f"done {name}: test accuracy {'n/a' if acc is None else f'{acc:.4f}'}, "
            f"{'n/a' if secs is None else f'{secs:.2f}'} s/epoch")


def run_grid(grid_path: str | Path, overrides: list[str] | None = None, log=print) -> Path:
    """Run every unfinished run of the grid, then write the comparison files; returns the grid folder."""
    grid_path = Path(grid_path)
    grid = load_grid(grid_path)
    runs = expand_grid(grid, grid_path, overrides)
    grid_dir = grid.grid_dir
    grid_dir.mkdir(parents=True, exist_ok=True)
    todo = []
    for v, t, c in runs:
        if _is_current(c):
            log(f"skip {c.name}: finished")
        else:
            todo.append((v, t, c))
    t0, load0 = time.time(), os.getloadavg()
    failures: dict[str, str] = {}
    if todo:
        log(f"{grid.name}: {len(todo)} of {len(runs)} runs to do ({'isolated, ' if grid.isolate else ''}"
            f"{grid.jobs} at a time)")
    if grid.isolate:
        _run_isolated(todo, grid.jobs, log, failures)
    else:
        for _v, t, c in todo:
            try:
                s = run_one(t, c.model_dump(mode="json"))
                log(_done_line(c.name, s))
            except Preempted:
                raise
            except Exception as err:  # noqa: BLE001
                failures[c.name] = f"{type(err).__name__}: {err}"
    wall = time.time() - t0
    rows = [{"variant": v, "task": t, **(read_done(c.run_dir) or {}), "name": c.name} for v, t, c in runs]
    runs_seconds = sum(r.get("wall_seconds") or 0.0 for r in rows)
    meta = {"grid": grid.name, "file": str(grid_path), "runs": len(runs), "ran": len(todo),
            "failed": failures, "wall_seconds": round(wall, 1), "runs_seconds": round(runs_seconds, 1),
            "cpu_count": os.cpu_count(), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
            "jobs": grid.jobs, "isolate": grid.isolate}
    write_comparison(grid_dir, rows, [v.name for v in grid.variants], meta)
    if failures:
        details = "; ".join(f"{k}: {v}" for k, v in failures.items())
        raise RunsFailed(f"{len(failures)} runs failed: {details}")
    return grid_dir


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def aggregate(rows: list[dict], order: list[str]) -> list[dict]:
    """One row per variant: mean and std over its finished seeds of every metric in METRICS."""
    out = []
    for variant in order:
        done = [r for r in rows if r["variant"] == variant and "test_accuracy" in r]
        row: dict = {"variant": variant, "n_seeds": len(done),
                     "n_params": done[0].get("n_params") if done else None}
        for key in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std([r.get(key) for r in done])
        out.append(row)
    return out


def _fmt(mean: float, std: float, digits: int) -> str:
    return "n/a" if np.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(agg: list[dict]) -> str:
    """The comparison as a Markdown table."""
    extra = [(k, h, d) for k, h, d in OPTIONAL if any(not np.isnan(r[f"{k}_mean"]) for r in agg)]
    lines = ["| variant | test accuracy | " + "".join(f"{h} | " for _, h, _ in extra)
             + "val loss | parameters | s / epoch | peak memory (MB) | seeds |",
             "|---|---|" + "---|" * len(extra) + "---|---:|---|---|---:|"]
    for r in agg:
        params = f"{r['n_params']:,}" if r["n_params"] is not None else "n/a"
        shown = "".join(f"{_fmt(r[f'{k}_mean'], r[f'{k}_std'], d)} | " for k, _, d in extra)
        lines.append(f"| {r['variant']} | {_fmt(r['test_accuracy_mean'], r['test_accuracy_std'], 4)} | {shown}"
                     f"{_fmt(r['val_loss_mean'], r['val_loss_std'], 4)} | {params} | "
                     f"{_fmt(r['seconds_per_epoch_mean'], r['seconds_per_epoch_std'], 2)} | "
                     f"{_fmt(r['peak_mem_mb_mean'], r['peak_mem_mb_std'], 0)} | {r['n_seeds']} |")
    return "\n".join(lines)


def write_comparison(grid_dir: Path, rows: list[dict], order: list[str], meta: dict) -> list[dict]:
    """Write comparison.csv / .md / .png, runs.csv and grid.json; returns the aggregated rows."""
    agg = aggregate(rows, order)
    with (grid_dir / "comparison.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(agg[0]))
        w.writeheader()
        w.writerows(agg)
    cols = ["name", "variant", "seed", "test_accuracy", "test_top3", "zero_shot_top1", "linear_probe", "val_loss",
            "n_params", "trainable_params",
            "epochs_to_95", "seconds_per_epoch",
            "peak_mem_mb", "rss_rise_mb", "peak_rss_mb", "cuda_peak_mb", "epochs", "wall_seconds"]
    with (grid_dir / "runs.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (grid_dir / "grid.json").write_text(json.dumps(meta, indent=2))
    tasks = sorted({r["task"] for r in rows})
    task = ", ".join(tasks)
    measures = {get_task(t).measure for t in tasks}
    note = "test accuracy: " + (measures.pop() if len(measures) == 1 else
                                "; ".join(f"{t}: {get_task(t).measure}" for t in tasks))
    (grid_dir / "comparison.md").write_text(
        f"# {meta['grid']} ({task})\n\nMean ± std over seeds. {note}; "
        "val loss: last epoch's validation loss; "
        "s / epoch: training time per epoch; peak memory: CUDA max allocated on a GPU, else the rise of the "
        "process's resident set during training.\n\n" + markdown_table(agg) + "\n\n"
        f"This invocation: {meta['ran']} of {meta['runs']} runs in {meta['wall_seconds']:.0f} s wall time "
        f"({meta['jobs']} at a time, {meta['cpu_count']} CPUs, load average "
        f"{meta['loadavg_start'][0]:.1f} at start, {meta['loadavg_end'][0]:.1f} at end). "
        f"Sum of the runs' own wall times: {meta['runs_seconds']:.0f} s.\n")
    _plot(agg, grid_dir / "comparison.png", meta["grid"])
    return agg


def _plot(agg: list[dict], out: Path, title: str) -> Path:
    """Bars of test accuracy and seconds per epoch (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in agg]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(names)), 3.8))
    panels = ((axes[0], "test_accuracy", "test accuracy"), (axes[1], "seconds_per_epoch", "s / epoch"))
    for ax, key, label in panels:
        means = np.array([r[f"{key}_mean"] for r in agg], dtype=float)
        stds = np.array([r[f"{key}_std"] for r in agg], dtype=float)
        ax.bar(x, np.nan_to_num(means), yerr=np.nan_to_num(stds), capsize=4, color="#4c72b0")
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
        if key == "test_accuracy" and np.isfinite(means).any():
            lo = float(np.nanmin(means - stds))
            ax.set_ylim(max(0.0, lo - 0.5 * (1 - lo) - 0.005), 1.0 + 0.15 * (1 - lo) + 0.002)
            for xi, m in zip(x, means):
                if np.isfinite(m):
                    ax.text(xi, m, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
