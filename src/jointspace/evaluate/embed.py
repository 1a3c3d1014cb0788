"""Embedding whole splits and class prompts with a trained model."""

from __future__ import annotations

import torch

from jointspace.data.dataset import SplitData
from jointspace.evaluate.prompts import choose_prompts
from jointspace.kinds.text import make_tokenizer
from jointspace.model import JointModel


@torch.no_grad()
def embed_split(model: JointModel, data: SplitData, batch_size: int = 512,
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """L2-normalised embeddings [N, D] per modality of the split (model in eval mode)."""
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {m: [] for m in data.kinds if m in model.towers}
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)))
        batch = {k: v.to(device) for k, v in data.batch(idx).items()}
        for m, chunks in out.items():
            chunks.append(model.encode(m, batch).float().cpu())
    model.train(was_training)
    return {m: torch.cat(v) for m, v in out.items()}


@torch.no_grad()
def embed_values(model: JointModel, modality: str, values: torch.Tensor, device: torch.device | str = "cpu",
                 batch_size: int = 512) -> torch.Tensor:
    """L2-normalised embeddings [M, D] of one modality's inputs (e.g. every caption of a split)."""
    was_training = model.training
    model.eval()
    out = [model.encode(modality, {modality: values[s:s + batch_size].to(device)}).float().cpu()
           for s in range(0, len(values), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.embed_dim)


@torch.no_grad()
def embed_class_prompts(model: JointModel, text_modality: str, prompts: list[list[str]], context_length: int,
                        device: torch.device | str = "cpu", tokenizer: str | None = None) -> torch.Tensor:
    """One embedding per class: the normalised mean of its prompts' embeddings (CLIP prompt ensembling)."""
    was_training = model.training
    model.eval()
    tok = make_tokenizer(context_length, tokenizer)  # the text tower's own (None: OpenCLIP BPE)
    rows = []
    for class_prompts in prompts:
        emb = model.encode(text_modality, {text_modality: tok(class_prompts).to(device)}).float().mean(0)
        rows.append(torch.nn.functional.normalize(emb, dim=0).cpu())
    model.train(was_training)
    return torch.stack(rows)


def class_prompts(info: dict) -> list[list[str]] | None:
    """Prompts per class from dataset.json: explicit `zero_shot_prompts`, else templates x class names
    (`evaluate.prompts.choose_prompts` also says which)."""
    chosen = choose_prompts(info)
    return chosen[0] if chosen else None
