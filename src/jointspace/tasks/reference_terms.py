"""What a contrastive run takes from finished runs (`reference_run.py`) each step: a guide's exclusions
(`loss.guide`, GISTEmbed's rule: candidates the guide scores above the anchor's own pair, less a margin, are
left out of its negatives) and a teacher's distillation term (`loss.distill`, open_clip's DistillClipLoss).
Both are bound to the step's batch and handed to the step in the binding loss's place; validation keeps
the plain task loss."""

from __future__ import annotations

from pathlib import Path

import torch

from jointspace.collectives import gather_with_grad
from jointspace.config import LossConfig, RunConfig
from jointspace.engine import StepContext
from jointspace.errors import UsageError
from jointspace.kinds import Prep
from jointspace.losses import LOSSES, BindingLoss, Exclusions, LossContext, distill_loss, guide_exclusions
from jointspace.run_dir import RunDir, RunInfo
from jointspace.tasks.reference_run import ReferenceRun, load_reference

GUIDE, TEACHER = "loss.guide", "loss.distill.teacher"


class BoundLoss:
    """One step's loss: the binding loss with the guide's exclusions in every pair's context, plus the
    teacher's distillation (summed over the pairs with their weights) x `weight`, logged as `distill`."""

    def __init__(self, loss_fn: BindingLoss, excluded: dict[tuple[str, str], Exclusions] | None,
                 teacher: dict[str, torch.Tensor] | None, teacher_scale: torch.Tensor | float, weight: float):
        self.loss_fn, self.excluded, self.teacher = loss_fn, excluded, teacher
        self.teacher_scale, self.weight = teacher_scale, weight

    def __call__(self, emb: dict[str, torch.Tensor], positives: torch.Tensor | None,
                 ctx: LossContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts = self.loss_fn(emb, positives, ctx, excluded=self.excluded)
        if self.teacher is None:
            return loss, parts
        term = self.distill(emb, ctx.logit_scale)
        parts["distill"] = term.detach()
        return loss + self.weight * term, parts

    def distill(self, emb: dict[str, torch.Tensor], scale: torch.Tensor) -> torch.Tensor:
        """The distillation term over the global batch, computed where the pair loss is (data parallel:
        the gathered batch, or this rank's anchors against it with `local_loss`)."""
        fn, rows, student = self.loss_fn, None, emb
        if fn.world_size > 1:
            student = {m: gather_with_grad(emb[m]) for m in self.teacher}
            n = emb[fn.pairs[0][0]].shape[0]
            rows = slice(fn.rank * n, (fn.rank + 1) * n) if fn.pair_loss.local_loss else None
        total = scale.new_zeros(())
        for a, b in fn.pairs:
            pair = distill_loss((student[a], student[b]), scale, (self.teacher[a], self.teacher[b]),
                                self.teacher_scale, rows)
            total = total + fn.weights[(a, b)] * pair
        return total


class ReferenceTerms:
    """The guide and the teacher of a run (either may be None; one run may be both)."""

    def __init__(self, loss: LossConfig, guide: ReferenceRun | None, teacher: ReferenceRun | None):
        self.loss, self.guide, self.teacher = loss, guide, teacher

    def bound(self, loss_fn: BindingLoss, local: dict[str, torch.Tensor], positives: torch.Tensor | None,
              ctx: StepContext) -> BoundLoss:
        """The loss of a step whose (this rank's) batch is `local` and global positive mask `positives`."""
        embedded: dict[int, dict[str, torch.Tensor]] = {}

        def embed(ref: ReferenceRun) -> dict[str, torch.Tensor]:
            if id(ref) not in embedded:
                embedded[id(ref)] = ref.embed(local, ctx.accum_steps, ctx.autocast)
            return embedded[id(ref)]

        excluded = None
        if self.guide is not None:
            g, loss = embed(self.guide), self.loss
            excluded = {(a, b): guide_exclusions(g[a] @ g[b].T, positives, loss.guide_margin, loss.guide_margin_strategy)
                        for a, b in loss_fn.pairs}
        if self.teacher is None:
            return BoundLoss(loss_fn, excluded, None, 1.0, 0.0)
        d = self.loss.distill
        scale = 1.0 / d.temperature if d.temperature is not None else self.teacher.scale()
        return BoundLoss(loss_fn, excluded, embed(self.teacher), scale, d.weight)


def _same_as_recorded(run_dir: Path, sources: dict[str, dict[str, str]]) -> None:
    """A resumed run's references are the runs it started with, unchanged (else it would not continue the
    same training)."""
    recorded = RunDir(run_dir).read_info().get("references") or {}
    for field, now in sources.items():
        was = recorded.get(field)
        if was is not None and was != now:
            raise UsageError(f"{field}: {now['run']} (fingerprint {now['fingerprint'][:12]}) is not the run "
                             f"{run_dir} started with ({was['run']}, fingerprint {was['fingerprint'][:12]})")


def reference_terms(cfg: RunConfig, loss_fn: BindingLoss, run_info: RunInfo, device: torch.device,
                    resume: bool) -> tuple[ReferenceTerms | None, RunInfo]:
    """The run's guide and teacher (None without `loss.guide` / `loss.distill`), loaded once each and
    checked against this run's modalities and Prep; run_info with their fingerprints (`references`)."""
    loss = cfg.loss
    if loss.guide is None and loss.distill is None:
        return None, run_info
    if loss.guide is not None and not loss_fn.pair_loss.leaves_out:
        able = ", ".join(n for n, c in LOSSES.items() if c.leaves_out)
        raise UsageError(f"loss.guide: loss {loss.name!r} cannot leave candidates out of its negatives ({able} can)")
    modalities = list(dict.fromkeys(m for pair in loss_fn.pairs for m in pair))
    prep, loaded = Prep.from_json(run_info.prep), {}

    def load(field: str, path: str) -> ReferenceRun:
        key = str(Path(path).resolve())
        if key not in loaded:
            loaded[key] = load_reference(field, path, str(cfg.run_dir), run_info.kinds, prep, modalities, device)
        return loaded[key]

    guide = load(GUIDE, loss.guide) if loss.guide is not None else None
    teacher = load(TEACHER, loss.distill.teacher) if loss.distill is not None else None
    sources = {field: {"run": str(ref.path), "fingerprint": ref.fingerprint}
               for field, ref in ((GUIDE, guide), (TEACHER, teacher)) if ref is not None}
    if resume:
        _same_as_recorded(cfg.run_dir, sources)
    return ReferenceTerms(loss, guide, teacher), run_info.updated(references=sources)
