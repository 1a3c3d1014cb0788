"""Schemathesis hooks for tests/serve/test_contract.py (loaded through SCHEMATHESIS_HOOKS): uploads
declared as application/x-npy are real .npy arrays of the tiny digits index's audio (frames x 13)."""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st


def _npy(frames: int, seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).normal(size=(frames, 13)).astype(np.float32), allow_pickle=False)
    return buf.getvalue()


schemathesis.openapi.media_type("application/x-npy", st.builds(_npy, st.integers(1, 96), st.integers(0, 2**31)))

# the one rule of a form that JSON Schema cannot state: a named modality must read the uploaded file
PICTURE = ("image", "img", "photo", "picture")  # the image kind's words; the index's other file kind is audio


@schemathesis.hook
def filter_case(ctx, case) -> bool:
    body = case.body
    if isinstance(body, dict) and any(v == [] for v in body.values()):
        return False  # an empty list sends no form part at all: the request on the wire is not this case
    if not isinstance(body, dict) or not body.get("modality") or "file" not in body:
        return True
    data = getattr(body["file"], "data", body["file"])
    signatures = (b"\x89PNG", b"\xff\xd8\xff", b"RIFF") if body["modality"] in PICTURE else (b"\x93NUMPY",)
    return isinstance(data, bytes) and data.startswith(signatures)
