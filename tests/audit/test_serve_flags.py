"""The web service shows a hit's audit flags when the index's run has an audit."""

from __future__ import annotations

import pytest

from jointspace.audit.findings import LEAK, Finding
from jointspace.audit.folder import write_findings
from jointspace.run_dir import RunDir

pytest.importorskip("fastapi")


def test_search_hits_carry_the_runs_audit_flags(tiny_run, tiny_index, tmp_path):
    from fastapi.testclient import TestClient

    from jointspace.serve.app import create_app

    def search() -> list[dict]:
        with TestClient(create_app(tiny_index, load_model=False)) as client:
            r = client.post("/search", json={"vector": [0.5] * 16, "k": 5})
            assert r.status_code == 200, r.text
            return r.json()["results"][0]["hits"]

    run = RunDir(tiny_run)
    before = run.last_audit.read_bytes() if run.last_audit.exists() else None
    try:
        run.last_audit.unlink(missing_ok=True)
        hits = search()
        assert all(h["audit"] == [] for h in hits)  # no audit: no flags
        key = hits[0]["key"]
        folder = tmp_path / "audit"
        folder.mkdir()
        write_findings(folder, [Finding(key, LEAK, 0.99, "test", "k-train", "train")], {})
        run.write_last_audit({"folder": str(folder), "counts": {LEAK: 1}})
        flagged = {h["key"]: h["audit"] for h in search()}
        assert flagged[key] == [{"issue": LEAK, "score": "0.99", "partner_key": "k-train", "modality": "all",
                                 "suggested": "", "split": "test"}]
        assert all(v == [] for k, v in flagged.items() if k != key)
    finally:
        run.last_audit.unlink(missing_ok=True)
        if before is not None:
            run.last_audit.write_bytes(before)
