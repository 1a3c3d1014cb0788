"""A finished joint-space run used as a frozen reference while another run trains (`loss.guide`,
`loss.distill.teacher`): loaded once as `init_from` loads a source run, in eval mode without gradients on
the student's device, checked to read the student's batches as they are, its fingerprint recorded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from jointspace.collectives import gather_no_grad
from jointspace.errors import UsageError
from jointspace.kinds import Prep, get_kind
from jointspace.losses.extra import EXTRA_SUFFIX
from jointspace.model import JointModel
from jointspace.run_dir import RUN_INFO, RunDir, read_run_info
from jointspace.runs import load_run, model_fingerprint, run_prep
from jointspace.tasks.registry import able, get_task


class ReferenceRun:
    """A frozen finished run: embeds the modalities the loss pairs of a training batch."""

    def __init__(self, path: Path, model: JointModel, fingerprint: str, modalities: list[str]):
        self.path, self.model, self.fingerprint, self.modalities = path, model, fingerprint, modalities

    def scale(self) -> torch.Tensor:
        """The reference's own logit scale (exp of its learned log-temperature, clamped)."""
        return self.model.logits.scale().detach()

    @torch.no_grad()
    def embed(self, local: dict[str, torch.Tensor], chunks: int, autocast: Callable[[], Any]) -> dict[str, torch.Tensor]:
        """Normalised embeddings of this rank's batch `local`, in `chunks` pieces as the student's
        micro-batches, gathered over the ranks (the global batch, rank order). The inputs are taken at the
        width they have (`plan={}`): nothing here reads the device."""
        local = {k: v for k, v in local.items() if EXTRA_SUFFIX not in k}  # mined candidates: the student's only
        first = local[self.modalities[0]]
        rows = torch.arange(len(first), device=first.device).chunk(chunks)
        micro = [local] if chunks == 1 else [{k: v[r] for k, v in local.items()} for r in rows]
        with autocast():
            parts = [self.model(mb, self.modalities, plan={}) for mb in micro]
        return {m: gather_no_grad(torch.cat([p[m] for p in parts])) for m in self.modalities}


def _prep_facets(modality: str, kind: str, prep: Prep) -> dict[str, Any]:
    """What fixes a modality's input tensors: the sizes its kind reads, its channels, tokenizer and range."""
    facets: dict[str, Any] = {s.name: prep.sizes.get(s.name) for s in get_kind(kind).sizes}
    facets.update(channels=prep.channels.get(modality), tokenizer=prep.tokenizers.get(modality, "OpenCLIP BPE"),
                  max_range=prep.max_range.get(modality))
    return facets


def check_inputs(field: str, ref: str, ref_kinds: dict[str, str], ref_prep: Prep, student: str,
                 kinds: dict[str, str], prep: Prep, modalities: list[str]) -> None:
    """The reference has every modality the loss pairs, of the same kind, prepared as the student's
    batches are; else one line naming both runs and what differs."""
    for m in modalities:
        if ref_kinds.get(m) != kinds[m]:
            has = ", ".join(f"{n} ({k})" for n, k in ref_kinds.items())
            raise UsageError(f"{field}: {ref} has no {kinds[m]} modality {m!r} (it has {has}); the loss pairs of "
                             f"{student} need it")
        theirs, mine = _prep_facets(m, kinds[m], ref_prep), _prep_facets(m, kinds[m], prep)
        differ = [f"{k} {theirs[k]} there, {mine[k]} here" for k in mine if theirs[k] != mine[k]]
        if differ:
            raise UsageError(f"{field}: {ref} prepares {m} unlike {student} ({'; '.join(differ)}): its towers cannot "
                             "read this run's batches; train the reference with the same data settings")


def load_reference(field: str, path: str, student: str, kinds: dict[str, str], prep: Prep, modalities: list[str],
                   device: torch.device) -> ReferenceRun:
    """The finished joint-space run at `path` (config field `field`) as a frozen reference of the run
    `student` (its kinds and Prep) for `modalities`, on `device`."""
    run = Path(path)
    if not RunDir(run).run_info.is_file():
        raise UsageError(f"{field}: {run} is not a finished jointspace run (no {RUN_INFO})")
    info = read_run_info(run)
    task = get_task(info.task, f"{field}: {run}/{RUN_INFO}: task")
    if not task.joint_space:
        raise UsageError(f"{field}: {run} is a {info.task} run, not a {able(lambda t: t.joint_space)} run (its "
                         "towers are not a joint space)")
    if not task.finished(run):
        raise UsageError(f"{field}: {run} has not finished (no final weights); finish it with `jointspace train "
                         "--resume`")
    cfg, model, info = load_run(run)
    check_inputs(field, str(run), info.kinds, run_prep(cfg, info), student, kinds, prep, modalities)
    model.to(device).eval().requires_grad_(False)
    return ReferenceRun(run, model, model_fingerprint(run), modalities)
