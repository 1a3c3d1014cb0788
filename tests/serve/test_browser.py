"""End to end: uvicorn on 127.0.0.1 and the web page driven in headless Chromium over the DevTools pipe."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image

from jointspace.data.shards import ReadStats, iter_samples, split_urls

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                                "chromium); the Makefile's test target installs it")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--remote-debugging-pipe"]


class DevTools:
    """Minimal Chrome DevTools protocol client over --remote-debugging-pipe (fds 3 and 4, NUL-framed JSON)."""

    def __init__(self, user_dir: str):
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        # chromium reads commands on fd 3 and writes replies on fd 4: bash moves the pipe ends there
        r, w = to_child_r, from_child_w
        wiring = f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", wiring, CHROMIUM, *FLAGS, f"--user-data-dir={user_dir}",
                                      "about:blank"], pass_fds=(r, w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)
            ready, _, _ = select.select([self._r], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise TimeoutError(f"DevTools: no reply to {method} in {timeout}s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buf += chunk

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._w)
        os.close(self._r)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["faiss", "milvus"])
def server(request, tiny_index):
    """uvicorn serving the tiny index (FAISS, or the same items in Milvus Lite) on 127.0.0.1 in a thread
    of this process (which holds the shared Milvus Lite file)."""
    import uvicorn

    from jointspace.serve.app import create_app

    index = tiny_index if request.param == "faiss" else request.getfixturevalue("tiny_milvus_index")
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_page_search_by_typing_and_by_dropping_an_image(server, digits_dir, tmp_path):
    sample = next(iter_samples(split_urls(digits_dir, "test"), ReadStats()))
    buf = io.BytesIO()
    Image.fromarray(np.asarray(sample["image"], np.uint8)).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    cdp = DevTools(str(tmp_path / "profile"))
    try:
        target = next(t for t in cdp.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        sid = cdp.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        cdp.send("Network.enable", session=sid)

        def js(expr: str):
            out = cdp.send("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True},
                           session=sid)
            return out["result"].get("value")

        def wait_for(expr: str, what: str, timeout: float = 30.0):
            deadline = time.time() + timeout
            while time.time() < deadline:
                value = js(expr)
                if value:
                    return value
                time.sleep(0.1)
            raise AssertionError(f"page: {what} did not happen; status: {js('document.body.innerText')[:500]}")

        state = """JSON.stringify({status: document.getElementById('status').textContent,
            cards: [...document.querySelectorAll('.result')].map(c => ({key: c.dataset.key,
              modality: c.dataset.modality, score: +c.dataset.score,
              img: c.querySelector('img') ? c.querySelector('img').naturalWidth : -1}))})"""
        # 1) a query given in the URL runs on load
        cdp.send("Page.navigate", {"url": f"{server}/?q=the+digit+four"}, session=sid)
        wait_for("document.getElementById('status').textContent.includes('results for \"the digit four\"')",
                 "search from ?q=")
        wait_for("[...document.querySelectorAll('.result img')].every(i => i.complete && i.naturalWidth > 0)",
                 "thumbnails loading")
        first = json.loads(js(state))
        assert len(first["cards"]) == 12 and all(c["img"] == 64 for c in first["cards"])
        assert [c["score"] for c in first["cards"]] == sorted((c["score"] for c in first["cards"]), reverse=True)
        # 2) typing into the box and pressing Enter, with results restricted to audio
        js("document.getElementById('target').value = 'audio'; const q = document.getElementById('q');"
           "q.focus(); q.select(); true")
        cdp.send("Input.insertText", {"text": "someone saying nine"}, session=sid)
        for kind in ("keyDown", "keyUp"):
            cdp.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                "windowsVirtualKeyCode": 13, "text": "\r"}, session=sid)
        wait_for("document.getElementById('status').textContent.includes('\"someone saying nine\"')", "typed search")
        typed = json.loads(js(state))
        assert len(typed["cards"]) == 12 and {c["modality"] for c in typed["cards"]} == {"audio"}
        # 3) dropping an image file on the drop zone searches by image
        js("document.getElementById('target').value = 'image'; true")
        js(f"""(() => {{
            const bytes = Uint8Array.from(atob('{b64}'), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], 'digit.png', {{type: 'image/png'}}));
            const zone = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop'])
              zone.dispatchEvent(new DragEvent(type, {{dataTransfer: dt, bubbles: true, cancelable: true}}));
            return true; }})()""")
        wait_for("document.getElementById('status').textContent.includes('digit.png (image)')", "drop search")
        dropped = json.loads(js(state))
        assert dropped["cards"][0]["key"] == sample["key"] and dropped["cards"][0]["score"] > 0.999
        # 4) a bad filter shows the service's message instead of results
        js("document.getElementById('where').value = 'colour=red'; document.getElementById('go').click(); true")
        wait_for("document.getElementById('status').textContent.startsWith('error 422')", "error display")
        assert "unknown key 'colour'" in js("document.getElementById('status').textContent")
        # nothing but the local server was contacted (no CDN, no network)
        urls = [e["params"]["request"]["url"] for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
        assert urls and all(u.startswith(server) for u in urls), urls
    finally:
        cdp.close()
