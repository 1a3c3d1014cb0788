"""The audit folder: audit.json (settings, counts, summaries, every finding), audit.csv (one row per finding),
samples.csv (each sample's outlier, uniqueness and representativeness scores) and audit.html; and reading
a folder's findings back (`data subsample --drop-from`, the web service's flags)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from jointspace.audit.findings import ISSUES, Finding
from jointspace.data.shards import DataError
from jointspace.errors import UsageError
from jointspace.outputs import OutputType, json_with

AUDIT_JSON, AUDIT_CSV, SAMPLES_CSV, AUDIT_HTML = "audit.json", "audit.csv", "samples.csv", "audit.html"
AUDIT_FOLDER = OutputType("audit folder", ((AUDIT_JSON, AUDIT_CSV),), json_with(AUDIT_JSON, "findings", "counts"))
COLUMNS = ("key", "issue", "score", "partner_key", "split", "partner_split", "modality", "label", "suggested")


def write_findings(out: Path, findings: list[Finding], about: dict) -> dict:
    """audit.json and audit.csv in `out`; returns audit.json's content."""
    rows = [f.row() for f in findings]
    counts = {issue: sum(r["issue"] == issue for r in rows) for issue in ISSUES}
    result = {**about, "counts": counts, "findings": rows}
    (out / AUDIT_JSON).write_text(json.dumps(result, indent=1))
    with (out / AUDIT_CSV).open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return result


def write_samples(out: Path, keys: list[str], splits, scores: dict) -> None:
    """samples.csv: key, split and each per-sample score."""
    names = list(scores)
    with (out / SAMPLES_CSV).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["key", "split", *names])
        for i, key in enumerate(keys):
            w.writerow([key, splits[i], *(f"{float(scores[n][i]):.6f}" for n in names)])


def parse_issues(text: str) -> set[str]:
    """A comma-separated list of issue kinds (`duplicate,leak,label`), checked."""
    chosen = {t.strip() for t in text.split(",") if t.strip()}
    unknown = sorted(chosen - set(ISSUES))
    if unknown or not chosen:
        raise UsageError(f"--issues: unknown issue kind {', '.join(unknown) or '(none given)'}; "
                         f"choose from {', '.join(ISSUES)}")
    return chosen


def read_rows(csv_path: str | Path) -> list[dict]:
    """The finding rows of an audit.csv (or of the audit.csv in an audit folder)."""
    path = Path(csv_path)
    path = path / AUDIT_CSV if path.is_dir() else path
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise DataError(f"{path}: cannot read the audit's findings ({err.strerror or err})") from None
    if rows and not {"key", "issue", "split"} <= set(rows[0]):
        raise DataError(f"{path}: not an audit.csv (needs the columns key, issue, split)")
    return rows


def flags_by_key(folder: str | Path) -> dict[str, list[dict]]:
    """Each audited key's findings ({issue, score, partner_key, modality, suggested}), from the folder's
    audit.csv; {} when it cannot be read."""
    try:
        rows = read_rows(folder)
    except DataError:
        return {}
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["key"], []).append({k: r.get(k, "") for k in ("issue", "score", "partner_key", "modality",
                                                                         "suggested", "split")})
    return out


def cleaning_plan(csv_path: str | Path, issues: str, relabel: bool) -> tuple[set[tuple[str, str]],
                                                                             dict[tuple[str, str], str]]:
    """What `data subsample --drop-from` does with an audit: the (split, key) of samples to drop (flagged with
    one of `issues`), and, with `relabel`, the label issues to give their suggested class instead."""
    chosen = parse_issues(issues)
    drop, new_labels = set(), {}
    for r in read_rows(csv_path):
        if r["issue"] not in chosen:
            continue
        where = (r["split"], r["key"])
        if relabel and r["issue"] == "label" and r.get("suggested"):
            new_labels[where] = r["suggested"]
        else:
            drop.add(where)
    return drop, {k: v for k, v in new_labels.items() if k not in drop}
