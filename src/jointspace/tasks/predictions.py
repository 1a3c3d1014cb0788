"""What `augment fix` asks of a contrastive run: the class each image query retrieves at rank 1 from the
paired modality (text if there is one), so a class's recall is its image queries' class-level R@1."""

from __future__ import annotations

from pathlib import Path

import torch

from jointspace.errors import UsageError
from jointspace.evaluate.embed import embed_split
from jointspace.kinds import get_kind, with_role
from jointspace.runs import load_run, load_run_split
from jointspace.tasks.registry import ClassPredictions


def retrieval_pair(kinds: dict[str, str]) -> tuple[str, str]:
    """(image query modality, gallery modality) a contrastive run is judged by: text first, else the next one."""
    image = with_role(kinds, "picture")
    others = sorted((m for m in kinds if m != image), key=lambda m: not get_kind(kinds[m]).captions)
    if image is None or not others:
        raise UsageError(f"augment fix on a contrastive run needs an image modality and another one (has {kinds})")
    return image, others[0]


def retrieval_predictions(run_dir: Path, split: str) -> ClassPredictions:
    """The class of each image query's top-1 item of the paired modality, on a split prepared as the run's."""
    cfg, model, info = load_run(run_dir)
    data = load_run_split(cfg, info, cfg.data.path, split)
    query, gallery = retrieval_pair(info.kinds)
    emb = embed_split(model, data, device="cpu")
    top1 = torch.cat([(emb[query][i:i + 1024] @ emb[gallery].T).argmax(1) for i in range(0, len(data), 1024)])
    return ClassPredictions(data.labels[top1], data.labels, data.class_names,
                            f"{query}->{gallery} R@1 (class-level)", "R@1 (all queries)")
