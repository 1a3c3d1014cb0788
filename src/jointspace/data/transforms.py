"""Per-modality conversion of decoded values into fixed-shape tensors."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("image", "text", "sequence", "range")


def image_to_tensor(arrays: list[np.ndarray], size: int, channels: int | None = None) -> torch.Tensor:
    """uint8 images [H, W] or [H, W, C] -> float [N, C, size, size] in [-1, 1]; grey images are expanded
    to the most channels in the batch, or to `channels` when that is more (sources mixing grey and colour)."""
    out = []
    for arr in arrays:
        t = torch.from_numpy(np.array(arr, dtype=np.float32))
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        if t.shape[-2:] != (size, size):
            t = F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        out.append(t)
    channels = max(channels or 1, *(t.shape[0] for t in out))
    out = [t.expand(channels, -1, -1) if t.shape[0] == 1 else t for t in out]
    return torch.stack(out) / 127.5 - 1.0


def sequence_to_tensor(arrays: list[np.ndarray], max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature sequences [T, F] -> (padded [N, max_frames, F], lengths [N]); per-utterance CMVN."""
    n_feat = arrays[0].shape[-1]
    out = torch.zeros(len(arrays), max_frames, n_feat)
    lengths = torch.zeros(len(arrays), dtype=torch.long)
    for i, arr in enumerate(arrays):
        x = torch.from_numpy(np.asarray(arr, dtype=np.float32)[:max_frames])
        x = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-5) if len(x) > 1 else x * 0
        out[i, : len(x)] = x
        lengths[i] = len(x)
    return out, lengths


def range_to_tensor(arrays: list[np.ndarray], max_range: float | None = None) -> torch.Tensor:
    """Range images [H, W] (metres) -> [N, 1, H, W] scaled by log1p to about [0, 1]."""
    x = torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in arrays]))
    scale = max_range or float(x.max().clamp(min=1.0))
    return (torch.log1p(x.clamp(min=0)) / np.log1p(scale))[:, None]


def make_tokenizer(context_length: int, spec: str | None = None) -> Callable[[list[str]], torch.Tensor]:
    """texts -> ids [N, L]. `spec` None: OpenCLIP's BPE (shipped in the package); `hf:<folder>`: that
    Hugging Face tokenizer, padded with its pad id; `openclip:<model>`: that open_clip model's tokenizer."""
    if spec is None:
        tok = _bpe_tokenizer(context_length)  # building it reads the BPE merges: once per process
        return lambda texts: tok(list(texts), context_length=context_length)
    kind, _, name = spec.partition(":")
    if kind == "hf":
        return _hf_tokenizer(name, context_length)
    if kind == "openclip":
        import open_clip

        oc_tok = open_clip.get_tokenizer(name)
        return lambda texts: oc_tok(list(texts), context_length=context_length)
    raise ValueError(f"tokenizer {spec!r}: expected hf:<folder> or openclip:<model>")


@functools.lru_cache(maxsize=8)
def _bpe_tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


@functools.lru_cache(maxsize=8)
def _hf_tokenizer(folder: str, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def encode(texts: list[str]) -> torch.Tensor:
        out = tok(list(texts), padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")
        return out["input_ids"].long()

    return encode
