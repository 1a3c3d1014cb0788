"""audit.html: counts, then per issue kind a gallery of the worst findings, each sample shown in every
modality as its kind previews it (captions as their text), its partner beside it."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from jointspace.audit.findings import DUPLICATE, ISSUES, LABEL, LEAK, MISMATCH, NEAR, OUTLIER, Finding
from jointspace.audit.folder import AUDIT_HTML
from jointspace.audit.space import Space
from jointspace.kinds import get_kind

PER_GALLERY = 24
THUMB = 96
TITLES = {DUPLICATE: "Exact duplicates", NEAR: "Near duplicates", LEAK: "Leaks across train and val/test",
          MISMATCH: "Mismatched pairs", LABEL: "Label issues (cleanlab)", OUTLIER: "Outliers"}
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 10px}th{background:#f0f0f0}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;padding:6px;font-size:.8em;max-width:580px}
.card img{image-rendering:pixelated;border:1px solid #eee;margin:2px}.side{display:inline-block;vertical-align:top;max-width:270px;
margin-right:8px}.cap{max-width:150px;color:#333;font-style:italic}.meta{color:#555}.note{color:#888;font-style:italic}
.bad{color:#b00}"""


def _png(array: np.ndarray) -> str:
    img = Image.fromarray(np.asarray(array))
    scale = max(1, THUMB // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.thumbnail((THUMB * 2, THUMB))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _show(space: Space, modality: str, row: int) -> str:
    """One value as its kind shows it: text for captions, else the kind's preview."""
    kind = get_kind(space.kinds[modality])
    value = space.values.get(modality, [None] * len(space))[row]
    if value is None:
        return ""
    if kind.captions:
        return f'<div class="cap">{html.escape(str(value))[:200]}</div>'
    try:
        return f'<img alt="{html.escape(modality)}" title="{html.escape(modality)}" src="data:image/png;base64,{_png(kind.preview(value))}">'
    except (NotImplementedError, ValueError, TypeError):
        return f'<span class="note">{html.escape(modality)}: no preview</span>'


def _side(space: Space, rows: dict[str, int], key: str, head: str) -> str:
    row = rows.get(key)
    if row is None:
        return ""
    label = space.class_name(int(space.labels[row]))
    shown = "".join(_show(space, m, row) for m in space.modalities)
    return (f'<div class="side"><div>{html.escape(head)} <b>{html.escape(key)}</b> ({html.escape(str(space.splits[row]))}, '
            f"{html.escape(label)})</div>{shown}</div>")


def _card(space: Space, rows: dict[str, int], f: Finding) -> str:
    extra = f' &rarr; suggested <b class="bad">{html.escape(f.suggested)}</b>' if f.suggested else ""
    where = f" &middot; {html.escape(f.modality)}" if f.modality != "all" else ""
    partner = _side(space, rows, f.partner_key, "partner") if f.partner_key else ""
    return (f'<div class="card"><div class="meta">score {f.score:.3f}{where}{extra}</div>'
            f"{_side(space, rows, f.key, 'sample')}{partner}</div>")


def page_html(space: Space, found: list[Finding], result: dict) -> str:
    """The whole page (self-contained: previews are embedded)."""
    rows = {k: i for i, k in enumerate(space.keys)}
    counts = result.get("counts", {})
    esc = html.escape
    body = [f"<h1>Audit of {esc(str(result.get('data', '')))}</h1>",
            (f'<p class="meta">run {esc(str(result.get("run", "")))} &middot; splits {esc(", ".join(result.get("splits", [])))}'
            f" &middot; {len(space)} samples &middot; modalities {esc(', '.join(space.modalities))}</p>"),
            "<table><tr><th>issue</th><th>findings</th></tr>"
            + "".join(f"<tr><td>{esc(TITLES[i])}</td><td>{counts.get(i, 0)}</td></tr>" for i in ISSUES) + "</table>"]
    for issue in ISSUES:
        worst = sorted((f for f in found if f.issue == issue), key=lambda f: -f.score)[:PER_GALLERY]
        if worst:
            body.append(f"<h2>{esc(TITLES[issue])}</h2><p class=\"note\">the {len(worst)} highest scores of "
                        f"{counts.get(issue, len(worst))}</p>")
            body.append('<div class="gallery">' + "".join(_card(space, rows, f) for f in worst) + "</div>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>audit</title><style>{CSS}</style>'
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_page(out, space: Space, found: list[Finding], result: dict) -> None:
    (out / AUDIT_HTML).write_text(page_html(space, found, result), encoding="utf-8")
