"""Pretrained weights by name, through the libraries' own caches: Hugging Face model ids (huggingface_hub)
and open_clip tags (open_clip's pretrained registry). Downloads go to `cache_dir` (default: the
libraries' own, under HF_HOME); `HF_HUB_OFFLINE=1` is honoured, and weights missing on an offline machine
raise one MissingWeightsError naming the tag, the repository, the cache folder and the fetch command."""

from __future__ import annotations

import os
import re
from pathlib import Path

from jointspace.errors import JointspaceError

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class MissingWeightsError(JointspaceError, FileNotFoundError):
    """Pretrained weights that are neither a local file/folder nor in the cache (or cannot be fetched)."""


def hf_offline() -> bool:
    """Whether Hugging Face downloads are switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def hub_cache(cache_dir: str | None) -> str:
    """The cache folder downloads go to: `cache_dir`, else huggingface_hub's (HF_HUB_CACHE under HF_HOME)."""
    if cache_dir:
        return str(Path(cache_dir).expanduser())
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def fetch_hint(repo: str, cache_dir: str | None, filename: str | None = None) -> str:
    """The command that puts a repository (or one of its files) into the cache on a connected machine."""
    target = f"{repo} {filename}" if filename else repo
    return f"HF_HUB_OFFLINE=0 hf download {target} --cache-dir {hub_cache(cache_dir)}"


def missing(what: str, repo: str, cache_dir: str | None, err: Exception, filename: str | None = None,
            hint: str | None = None) -> MissingWeightsError:
    state = "offline (HF_HUB_OFFLINE=1)" if hf_offline() else "could not download it"
    return MissingWeightsError(
        f"{what}: repository {repo!r} is not in the cache {hub_cache(cache_dir)} and this machine is {state} "
        f"({type(err).__name__}). Fetch it on a connected machine with: "
        f"{hint or fetch_hint(repo, cache_dir, filename)}")


def resolve_hf(name: str | Path, cache_dir: str | None = None, what: str = "model") -> str:
    """A local Hugging Face model folder (with config.json), or the cached snapshot folder of a hub id
    (downloaded first when online)."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json); save one with "
                                    "model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")
        return str(folder)
    text = str(name)
    if not HF_ID.match(text) or text.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{text}: not a Hugging Face model folder (no such folder) nor a hub id (org/name)")
    from huggingface_hub import snapshot_download

    try:  # PyTorch weights, configs, tokenizer and processor files; not TF / Flax / ONNX copies
        return snapshot_download(repo_id=text, cache_dir=cache_dir, local_files_only=hf_offline(),
                                 ignore_patterns=["*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "onnx/*"])
    except Exception as err:  # noqa: BLE001 - network, HTTP and cache errors alike: not there, cannot fetch
        raise missing(f"{what} {text!r}", text, cache_dir, err) from None


def openclip_tags(model: str) -> list[str]:
    """open_clip's pretrained tags for an architecture."""
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(model))


def openclip_source(model: str, tag: str) -> tuple[str, str | None]:
    """(repository or URL, file name) a tag's weights come from, as open_clip's registry says."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model, tag) or {}
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"].rstrip("/")) if not cfg["hf_hub"].endswith("/") else \
            (cfg["hf_hub"].rstrip("/"), None)
        return repo, filename
    return cfg.get("url", "?"), None


def describe_openclip_tags(limit: int = 6) -> str:
    """One line for `jointspace towers`: how many tags open_clip knows, and ViT-B-32's."""
    import open_clip

    pairs = open_clip.list_pretrained()
    shown = ", ".join(openclip_tags("ViT-B-32")[:limit])
    return (f"pretrained: a local file, any of open_clip's {len(pairs)} (architecture, tag) pairs "
            f"(ViT-B-32: {shown}, ...) or hf-hub:org/name")
