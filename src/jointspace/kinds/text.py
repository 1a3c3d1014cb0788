"""Text: UTF-8 captions in shards, token ids [N, context_length] from the text tower's tokenizer."""

from __future__ import annotations

import functools
import importlib.util
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from jointspace.errors import UsageError
from jointspace.kinds.base import Kind, Prep, QueryError, Size

MAX_TEXT_CHARS = 2000
# a query text must hold a character outside JSON Schema's (ECMAScript's) whitespace, so the API's
# schema pattern and this check agree exactly (Python's str.isspace also counts \x1c-\x1f)
NOT_BLANK = "[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


def make_tokenizer(context_length: int, spec: str | None = None) -> Callable[[list[str]], torch.Tensor]:
    """texts -> ids [N, L]. `spec` None: OpenCLIP's BPE (shipped in the package); `hf:<folder>`: that
    Hugging Face tokenizer, padded with its pad id; `openclip:<model>`: that open_clip model's tokenizer."""
    if spec is None:
        tok = _bpe_tokenizer(context_length)  # building it reads the BPE merges: once per process
        return lambda texts: tok(list(texts), context_length=context_length)
    source, _, name = spec.partition(":")
    if source == "hf":
        return _hf_tokenizer(name, context_length)
    if source == "openclip":  # openclip:<model>[|<cache_dir>]
        oc_tok = _openclip_tokenizer(name)
        return lambda texts: oc_tok(list(texts), context_length=context_length)
    raise UsageError(f"tokenizer {spec!r}: expected hf:<folder> or openclip:<model>")


@functools.lru_cache(maxsize=8)
def _openclip_tokenizer(name: str):
    """An open_clip model's tokenizer, built once per process (building it reads its vocabulary: ~0.1 s,
    which every batch paid before)."""
    import open_clip

    model, _, cache_dir = name.partition("|")
    return open_clip.get_tokenizer(model, cache_dir=cache_dir or None)


@functools.lru_cache(maxsize=8)
def _bpe_tokenizer(context_length: int):
    return _openclip_tokenizer_module().SimpleTokenizer(context_length=context_length)


@functools.lru_cache(maxsize=1)
def _openclip_tokenizer_module() -> ModuleType:
    """open_clip's `tokenizer` module. `import open_clip.tokenizer` first runs the package's `__init__`, which
    imports every model it has (timm, transformers...: 2-3 s a process, most of a small training run's start);
    the tokenizer file itself needs only ftfy, regex, numpy and torch. So unless open_clip is imported already,
    that one file of the installed package is run alone (same code, same BPE file beside it)."""
    if "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.tokenizer"]
    package = importlib.util.find_spec("open_clip")  # finds the package without running it
    try:
        spec = importlib.util.spec_from_file_location(
            "jointspace_openclip_tokenizer", Path(next(iter(package.submodule_search_locations))) / "tokenizer.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except (ImportError, OSError, AttributeError, TypeError, StopIteration):  # not installed, or the file changed shape
        import open_clip.tokenizer

        return open_clip.tokenizer


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(folder: str, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def encode(texts: list[str]) -> torch.Tensor:
        out = tok(list(texts), padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")
        return out["input_ids"].long()

    return encode


class TextKind(Kind):
    name = "text"
    extensions = ("txt", "caption", "text")
    aliases = ("text", "caption", "txt")
    folder_words = ("text", "caption", "txt", "description", "transcript")
    default_tower = "transformer"
    captions = True
    sizes = (Size("context_length", 16, minimum=2, doc="tokens per caption, start and end tokens included"),)

    def encode(self, value: Any) -> tuple[str, bytes]:
        return "txt", str(value).encode("utf-8")

    def decode(self, ext: str, data: bytes) -> str:
        return data.decode("utf-8")

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        return str(value), None

    def folder_value(self, path: Path, root: Path) -> str:
        """A caption file's text (undecodable bytes replaced), stripped."""
        return path.read_text(encoding="utf-8", errors="replace").strip()

    def to_tensors(self, name: str, values: list, prep: Prep) -> dict[str, torch.Tensor]:
        return {name: make_tokenizer(prep.context_length, prep.tokenizers.get(name))(list(values))}

    def tower_defaults(self, name: str, prep: Prep) -> dict[str, Any]:
        return {"context_length": prep.context_length}

    def read_query(self, source: bytes | str | Path, prep: Prep, name: str, label: str) -> str:
        raise QueryError(f"{label}: {name} is text (a text modality: pass the text itself, not a file)")

    def check_query(self, name: str, value: Any, tower) -> None:
        if not isinstance(value, str) or not re.search(NOT_BLANK, value):
            raise QueryError(f"{name}: expected a non-empty string")
        if len(value) > MAX_TEXT_CHARS:
            raise QueryError(f"{name}: text longer than {MAX_TEXT_CHARS} characters")

    def stack_previews(self, values: list) -> np.ndarray:
        return np.array([str(v) for v in values])

    def draw(self, ax, value) -> None:
        ax.set_facecolor("#f7f7f7")
        ax.text(0.5, 0.5, textwrap.fill(str(value), 22)[:220], ha="center", va="center", fontsize=7,
                transform=ax.transAxes, wrap=True)
