"""Self-contained HTML report (and CLI metrics table) for a training/evaluation run directory."""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np

from jointspace.kinds import with_role
from jointspace.run_dir import EVAL, METRICS, RunDir

log = logging.getLogger(__name__)

RECALL_COLS = [
    ("R@1", "R@1"),
    ("R@5", "R@5"),
    ("R@10", "R@10"),
    ("mAP@10", "mAP@10"),
    ("median_rank", "MedR"),
]
MAX_GRIDS = 8  # caption <-> anchor, then two per other modality: five modalities fit


def fmt(v: object, key: str = "") -> str:
    """Format a metric value: ranks with 1 decimal, rates with 3 decimals, missing as '-'."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else str(v)
    if key.endswith("rank"):
        return f"{v:.1f}"
    if key.startswith("n_"):
        return str(int(v))
    return f"{v:.3f}"


def load_embeddings(path: Path) -> dict[str, np.ndarray]:
    """Load an embeddings npz into a plain dict (no pickles); {} when missing."""
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _probe_rows(ev: dict) -> list[tuple[str, str, str, str]]:
    """Rows (modality, zero-shot top1, zero-shot top5, linear probe) for all modalities with any result."""
    zs = ev.get("zero_shot") or {}
    lp = ev.get("linear_probe") or {}
    rows = []
    for m in list(dict.fromkeys([*zs, *lp])):
        z = zs.get(m) or {}
        p = lp.get(m)
        p = p.get("accuracy", p.get("top1")) if isinstance(p, dict) else p
        rows.append((m, fmt(z.get("top1")), fmt(z.get("top5")), fmt(p)))
    return rows


def _recall_rows(ev: dict) -> list[list[str]]:
    """Rows [pair, R@1, R@5, R@10, mAP@10, MedR] for each ordered pair in eval['retrieval']."""
    ret = ev.get("retrieval") or {}
    return [[pair] + [fmt(m.get(k), k) for k, _ in RECALL_COLS] for pair, m in ret.items()]


def _plain_table(title: str, header: list[str], rows: list[list[str]]) -> str:
    """Render a fixed-width text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(r: list[str]) -> str:
        return "  ".join(
            x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(map(str, r), widths))
        )

    sep = "-" * len(line(header))
    return "\n".join([title, sep, line(header), sep, *map(line, rows), sep])


