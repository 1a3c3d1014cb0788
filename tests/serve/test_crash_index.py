"""`index add` killed with SIGKILL mid-write (while staging, and between moving the old folder aside
and the new one in) leaves the old version or the new one, never a broken folder, and a serving
process answers every request throughout. The swap is only slowed (an environment hook) to widen
the window the kill lands in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from jointspace.index.build import build_index
from jointspace.index.store import SLOW_SWAP_ENV, IndexStore

JOINTSPACE = str(Path(sys.executable).parent / "jointspace")


def _poll(url: str, stop: threading.Event, codes: list[int]) -> None:
    body = json.dumps({"vector": [1.0] * 16, "k": 5}).encode()
    while not stop.is_set():
        req = urllib.request.Request(f"{url}/search", body, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                codes.append(r.status)
        except urllib.error.HTTPError as err:
            codes.append(err.code)
        except OSError:
            codes.append(0)
        time.sleep(0.02)


def _kill_add(cmd: list[str], folder: Path, wait_for: str) -> None:
    """Start `index add` and SIGKILL it once a staging (`tmp`) or moved-aside (`old`) folder exists."""
    env = {**os.environ, SLOW_SWAP_ENV: "5"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not any(folder.parent.glob(f".{folder.name}.{wait_for}-*")):
        assert proc.poll() is None, "index add finished before the kill"
        assert time.time() < deadline
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_index_add_killed_mid_write_leaves_old_or_new_and_serving_goes_on(tiny_run, digits_dir, tmp_path, served):
    folder = tmp_path / "live"
    n0 = build_index(tiny_run, digits_dir, folder, splits=["train"]).n_items
    add = [JOINTSPACE, "index", "add", str(folder), str(digits_dir), "--split", "test"]
    codes: list[int] = []
    stop = threading.Event()
    with served(folder) as url:
        poller = threading.Thread(target=_poll, args=(url, stop, codes))
        poller.start()
        try:
            for stage in ("tmp", "old"):  # killed while writing the new version / between the renames
                _kill_add(add, folder, stage)
                store = IndexStore.open(folder, recover=True)  # what any command sees next
                assert store.n_items == n0, stage  # the old version, whole
                assert store.search([[1.0] * 16], 3, {})[0]
            done = subprocess.run(add, capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stderr[-2000:]
            time.sleep(2.5)  # the server reopens changed folders within a second
        finally:
            stop.set()
            poller.join()
    assert IndexStore.open(folder).n_items == n0 * 2  # train and test: 60 samples x 3 modalities each
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
