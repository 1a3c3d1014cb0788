"""The before/after table of `augment fix` (Markdown) and its self-contained HTML report."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from jointspace.run_dir import RunDir

FIX_HTML = "report.html"  # a fix folder's own report (not a run folder's)
ROW_NAMES = {"before": "before", "oversampled": "+ real images of the targets, upsampled (control)",
             "generated": "+ generated images (fix)"}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def fix_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per run, target recalls, accuracy, macro recall, and the change."""
    targets = result["targets"]
    overall = result["analysis"].get("overall", "accuracy")  # what the run's task calls its share of hits
    header = ["run", *(f"recall {c}" for c in targets), overall, "macro recall"]
    before = result["runs"]["before"]
    rows = []
    for key, m in result["runs"].items():
        cells = [ROW_NAMES.get(key, key)]
        for c in targets:
            delta = "" if key == "before" else f" ({m['recall'][c] - before['recall'][c]:+.3f})"
            cells.append(_f(m["recall"][c]) + delta)
        for k in ("accuracy", "macro_recall"):
            delta = "" if key == "before" else f" ({m[k] - before[k]:+.3f})"
            cells.append(_f(m[k]) + delta)
        rows.append(cells)
    return header, rows


def fix_table(result: dict) -> str:
    """Markdown: what was targeted and why, then the before/after table on the run's evaluation split."""
    a = result["analysis"]
    why = ", ".join(f"{c} ({a['recall'][c]:.3f} on {a['support'][c]} {a['split']} samples)" for c in result["targets"])
    conf = ", ".join(f"{d['true']}->{d['predicted']} x{d['count']}" for d in a["most_confused"][:5]) or "none"
    header, rows = fix_rows(result)
    lines = [f"Targets (lowest {a['split']} recall): {why}. Most confused on {a['split']}: {conf}.",
             (f"{result['n_generated']} generated images, source weight {result['upsample']:g}, "
              f"{result['samples_per_epoch']} samples per epoch in every retrained run. Metrics on {result['split']} "
              f"({result.get('measure', 'prediction')}):"),
             "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def image_grid(images: dict[str, np.ndarray], path: Path) -> Path:
    """A PNG with one row of images per class (uint8 [N, H, W] or [N, H, W, C])."""
    from PIL import Image

    rows = []
    width = max(len(a) for a in images.values())
    for arr in images.values():
        arr = arr if arr.ndim == 4 else arr[..., None].repeat(3, -1)
        pad = np.zeros((width - len(arr), *arr.shape[1:]), dtype=np.uint8)
        rows.append(np.concatenate(list(np.concatenate([arr, pad])), axis=1))
    grid = np.concatenate(rows, axis=0)
    scale = max(1, 256 // grid.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)
    return path


def write_fix_report(out: Path, result: dict, grid: Path) -> Path:
    """`out/report.html`: table, targets, generated samples, confusion matrices before and after."""
    from jointspace.viz.report import CSS, _html_table, _img

    header, rows = fix_rows(result)
    a = result["analysis"]
    esc = html.escape
    body = [f"<h1>Generative augmentation: {esc(Path(result['run']).name)}</h1>",
            f'<p class="meta">{esc(fix_table(result).splitlines()[0])}</p>',
            f"<h2>Before / after on {esc(result['split'])}</h2>", _html_table(header, rows, "fix"),
            f"<h2>Most confused on {esc(a['split'])} (before)</h2>",
            _html_table(["true", "predicted", "count"],
                        [[d["true"], d["predicted"], str(d["count"])] for d in a["most_confused"]], "confused"),
            "<h2>Generated images</h2>", _img(grid, "first generated images of each targeted class")]
    for key, m in result["runs"].items():
        png = RunDir(m["run"]).plots / f"confusion_{result['split']}.png"
        if png.exists():
            body.append(_img(png, f"{ROW_NAMES.get(key, key)}: confusion on {result['split']}"))
    doc = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>augment fix</title>'
           f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out / FIX_HTML
    path.write_text(doc, encoding="utf-8")
    return path
