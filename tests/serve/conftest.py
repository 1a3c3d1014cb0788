"""Serve tests reuse the index tests' tiny run and index (same on-disk cache, trained once per session)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("_jointspace_index_fixtures",
                                               Path(__file__).parents[1] / "index" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
tiny_run = _fixtures.tiny_run
tiny_index = _fixtures.tiny_index
