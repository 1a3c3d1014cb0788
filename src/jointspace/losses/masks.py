"""Positive masks: which gallery items count as positives of an anchor."""

from __future__ import annotations

import torch

from jointspace.errors import UsageError


def positive_mask(batch: dict[str, torch.Tensor], mode: str, text_key: str | None = None) -> torch.Tensor | None:
    """[B, B] bool mask of positives: "instance" (None = identity), "label", or "caption" (same token ids)."""
    if mode == "instance":
        return None
    if mode == "label":
        labels = batch["label"]
        return labels[:, None] == labels[None, :]
    if mode == "caption":
        if text_key is None or text_key not in batch:
            raise UsageError("positives: caption needs a text modality in the batch")
        ids = batch[text_key]
        return (ids[:, None, :] == ids[None, :, :]).all(-1)
    raise UsageError(f"positives must be instance/label/caption, got {mode!r}")
