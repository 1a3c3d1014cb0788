"""The real server (`jointspace serve`: uvicorn on 127.0.0.1, the tiny digits index) against its own
/openapi.json under schemathesis's every check (coverage and fuzzing phases, bounded examples), with
and without a token. Any failed check fails the test, a 5xx included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jointspace serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not come up in {timeout:.0f} s")


@pytest.mark.parametrize("token", [None, "s3cret"], ids=["open", "token"])
def test_server_honours_its_openapi_contract(tiny_index, token):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    jointspace = Path(sys.executable).parent / "jointspace"
    cmd = [str(jointspace), "serve", str(tiny_index), "--port", str(port)] + (["--token", token] if token else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_healthy(url, proc)
        st = [str(Path(sys.executable).parent / "schemathesis"), "run", f"{url}/openapi.json", "--checks", "all",
              "--phases", "examples,coverage,fuzzing", "--max-examples", "40", "--workers", "1", "--seed", "7"]
        if token:
            st += ["--header", f"Authorization: Bearer {token}"]
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "st_hooks", "PYTHONPATH": str(HERE),
               "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
        result = subprocess.run(st, check=False, capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert "No issues found" in result.stdout and " passed" in result.stdout
    finally:
        proc.terminate()
        proc.wait(timeout=30)
