"""Fusion classifiers over any set of modalities: early, intermediate, late and transformer fusion.

Every model maps a batch dict (modality name -> tensor, as `SplitData.batch` gives) to class logits
[B, n_classes]; `features(batch)` is the fused representation the classifier reads.

- early: spatial inputs resized to one HxW, channels stacked, one CNN (input-level fusion).
- intermediate: a CNN stem per modality, feature maps merged (concat / add / multiply) after
  `merge_stage` stages, then shared later stages.
- late: a tower + projection head per modality; the embeddings are concatenated before one classifier,
  or each has its own classifier and the logits are averaged.
- transformer: each tower's embedding becomes a token (+ a learned modality embedding); a small
  nn.TransformerEncoder reads [CLS, tokens] and the CLS output is classified.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from jointspace.config import ModelConfig, TowerConfig, _Strict, renamed_key
from jointspace.errors import UsageError
from jointspace.kinds import Prep, get_kind, input_channels, with_role
from jointspace.model import build_towers, load_heads, tower_config
from jointspace.towers import tower_parameters
from jointspace.towers.groups import keep_norms_eval
from jointspace.towers.heads import build_head
from jointspace.towers.image import ConvNet


class FusionConfig(_Strict):
    """A classifier fusing the run's modalities (`data.modalities`); towers come from `model.towers`."""

    strategy: Literal["early", "intermediate", "late", "transformer"] = "late"
    size: tuple[int, int] | None = None  # early/intermediate: common HxW (default: the first modality's)
    channels: list[int] = Field(default_factory=lambda: [16, 32, 64])  # early/intermediate CNN stages
    downsample: Literal["maxpool", "stride"] | None = None  # conv stems/towers (None: maxpool / towers' own)
    norm: Literal["batch", "group", "none"] = "batch"
    merge: Literal["concat", "add", "multiply"] = "concat"  # intermediate: how feature maps are merged
    merge_stage: int = Field(1, ge=1)  # intermediate: per-modality stages before the merge
    combine: Literal["embedding", "logits"] = "embedding"  # late: concat embeddings, or mean of logits
    token_dim: int = Field(64, ge=8)  # transformer: width of the modality tokens
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    hidden: int = Field(0, ge=0)  # classifier MLP hidden width (0: linear classifier)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _former_kind(cls, raw: Any) -> Any:
        return renamed_key(raw, "kind", "strategy", "fusion")  # "kind" now means a data kind only


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, C, H, W] to `size` (no-op when it already has it)."""
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=size, mode="bilinear",
                                                                      align_corners=False)


def _classifier(in_dim: int, n_classes: int, hidden: int = 0, dropout: float = 0.0) -> nn.Module:
    """Linear classifier, or a one-hidden-layer MLP when `hidden` > 0."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, n_classes))
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_classes))


class FusionClassifier(nn.Module):
    """Common interface: `features(batch) -> [B, D]`, `forward(batch) -> logits [B, n_classes]`."""

    modalities: list[str]
    classifier: nn.Module

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.features(batch))


