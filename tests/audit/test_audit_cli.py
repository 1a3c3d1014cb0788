"""`jointspace audit RUN DATA --out DIR` end to end on digits shards with planted exact faults."""

from __future__ import annotations

import csv
import json

from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.run_dir import RunDir

from .conftest import read_split

runner = CliRunner()


def test_audit_finds_the_planted_copies_and_writes_its_folder(tiny_run, faulty_digits, tmp_path):
    out = tmp_path / "audit"
    done = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(out)])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "audit.json").read_text())
    rows = list(csv.DictReader((out / "audit.csv").open()))
    assert len(rows) == len(result["findings"]) == sum(result["counts"].values())
    exact = {(r["key"], r["issue"], r["partner_key"], r["split"], r["partner_split"]) for r in rows
             if r["score"] == "1.0"}
    keys = {r["key"] for r in rows}
    assert ("dup-0", "duplicate") in {(k, i) for k, i, *_ in exact}
    assert any(k == "leak-1" and i == "leak" and s == "test" and ps == "train" for k, i, _, s, ps in exact)
    assert keys and result["n_samples"] == 182 and set(result["splits"]) == {"train", "val", "test"}
    assert "labels" in result and "accuracy" in result["labels"] and result["representative"]
    assert result["labels"]["voters"] == 5 and "vote of the 5 nearest others" in result["labels"]["probabilities"]
    assert result["mismatch_classes"] == "5-fold linear probe per modality"
    html = (out / "audit.html").read_text()
    assert "Exact duplicates" in html and "data:image/png;base64," in html and "leak-1" in html
    assert (out / "samples.csv").read_text().count("\n") == 183
    pointer = RunDir(tiny_run).read_last_audit()
    assert pointer["folder"] == str(out.resolve()) and pointer["counts"] == result["counts"]

    clean = tmp_path / "clean"
    done = runner.invoke(app, ["data", "subsample", str(faulty_digits), "--out", str(clean), "--drop-from",
                               str(out / "audit.csv"), "--issues", "duplicate,leak"])
    assert done.exit_code == 0, done.output
    flagged = {(r["split"], r["key"]) for r in rows if r["issue"] in ("duplicate", "leak")}
    kept = {(s, x["key"]) for s in ("train", "val", "test") for x in read_split(clean, s)}
    assert not kept & flagged and len(kept) == 182 - len(flagged) and ("train", "dup-0") in flagged
    label_rows = [r for r in rows if r["issue"] == "label"]
    if label_rows:  # relabelling is opt-in: the label issue stays, with cleanlab's suggested class
        done = runner.invoke(app, ["data", "subsample", str(faulty_digits), "--out", str(tmp_path / "relabelled"),
                                   "--drop-from", str(out), "--issues", "label", "--relabel"])
        assert done.exit_code == 0 and f"relabelled {len(label_rows)}" in done.output, done.output
    bad = runner.invoke(app, ["data", "subsample", str(faulty_digits), "--out", str(tmp_path / "y"),
                              "--drop-from", str(out), "--issues", "dupes"])
    assert bad.exit_code == 2 and "unknown issue kind dupes" in bad.output

    again = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output  # an earlier audit is not replaced silently
    bad = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(tmp_path / "x"),
                              "--finders", "exact,nope"])
    assert bad.exit_code == 2 and "unknown finder nope" in bad.output
    bad = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(tmp_path / "x"),
                              "--mismatch-margin", "0"])
    assert bad.exit_code == 2 and "--mismatch-margin must be a positive number of nats" in bad.output
    bad = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(tmp_path / "x"),
                              "--class-evidence", "2"])
    assert bad.exit_code == 2 and "--class-evidence must be at least --mismatch-margin (2.303 nats" in bad.output