def _render(title: str, header: list[str], rows: list[list[str]]) -> str:
    """Render a table with rich when available, else as plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return _plain_table(title, header, rows)
    t = Table(title=title)
    for i, h in enumerate(header):
        t.add_column(h, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None, force_terminal=False).print(t)
    return buf.getvalue().rstrip()


def metrics_table(eval: dict) -> str:
    """Plain-text retrieval table (plus zero-shot / linear-probe table when present) for an eval dict."""
    head = f"split={eval.get('split', '?')}  n_samples={eval.get('n_samples', '?')}"
    parts = [head, _render("Retrieval", ["pair"] + [h for _, h in RECALL_COLS], _recall_rows(eval))]
    probe = _probe_rows(eval)
    if probe:
        parts.append(
            _render(
                "Classification",
                ["modality", "zero-shot top1", "zero-shot top5", "linear probe"],
                [list(r) for r in probe],
            )
        )
    if prompts_used(eval):
        parts.append(prompts_used(eval))
    return "\n".join(parts)


def prompts_used(ev: dict) -> str:
    """Which zero-shot prompts an eval used: captions, templates x class names, or given (and its file)."""
    used = ev.get("zero_shot_prompts")
    if not ev.get("zero_shot") or not isinstance(used, dict):
        return ""
    extra = f" ({used['file']})" if used.get("file") else ""
    filled = f"; templates for {', '.join(used['filled'])}" if used.get("filled") else ""
    return f"zero-shot prompts: {used.get('from', '?')}{extra}{filled}"


def select_pairs(modalities: list[str], kinds: dict[str, str] | None = None,
                 max_grids: int = MAX_GRIDS) -> list[tuple[str, str]]:
    """Ordered (query, gallery) pairs for retrieval grids: caption <-> anchor (the picture modality, else
    the first other) first, then each other modality -> anchor and caption -> it."""
    mods = list(dict.fromkeys(modalities))
    kinds = {m: k for m, k in (kinds or {}).items() if m in mods}
    caption = with_role(kinds, "captions")
    others = [m for m in mods if m != caption]
    anchor = with_role({m: kinds[m] for m in others if m in kinds}, "picture") or (others[0] if others else None)
    pairs = [(caption, anchor), (anchor, caption)] if caption and anchor else []
    for m in others:
        if m == anchor:
            continue
        pairs += [(m, anchor), (caption, m)] if caption else [(anchor, m), (m, anchor)]
    return list(dict.fromkeys(p for p in pairs if p[0] != p[1]))[:max_grids]


def centroid_confusion(data: dict, mod: str, ref: str) -> np.ndarray:
    """Confusion matrix of classifying ``mod`` embeddings by nearest ``ref`` class centroid (cosine)."""
    labels = np.asarray(data["labels"])
    n_cls = max(len(data.get("class_names", [])), int(labels.max()) + 1)
    r = data[f"emb_{ref}"].astype(np.float64)
    cent = np.zeros((n_cls, r.shape[1]))
    np.add.at(cent, labels, r)
    cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-12)
    sims = data[f"emb_{mod}"].astype(np.float64) @ cent.T
    sims[:, np.bincount(labels, minlength=n_cls) == 0] = -np.inf
    cm = np.zeros((n_cls, n_cls), dtype=np.int64)
    np.add.at(cm, (labels, sims.argmax(axis=1)), 1)
    return cm


def _img(path: Path, alt: str) -> str:
    """An <img> tag with the PNG embedded as a base64 data URI."""
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}"><figcaption>'
        f'{html.escape(alt)} (<a href="plots/{html.escape(path.name)}">{html.escape(path.name)}</a>)'
        "</figcaption></figure>"
    )


def _html_table(header: list[str], rows: list[list[str]], cls: str) -> str:
    """An escaped HTML table."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px}
