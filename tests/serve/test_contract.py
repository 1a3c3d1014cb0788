"""The real server (`jointspace serve`: uvicorn on 127.0.0.1, the tiny digits index) against its own
/openapi.json under schemathesis's every check (coverage and fuzzing phases, bounded examples), with
and without a token, over FAISS and over Milvus Lite. Any failed check fails the test, a 5xx included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize(("backend", "token"), [("faiss", None), ("faiss", "s3cret"), ("milvus", "s3cret")],
                         ids=["open", "token", "milvus"])
def test_server_honours_its_openapi_contract(request, tiny_index, served, backend, token):
    """Over Milvus (a Lite file of the module's own, so the `serve` subprocess can open it) with a token
    only: the open run checks the same routes without auth, which does not depend on the backend."""
    index = tiny_index if backend == "faiss" else request.getfixturevalue("own_milvus_index")
    with served(index, token) as url:
        st = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "--checks", "all",
              "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--workers", "1", "--seed", "7"]
        if token:
            st += ["--header", f"Authorization: Bearer {token}"]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks", "PYTHONPATH": str(HERE),
               "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
        result = subprocess.run(st, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout and " passed" in result.stdout