class EarlyFusion(FusionClassifier):
    """Input-level fusion: resize every spatial input to `size`, stack channels, one CNN."""

    def __init__(self, in_chans: dict[str, int], size: tuple[int, int], n_classes: int,
                 channels: list[int], downsample: str = "maxpool", norm: str = "batch", hidden: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.modalities = list(in_chans)
        self.size = tuple(size)
        self.cnn = ConvNet(sum(in_chans.values()), tuple(channels), downsample, norm)
        self.classifier = _classifier(self.cnn.out_dim, n_classes, hidden, dropout)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([_resize(batch[m], self.size) for m in self.modalities], dim=1)  # [B, sum C, H, W]
        return self.cnn(x)


class IntermediateFusion(FusionClassifier):
    """Per-modality CNN stems for the first `merge_stage` stages, merged, then shared stages."""

    def __init__(self, in_chans: dict[str, int], size: tuple[int, int], n_classes: int, channels: list[int],
                 merge: str = "concat", merge_stage: int = 1, downsample: str = "maxpool",
                 norm: str = "batch", hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if not 1 <= merge_stage <= len(channels):
            raise UsageError(f"fusion.merge_stage must be in [1, {len(channels)}] (len(fusion.channels)), "
                             f"got {merge_stage}")
        if merge not in ("concat", "add", "multiply"):
            raise UsageError(f"fusion.merge must be concat/add/multiply, got {merge!r}")
        self.modalities = list(in_chans)
        self.size = tuple(size)
        self.merge = merge
        stem_channels = tuple(channels[:merge_stage])
        self.stems = nn.ModuleDict({m: ConvNet(c, stem_channels, downsample, norm)
                                    for m, c in in_chans.items()})
        width = stem_channels[-1] * (len(in_chans) if merge == "concat" else 1)
        self.trunk = ConvNet(width, tuple(channels[merge_stage:]), downsample, norm, first_downsample=True)
        self.classifier = _classifier(self.trunk.out_dim, n_classes, hidden, dropout)

    def merged_map(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The merged feature map [B, C', h, w] at the merge stage."""
        maps = [self.stems[m].forward_features(_resize(batch[m], self.size)) for m in self.modalities]
        if self.merge == "concat":
            return torch.cat(maps, dim=1)
        out = maps[0]
        for x in maps[1:]:
            out = out + x if self.merge == "add" else out * x
        return out

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.trunk(self.merged_map(batch))


class ModalityEncoders(nn.Module):
    """One tower + projection head per modality (the JointModel parts): `{modality: [B, embed_dim]}`."""

    def __init__(self, towers: nn.ModuleDict, heads: nn.ModuleDict, locked: list[str] | None = None):
        super().__init__()
        self.towers, self.heads = towers, heads
        self.locked = list(locked or [])  # frozen towers (`freeze: true`) stay in eval mode

    def train(self, mode: bool = True) -> ModalityEncoders:
        super().train(mode)
        for m in self.locked:
            self.towers[m].eval()
        keep_norms_eval(self)  # locked norms of partly unlocked towers (`freeze_norms`)
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.heads[m](t(batch[m], batch.get(f"{m}_len"))) for m, t in self.towers.items()}


class LateFusion(FusionClassifier):
    """Per-modality towers; combine embeddings (concat -> classifier) or logits (mean over modalities)."""

    def __init__(self, towers: ModalityEncoders, embed_dim: int, n_classes: int, combine: str = "embedding",
                 hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        if combine not in ("embedding", "logits"):
            raise UsageError(f"fusion.combine must be embedding or logits, got {combine!r}")
        self.encoders = towers
        self.modalities = list(towers.towers)
        self.combine = combine
        if combine == "embedding":
            self.classifier = _classifier(embed_dim * len(self.modalities), n_classes, hidden, dropout)
        else:
            self.classifiers = nn.ModuleDict({m: _classifier(embed_dim, n_classes, hidden, dropout)
                                              for m in self.modalities})

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.encoders(batch)
        return torch.cat([emb[m] for m in self.modalities], dim=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.combine == "embedding":
            return self.classifier(self.features(batch))
        emb = self.encoders(batch)
        return torch.stack([self.classifiers[m](emb[m]) for m in self.modalities]).mean(0)


class TransformerFusion(FusionClassifier):
    """Modality tokens (tower embedding + modality embedding) and a CLS token through a TransformerEncoder."""

    def __init__(self, towers: ModalityEncoders, token_dim: int, n_classes: int, layers: int = 2,
                 heads: int = 4, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.encoders = towers
        self.modalities = list(towers.towers)
        self.modality_embed = nn.Parameter(torch.randn(len(self.modalities), token_dim) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, token_dim))
        block = nn.TransformerEncoderLayer(token_dim, heads, 2 * token_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(token_dim)
        self.classifier = _classifier(token_dim, n_classes, hidden, dropout)

    def features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.encoders(batch)
        tokens = torch.stack([emb[m] for m in self.modalities], dim=1) + self.modality_embed  # [B, M, D]
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.ln(self.encoder(x))[:, 0]


def build_encoders(mcfg: ModelConfig, kinds: dict[str, str], prep: Prep, embed_dim: int,
                   downsample: str | None = None, init: dict | None = None) -> ModalityEncoders:
    """Towers + heads as the contrastive model builds them (`model.towers`); `downsample` forced on the
    towers that take it, if given."""
    towers: dict[str, TowerConfig] = {}
    for m, kind in kinds.items():
        tcfg = tower_config(mcfg, m, kind, prep)
        if downsample is not None and "downsample" in (tower_parameters(tcfg.name) or {}):
            tcfg = tcfg.model_copy(update={"params": {**tcfg.params, "downsample": downsample}})
        towers[m] = tcfg  # keeps freeze / lora / grad_checkpointing
    built = build_towers(mcfg.model_copy(update={"towers": towers}), kinds, prep, init)
    h = mcfg.head
    heads = nn.ModuleDict({m: build_head(t.out_dim, embed_dim, h.type, h.hidden, h.dropout) for m, t in built.items()})
    load_heads(heads, init)
    return ModalityEncoders(nn.ModuleDict(built), heads, [m for m, t in towers.items() if t.freeze])


def shapes_prep(kinds: dict[str, str], input_shapes: dict[str, tuple[int, ...]]) -> Prep:
    """A Prep with the channels (and image size) that per-sample input shapes show."""
    channels = input_channels({m: torch.empty((0, *input_shapes[m])) for m in kinds}, kinds)
    picture = with_role(kinds, "picture")
    sizes = {"image_size": int(input_shapes[picture][-1])} if picture else {}
    return Prep(sizes, channels=channels)


def build_fusion(fcfg: FusionConfig, mcfg: ModelConfig, kinds: dict[str, str],
                 input_shapes: dict[str, tuple[int, ...]], n_classes: int, prep: Prep | None = None,
                 init: dict | None = None) -> FusionClassifier:
    """Build the configured fusion classifier for modalities `kinds` (name -> kind) with per-sample
    input shapes `input_shapes` (name -> (C, H, W) for spatial modalities); `prep` is the data's."""
    mods = list(kinds)
    shown = shapes_prep(kinds, input_shapes)
    prep = prep.updated(channels=shown.channels) if prep else shown
    if fcfg.strategy in ("early", "intermediate"):
        if init and init["towers"]:
            raise UsageError(f"fusion.strategy={fcfg.strategy} has no towers to start from a run "
                             "(use late or transformer)")
        flat = [m for m in mods if not get_kind(kinds[m]).spatial]
        if flat:
            raise UsageError(f"fusion.strategy={fcfg.strategy} needs spatial inputs [C, H, W]; {flat} are not "
                             f"(use late or transformer fusion)")
        in_chans = {m: int(input_shapes[m][0]) for m in mods}
        size = tuple(fcfg.size) if fcfg.size else tuple(int(s) for s in input_shapes[mods[0]][-2:])
        down, f = fcfg.downsample or "maxpool", fcfg
        if fcfg.strategy == "early":
            return EarlyFusion(in_chans, size, n_classes, f.channels, down, f.norm, f.hidden, f.dropout)
        return IntermediateFusion(in_chans, size, n_classes, f.channels, f.merge, f.merge_stage, down, f.norm,
                                  f.hidden, f.dropout)
    if fcfg.strategy == "late":
        towers = build_encoders(mcfg, kinds, prep, mcfg.embed_dim, fcfg.downsample, init)
        return LateFusion(towers, mcfg.embed_dim, n_classes, fcfg.combine, fcfg.hidden, fcfg.dropout)
    if fcfg.strategy == "transformer":
        towers = build_encoders(mcfg, kinds, prep, fcfg.token_dim, fcfg.downsample, init)
        return TransformerFusion(towers, fcfg.token_dim, n_classes, fcfg.layers, fcfg.heads, fcfg.hidden,
                                 fcfg.dropout)
    raise UsageError(f"fusion.strategy must be early/intermediate/late/transformer, got {fcfg.strategy!r}")