td:not(:first-child){text-align:right;font-variant-numeric:tabular-nums}th{background:#f0f0f0}
img{max-width:100%;border:1px solid #ddd}figure{margin:1em 0}figcaption{font-size:.85em;color:#666}
.meta{color:#555}.note{color:#888;font-style:italic}"""


def _skipped_note(run_dir: Path, ev: dict) -> list[str]:
    """A line per split that lost unreadable samples (run.json at training, eval.json at evaluation)."""
    run = RunDir(run_dir)
    lost = dict(run.read_info().skipped) if run.has_info() else {}
    if ev.get("skipped_samples"):
        lost[f"{ev.get('split', 'eval')} (eval)"] = {"n_skipped": ev["skipped_samples"], "reasons": []}
    return [f'<p class="note">skipped {v["n_skipped"]} unreadable samples of {html.escape(k)}'
            + (f': {html.escape("; ".join(v["reasons"][:3]))}' if v.get("reasons") else "") + "</p>"
            for k, v in lost.items()]


def _audit_section(run: RunDir) -> list[str]:
    """The run's last `jointspace audit` (its counts per issue kind and a link to its page), when it has one."""
    last = run.read_last_audit()
    if not last or not isinstance(last.get("counts"), dict):
        return []
    esc, folder = html.escape, Path(str(last.get("folder", "")))
    rows = [[str(k), str(v)] for k, v in last["counts"].items()]
    return ["<h2>Data audit</h2>",
            (f'<p class="meta">{esc(str(last.get("data", "")))} &middot; splits {esc(", ".join(last.get("splits", [])))} '
            f'&middot; {esc(str(last.get("n_samples", "?")))} samples &middot; '
            f'<a href="{esc(folder.as_uri() if folder.is_absolute() else str(folder))}">{esc(str(folder))}</a></p>'),
            _html_table(["issue", "findings"], rows, "audit")]


def _tables(ev: dict) -> list[str]:
    """Retrieval and zero-shot / linear-probe tables."""
    rrows = _recall_rows(ev)
    body = ["<h2>Cross-modal retrieval</h2>",
            _html_table(["pair"] + [h for _, h in RECALL_COLS], rrows, "recall") if rrows
            else f'<p class="note">no retrieval results in {EVAL}</p>']
    prows = _probe_rows(ev)
    if prows:
        body.append("<h2>Zero-shot and linear-probe classification</h2>")
        body.append(_html_table(["modality", "zero-shot top1", "zero-shot top5", "linear probe"],
                                [list(r) for r in prows], "probe"))
        if prompts_used(ev):
            body.append(f'<p class="note">{html.escape(prompts_used(ev))}</p>')
    return body


def _embedding_sections(data: dict, mods: list[str], plots: Path, max_points: int, seed: int, method: str) -> list[str]:
    """The joint map, nearest-caption-centroid confusion matrices and retrieval grids (each kind drawn
    as its kind draws)."""
    from jointspace.viz.plots import npz_kinds, plot_confusion, plot_retrieval_grid, plot_umap

    kinds = npz_kinds(data)
    caption = with_role({m: k for m, k in kinds.items() if m in mods}, "captions")
    class_names = [str(c) for c in data.get("class_names", [])]
    emb = {m: data[f"emb_{m}"] for m in mods}
    p = plot_umap(emb, data["labels"], class_names, plots / "umap.png", max_points=max_points, seed=seed,
                  method=method)
    body = ["<h2>Joint embedding map</h2>", _img(p, "joint 2-D projection; colour = class, marker = modality")]
    labelled = bool(data["labelled"]) if "labelled" in data else True
    if caption and len(mods) > 1 and labelled:  # unlabelled data: every sample its own class, no centroids
        body.append(f"<h2>Nearest {html.escape(caption)}-centroid classification</h2>")
        for m in [m for m in mods if m != caption][:4]:
            cm = centroid_confusion(data, m, caption)
            acc = np.trace(cm) / max(1, cm.sum())
            p = plot_confusion(cm, class_names, plots / f"confusion_{m}.png",
                               title=f"{m} vs. {caption} class centroids (acc {acc:.3f})")
            body.append(_img(p, f"{m}: predicted class = nearest {caption} class centroid"))
    pairs = select_pairs(mods, kinds)
    if pairs:
        body.append("<h2>Retrieval examples</h2>")
        body.append('<p class="note">green = same class as query, red = different; numbers are cosine '
                    "similarities</p>")
    for q, g in pairs:
        body.append(_img(plot_retrieval_grid(data, q, g, plots / f"retrieval_{q}_to_{g}.png"), f"{q} \u2192 {g}"))
    return body


def write_report(
    run_dir: Path, split: str = "test", method: str = "umap", max_points: int = 2000, seed: int = 0
) -> Path:
    """Render plots into RUN/plots/ and a self-contained RUN/report.html; return the html path."""
    from jointspace.viz.plots import plot_curves

    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    plots = run.plots
    plots.mkdir(parents=True, exist_ok=True)
    ev, records = run.read_eval(), run.read_metrics()
    data = load_embeddings(run.embeddings(split))
    mods = [k.removeprefix("emb_") for k in data if k.startswith("emb_")]
    name, esc = run_dir.resolve().name, html.escape
    body = [f"<h1>Run report: {esc(name)}</h1>",
            (f'<p class="meta">split: {esc(str(ev.get("split", split)))} &middot; samples: '
             f"{esc(str(ev.get('n_samples', '?')))} &middot; modalities: "
             f"{esc(', '.join(ev.get('modalities', mods)))}</p>"),
            *_skipped_note(run_dir, ev), *_tables(ev), *_audit_section(run), "<h2>Training curves</h2>"]
    body.append(_img(plot_curves(records, plots / "curves.png"), "loss, R@1, learning rate, temperature") if records
                else f'<p class="note">{METRICS} missing or empty</p>')
    if mods and data.get("labels") is not None:
        body += _embedding_sections(data, mods, plots, max_points, seed, method)
    else:
        body.append(f'<p class="note">no embeddings found at {esc(str(run.embeddings(split).relative_to(run.path)))}</p>')
    doc = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(name)} report</title>'
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    out = run.report
    out.write_text(doc, encoding="utf-8")
    log.info("wrote %s", out)
    return out
