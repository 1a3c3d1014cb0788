"""A sweep's results: sweep.csv (every trial), sweep.md (best trial, top 10, the config that reproduces
the best) and sweep.html (optimisation history, fANOVA parameter importances, parallel coordinates,
contours of the two most important parameters; the Pareto front for several objectives)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import shlex
import warnings
from pathlib import Path

import yaml

from jointspace.sweep.config import SweepConfig

BEST = "best.yaml"


def _rows(study) -> list[dict]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.values or []
        rows.append({"number": t.number, "state": t.state.name, **{f"value_{i}": v for i, v in enumerate(values)},
                     "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                     "pruned_at_epoch": t.last_step if t.state.name == "PRUNED" else None,
                     **{f"param:{k}": v for k, v in t.params.items()}})
    return rows


def _png(draw) -> str:
    """A matplotlib Optuna plot as an <img> (or a note when it cannot be drawn, e.g. too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = draw()
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
    except Exception as err:  # noqa: BLE001 - a plot that cannot be drawn is said, the rest still written
        plt.close("all")
        return f"<p>(not drawn: {html.escape(type(err).__name__)}: {html.escape(str(err)[:200])})</p>"


def _html(cfg: SweepConfig, study, md: str) -> str:
    import optuna.visualization.matplotlib as vis
    from optuna.importance import FanovaImportanceEvaluator

    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    parts = [f"<h1>sweep {html.escape(cfg.name)}</h1>", f"<pre>{html.escape(md)}</pre>"]
    if len(cfg.objectives) > 1:
        parts += ["<h2>Pareto front</h2>", _png(lambda: vis.plot_pareto_front(study))]
        return "\n".join(parts)
    parts += ["<h2>Optimisation history</h2>", _png(lambda: vis.plot_optimization_history(study))]
    parts += ["<h2>Intermediate values (pruning)</h2>", _png(lambda: vis.plot_intermediate_values(study))]
    top: list[str] = []
    if len(done) >= 2 and len({k for t in done for k in t.params}) >= 1:
        evaluator = FanovaImportanceEvaluator(seed=cfg.seed)
        parts += ["<h2>Parameter importances (fANOVA)</h2>",
                  _png(lambda: vis.plot_param_importances(study, evaluator=evaluator))]
        try:
            import optuna

            top = list(optuna.importance.get_param_importances(study, evaluator=evaluator))[:2]
        except Exception:  # noqa: BLE001 - importances need enough distinct trials
            top = []
    parts += ["<h2>Parallel coordinates</h2>", _png(lambda: vis.plot_parallel_coordinate(study))]
    if len(top) == 2:
        parts += [f"<h2>Contour: {html.escape(top[0])} x {html.escape(top[1])}</h2>",
                  _png(lambda: vis.plot_contour(study, params=top))]
    return "<html><body style='font-family:sans-serif'>" + "\n".join(parts) + "</body></html>"


def _markdown(cfg: SweepConfig, study, seconds: float, base_raw: dict | None) -> str:
    trials = study.get_trials(deepcopy=False)
    states = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    stopped = sum(t.state.name == "FAIL" and "preempted" in t.user_attrs for t in trials)
    names = " / ".join(f"{o.metric} ({o.direction})" for o in cfg.objectives)
    lines = [f"# sweep {cfg.name}", "", (f"Objective: {names}. Trials: {states['COMPLETE']} complete, "
             f"{states['PRUNED']} pruned, {states['FAIL'] - stopped} failed, "
             f"{f'{stopped} preempted (queued again to resume), ' if stopped else ''}"
             f"{states['RUNNING']} running; "
             f"{seconds:.0f} s in this invocation. Storage: `{cfg.storage_url}`."), ""]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if not done:
        return "\n".join(lines + ["No complete trial yet."])
    if len(cfg.objectives) == 1:
        best = study.best_trial
        sign = -1 if cfg.objectives[0].direction == "maximize" else 1
        ranked = sorted(done, key=lambda t: sign * t.values[0])[:10]
        lines += [f"Best: trial {best.number}, {cfg.objectives[0].metric} = {best.values[0]:.4f}", ""]
    else:
        ranked = study.best_trials[:10]
        lines += [f"Pareto front: trials {', '.join(str(t.number) for t in study.best_trials)}", ""]
        best = ranked[0]
    keys = sorted({k for t in ranked for k in t.params})
    lines += ["| trial | " + " | ".join(o.metric for o in cfg.objectives) + " | " + " | ".join(keys) + " |",
              "|---:|" + "---:|" * len(cfg.objectives) + "---|" * len(keys)]
    for t in ranked:
        vals = " | ".join(f"{v:.4f}" for v in t.values)
        lines.append(f"| {t.number} | {vals} | " + " | ".join(str(t.params.get(k, "—")) for k in keys) + " |")
    from jointspace.sweep.space import overrides_of

    sets = " ".join(f"--set {shlex.quote(o)}" for o in overrides_of(cfg.set) + overrides_of(best.params))
    lines += ["", (f"Reproduce the best trial: `jointspace train {cfg.sweep_dir / BEST}` (the base config with the "
              "sweep's `set` and these values), or on the base config:"), "", "```bash",
              f"jointspace train BASE {sets}", "```"]
    return "\n".join(lines)


def _best_config(cfg: SweepConfig, study, base_raw: dict) -> dict | None:
    """The base config with the sweep's `set` and the best trial's values, as a full mapping."""
    from jointspace.config import apply_overrides
    from jointspace.sweep.space import overrides_of

    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not done:
        return None
    best = study.best_trial if len(cfg.objectives) == 1 else study.best_trials[0]
    raw = apply_overrides(json.loads(json.dumps(base_raw)), overrides_of(cfg.set) + overrides_of(best.params))
    raw["name"] = f"{cfg.name}-best"
    return raw


def write_report(cfg: SweepConfig, study, seconds: float, base_raw: dict | None = None) -> Path:
    """sweep.csv, sweep.md and sweep.html in the sweep folder; returns sweep.md's path."""
    out = cfg.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(study)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    md = _markdown(cfg, study, seconds, base_raw)
    best = _best_config(cfg, study, base_raw or {})
    if best is not None:
        (out / BEST).write_text(yaml.safe_dump(best, sort_keys=False))
    (out / "sweep.md").write_text(md + "\n")
    (out / "sweep.html").write_text(_html(cfg, study, md))
    return out / "sweep.md"
