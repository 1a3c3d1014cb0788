"""JointModel: one tower + projection head per modality, and the parameters its loss scores with."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jointspace.config import LossConfig, ModelConfig, TowerConfig
from jointspace.errors import UsageError
from jointspace.kinds import Prep, get_kind
from jointspace.losses import LogitParameters, loss_class
from jointspace.losses.extra import extra_key, flat_extra
from jointspace.towers import build_tower, tower_parameters, tower_tokenizer
from jointspace.towers.dedupe import batch_independent, distinct_rows, encode_unique
from jointspace.towers.groups import keep_norms_eval, tune_groups
from jointspace.towers.heads import build_head
from jointspace.towers.lora import apply_lora, enable_grad_checkpointing, freeze
from jointspace.towers.patch_dropout import apply_patch_dropout


def _old_logit_keys(model: JointModel, state: dict, prefix: str, *_args) -> None:
    """State dicts written when the model held `logit_scale` / `logit_bias` load into `model.logits`."""
    model.logits.rename_old_keys(state, prefix, f"{prefix}logits.")


class JointModel(nn.Module):
    """Embeds any of its modalities into one L2-normalised space. `logits`: the parameters the run's loss
    scores with (its class creates them: `PairLoss.logit_parameters`; None: InfoNCE's learned scale), here
    so that DDP, the optimizer and checkpoints see them with the towers."""

    def __init__(self, towers: dict[str, nn.Module], embed_dim: int, head_type: str = "linear",
                 head_hidden: int = 256, head_dropout: float = 0.0, logits: LogitParameters | None = None,
                 dedupe: bool = True):
        super().__init__()
        # first: its parameters lead `parameters()` as the model's own `logit_scale` / `logit_bias` did, so the
        # optimizer's groups and the clipping norm's sum keep their order (the same weights as before, bitwise)
        self.logits = logits if logits is not None else LogitParameters()
        self.towers = nn.ModuleDict(towers)
        self.heads = nn.ModuleDict(
            {m: build_head(t.out_dim, embed_dim, head_type, head_hidden, head_dropout) for m, t in towers.items()}
        )
        self.embed_dim = embed_dim
        self.locked: list[str] = []  # towers kept in eval mode (set by build_model from `freeze`)
        self.dedupe = dedupe  # identical inputs of a batch encoded once (towers that allow it)
        self.kinds: dict[str, str] = {}  # modality -> kind (build_model sets it): how inputs become tensors
        self.register_load_state_dict_pre_hook(_old_logit_keys)

    @property
    def modalities(self) -> list[str]:
        return list(self.towers)

    def train(self, mode: bool = True) -> JointModel:
        """As nn.Module.train, but locked towers (`freeze: true`) stay in eval mode (norm statistics, dropout),
        and so do the locked norm layers of partly unlocked towers (`freeze_norms`)."""
        super().train(mode)
        for m in self.locked:
            self.towers[m].eval()
        keep_norms_eval(self)
        return self

    def encode(self, modality: str, batch: dict[str, torch.Tensor], normalize: bool = True,
               plan: dict | None = None) -> torch.Tensor:
        """Embed one modality of a batch: [B, embed_dim]. With `plan` (from `host_plan`: training) the
        shapes and distinct rows were decided on the host and nothing here reads the device; without it
        (evaluation) they are decided here."""
        tower, head = self.towers[modality], self.heads[modality]
        x, lengths = batch[modality], batch.get(f"{modality}_len")
        if modality in self.kinds:  # compactly stored inputs (uint8 images) become what the tower takes, here
            x = get_kind(self.kinds[modality]).on_device(x)
        if plan is not None:
            rows = plan.get(modality)
            if rows is None:
                emb = head(tower(x, lengths))
            else:  # the distinct rows only, gathered back: the duplicates' gradients sum as on the whole batch
                first, inverse = rows
                emb = head(tower(x[first], None if lengths is None else lengths[first]))[inverse]
        elif self.dedupe and not torch.jit.is_tracing() and batch_independent(tower) and batch_independent(head):
            emb = encode_unique(lambda v, n: head(tower(v, n)), self._trimmed(modality, x), lengths)
        else:
            emb = head(tower(self._trimmed(modality, x), lengths))
        return F.normalize(emb.float(), dim=-1) if normalize else emb

    def _trimmed(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """x cut to the width its tower needs (towers with `host_width`: token columns no row uses)."""
        width = getattr(self.towers[modality], "host_width", None)
        return x[:, :width(x)] if width is not None and not torch.jit.is_tracing() else x

    def forward(self, batch: dict[str, torch.Tensor], modalities: list[str] | None = None,
                plan: dict | None = None) -> dict[str, torch.Tensor]:
        """Each modality's embeddings [B, D]; a modality's extra candidates in the batch (mined hard
        negatives, `losses.extra`) are embedded by its tower too, under their key: [B * n, D]."""
        wanted = modalities or self.modalities
        out = {m: self.encode(m, batch, plan=plan) for m in wanted if m in batch}
        out.update({extra_key(m): self.encode(m, flat_extra(batch, m)) for m in wanted if extra_key(m) in batch})
        return out

    def host_plan(self, host: dict[str, torch.Tensor], chunks: int = 1) -> tuple[dict[str, int], list[dict]]:
        """Shape decisions for a training batch, made on the host from CPU copies of its token inputs
        (`host`: modality -> [B, L] ids, this rank's rows) before the step: the width each token input
        is cut to (towers with `host_width`), and for each of `chunks` micro-batches (the rows
        `arange(B).chunk(chunks)`) the distinct rows of every token input whose tower may encode them
        once (model.dedupe): {modality: (first, inverse)} on the CPU."""
        widths = {m: self.towers[m].host_width(x) for m, x in host.items()
                  if m in self.towers and hasattr(self.towers[m], "host_width")}
        if not host:
            return widths, [{} for _ in range(chunks)]
        rows = torch.arange(len(next(iter(host.values())))).chunk(chunks)
        plans: list[dict] = [{} for _ in rows]
        for m, x in host.items():
            if m not in self.towers or not (self.dedupe and batch_independent(self.towers[m])
                                            and batch_independent(self.heads[m])):
                continue
            x = x[:, :widths[m]] if m in widths else x
            for plan, r in zip(plans, rows):
                found = distinct_rows(x[r])
                if found is not None:
                    plan[m] = found
        return widths, plans

def tower_config(cfg: ModelConfig, name: str, kind: str, prep: Prep) -> TowerConfig:
    """The tower config of a modality (its config entry, else its kind's default tower), with the
    parameters the data fixes (channels, sizes) filled in where the tower takes them and the config is silent."""
    tcfg = cfg.towers.get(name) or TowerConfig(name=get_kind(kind).default_tower)
    accepted = tower_parameters(tcfg.name) or {}
    data_params = {k: v for k, v in get_kind(kind).tower_defaults(name, prep).items() if k in accepted}
    return tcfg.model_copy(update={"params": {**data_params, **tcfg.params}})


def load_init(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a state dict a finished run gave, failing with the first parameter that does not fit."""
    own = module.state_dict()
    for key in sorted(set(own) | set(state)):
        if key not in state or key not in own:
            side = "is not in the run" if key not in state else "is not in this model"
            raise UsageError(f"{where}: parameter {key!r} {side}: the architectures differ")
        if own[key].shape != state[key].shape:
            raise UsageError(f"{where}: parameter {key!r} has shape {tuple(state[key].shape)} in the run and "
                             f"{tuple(own[key].shape)} here: the architectures differ")
    module.load_state_dict(state)


def build_towers(cfg: ModelConfig, kinds: dict[str, str], prep: Prep | None = None,
                 init: dict | None = None) -> dict[str, nn.Module]:
    """One tower per modality, tuned (freeze / LoRA / checkpointing) as configured; `init["towers"][m]` =
    (spec, state dict) starts a tower from a finished run's weights (before any adapter is added)."""
    unknown = [m for m in cfg.towers if m not in kinds]
    if unknown:
        raise UsageError(f"model.towers: {unknown} are not modalities of this run ({', '.join(kinds)})")
    towers = {}
    for name, kind in kinds.items():
        tcfg = tower_config(cfg, name, kind, prep or Prep())
        try:
            towers[name] = build_tower(tcfg.name, **tcfg.params)
            if init and name in init["towers"]:
                spec, state = init["towers"][name]
                load_init(towers[name], state, f"init_from {spec}")
            tune_tower(towers[name], tcfg)
        except (TypeError, ValueError) as err:
            raise UsageError(f"model.towers.{name}: {err}") from None
    return towers


def load_heads(heads: nn.ModuleDict, init: dict | None) -> None:
    """Heads start from the run's where every shape matches (else they stay freshly initialised)."""
    for m, state in (init or {}).get("heads", {}).items():
        own = heads[m].state_dict() if m in heads else {}
        if own.keys() == state.keys() and all(own[k].shape == state[k].shape for k in own):
            heads[m].load_state_dict(state)


def build_model(cfg: ModelConfig, kinds: dict[str, str], prep: Prep | None = None,
                init: dict | None = None, loss: str | None = None) -> JointModel:
    """Build towers for every modality (config entry or the default for its kind), their heads and the
    parameters the loss `loss` (config loss.name; None: its default) scores with."""
    towers = build_towers(cfg, kinds, prep, init)
    logits = loss_class(loss or LossConfig().name).logit_parameters(cfg.init_temperature, cfg.learn_temperature,
                                                                     cfg.max_logit_scale)
    model = JointModel(towers, cfg.embed_dim, cfg.head.type, cfg.head.hidden, cfg.head.dropout, logits,
                       cfg.dedupe_inputs)
    load_heads(model.heads, init)
    model.kinds = {m: k for m, k in kinds.items() if m in towers}
    model.locked = [m for m, t in cfg.towers.items() if m in towers and t.freeze]
    return model


def tune_tower(tower: nn.Module, tcfg: TowerConfig) -> None:
    """Apply a tower config's freezing, partial unlocking, layer decay, LoRA adapters, gradient checkpointing
    and patch dropout, in place."""
    if tcfg.freeze and tcfg.lora:
        raise UsageError("freeze and lora exclude each other (with lora only the adapters train)")
    if tcfg.freeze:
        freeze(tower)
    tune_groups(tower, tcfg.name, tcfg.unlocked_groups, tcfg.freeze_norms, tcfg.layer_decay)
    if tcfg.lora:
        targets = list(tcfg.lora.targets or getattr(tower, "default_lora_targets", ()))
        if not targets:
            raise UsageError(f"lora: tower {tcfg.name!r} has no default targets; set lora.targets")
        apply_lora(tower, targets, tcfg.lora.r, tcfg.lora.alpha, tcfg.lora.dropout)
    if tcfg.grad_checkpointing:
        enable_grad_checkpointing(tower, tcfg.name)
    if tcfg.patch_dropout:
        apply_patch_dropout(tower, tcfg.patch_dropout, tcfg.name, tcfg.freeze)


def text_tokenizers(cfg: ModelConfig) -> dict[str, str]:
    """Modality -> tokenizer spec for towers that read their own tokenizer's ids (others: OpenCLIP BPE)."""
    specs = {m: tower_tokenizer(t.name, t.params) for m, t in cfg.towers.items()}
    return {m: s for m, s in specs.items() if s is not None}


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
