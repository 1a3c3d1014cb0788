"""Text tower: a small transformer over BPE token ids (OpenCLIP's tokenizer), pooled at the EOT token."""

from __future__ import annotations

import torch
from torch import nn

from jointspace.errors import UsageError
from jointspace.towers.registry import register_tower

VOCAB_SIZE = 49408  # OpenCLIP's SimpleTokenizer


class TextTransformer(nn.Module):
    """Token + position embeddings, a pre-norm transformer encoder, EOT (or mean) pooling."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, context_length: int = 16, width: int = 128,
                 layers: int = 2, heads: int = 4, pool: str = "eot", dropout: float = 0.0):
        super().__init__()
        if pool not in ("eot", "mean"):
            raise UsageError(f"pool must be eot or mean, got {pool!r}")
        self.token = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.randn(context_length, width) * 0.01)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(width)
        self.pool = pool
        self.out_dim = width

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        pad = ids == 0
        h = self.token(ids) + self.pos[: ids.shape[1]]
        h = self.ln(self.encoder(h, src_key_padding_mask=pad))
        if self.pool == "eot":  # the end-of-text token has the largest id, as in CLIP
            return h[torch.arange(h.shape[0], device=ids.device), ids.argmax(dim=-1)]
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)


@register_tower("transformer")
def transformer(vocab_size: int = VOCAB_SIZE, context_length: int = 16, width: int = 128, layers: int = 2,
                heads: int = 4, pool: str = "eot", dropout: float = 0.0) -> TextTransformer:
    """Scratch text transformer."""
    return TextTransformer(vocab_size, context_length, width, layers, heads, pool, dropout)
