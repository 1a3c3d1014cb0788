"""Near copies by content: every modality's values as their kinds' content vectors (block means, see
kinds.content), searched in a FAISS index (or the audit's Milvus). The joint space finds copies that stand
out from their neighbourhood; a run that packs distinct samples tight (identical captions pulled together)
cannot tell a noisy copy from them, and this route, which does not look at the run, can. The same vectors
confirm the joint space's pairs (`findings.near_duplicates`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jointspace.audit.findings import CONTENT_THRESHOLD, NEAR_K, Finding, lowest_cosine, near_findings
from jointspace.audit.neighbours import knn, make_index, pairs_above
from jointspace.audit.space import Space
from jointspace.kinds import content_vector, get_kind


def content_modalities(space: Space) -> list[str]:
    """The modalities whose kind has content vectors and whose values the space holds (none without values)."""
    return [m for m in space.modalities if len(space) and get_kind(space.kinds[m]).content_cells
            and len(space.values.get(m) or []) == len(space)]


def content_vectors(space: Space) -> dict[str, np.ndarray]:
    """[N, cells^2] unit vectors per modality of `content_modalities`."""
    return {m: np.stack([content_vector(space.kinds[m], v) for v in space.values[m]]) for m in content_modalities(space)}


def content_near_duplicates(space: Space, threshold: float = CONTENT_THRESHOLD, k: int = NEAR_K,
                            make: Callable = make_index, vectors: dict[str, np.ndarray] | None = None
                            ) -> list[Finding]:
    """Pairs (not identical in every modality) whose content vectors have a cosine of at least `threshold`
    in every modality that has them and whose captions are the same text (values of kinds with neither,
    e.g. point sets, do not count); found among each sample's k nearest by content. Score: the lowest
    cosine. A pair across train and val/test is a leak. `vectors`: `content_vectors(space)`, if computed."""
    vectors = content_vectors(space) if vectors is None else vectors
    if not vectors:
        return []
    joint = np.ascontiguousarray(np.concatenate(list(vectors.values()), axis=1) / np.sqrt(len(vectors)),
                                 dtype=np.float32)
    i, j, _ = pairs_above(joint, threshold, knn(joint, k, make(joint, 0)))
    lowest = lowest_cosine(list(vectors.values()), i, j)
    keep = lowest >= threshold
    for m in space.modalities:  # captions must be the same text; other values without vectors do not count
        if m not in vectors and get_kind(space.kinds[m]).captions:
            keep &= space.hashes[m][i] == space.hashes[m][j]
    return near_findings(space, i[keep], j[keep], lowest[keep], by="content")
