"""`jointspace audit --refit K`: the train split cut into K folds, and each fold's samples judged by a run of the
same config that trained on the other folds only (cross-fitting, cleanlab's out-of-sample rule). A run fits
the faults it trained on (a swapped pair it learned, a flipped label it learned); a run that never saw a
sample cannot have fitted its faults. Here: the folds, each fold's space, and the mismatch margins and class
probabilities of the train split taken from them (the other splits' come from the audited run: it never
trained on them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jointspace.audit.findings import sample_hashes
from jointspace.audit.labels import VOTERS, agreement, judged_probs, modality_probs, probe_probs, vote
from jointspace.audit.mismatch import BEATEN_BY, beaten_by_in, group_margins, mismatch_scores, rank_shares
from jointspace.audit.neighbours import knn, make_index
from jointspace.audit.space import TRAIN, Space, load_space
from jointspace.errors import UsageError


def fold_of(space: Space, k: int, seed: int = 0) -> np.ndarray:
    """Per row of `space`: its fold, 0..k-1, for the train split's samples (samples identical in every
    modality share a fold, so no run trains on a copy of what it judges); -1 for the other splits."""
    train = np.flatnonzero(space.splits == TRAIN)
    _, group = np.unique(sample_hashes(space)[train], return_inverse=True)
    if k < 2 or len(train) == 0 or group.max() + 1 < 2 * k:
        raise UsageError(f"--refit {k}: needs at least 2 folds and 2 distinct train samples a fold (the audited "
                         f"data has {len(set(group.tolist()))} distinct train samples)")
    fold = np.full(len(space), -1, dtype=np.int64)
    fold[train] = np.random.default_rng(seed).permutation(group.max() + 1)[group] % k
    return fold


def held_keys(space: Space, fold: np.ndarray) -> list[set[str]]:
    """The train keys of each fold, fold 0 first."""
    return [{space.keys[i] for i in np.flatnonzero(fold == f)} for f in range(int(fold.max()) + 1)]


@dataclass
class Refit:
    """The folds of an audited space's rows (`fold_of`) and, per fold, its train split embedded by the run
    that did not train on that fold (rows in the audited space's train order)."""

    fold: np.ndarray
    spaces: list[Space]

    def rows(self, space: Space, f: int) -> tuple[np.ndarray, np.ndarray]:
        """Fold f's rows in the audited space, and the same samples' rows in fold f's space."""
        train = np.flatnonzero(space.splits == TRAIN)
        held = np.flatnonzero(self.fold[train] == f)
        return train[held], held

    def scores(self, space: Space, a: str, b: str, make: Callable = make_index, beaten_by: int = BEATEN_BY,
               ranked_from: float | np.ndarray = -np.inf, counts: dict[str, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`mismatch_scores`, a train sample's margin the mean of two margins: the audited run's (among its
        split) and its fold's run's (among the fold's samples). The audited run fitted the swaps it trained
        on (their margins shrink); the fold's run never saw them but trained on a fold less and judges among
        fewer candidates (its margins are noisier). The partner: the audited run's best match, the fold
        run's where that is the sample itself; the rank share: the larger of the two runs'. Other splits:
        the audited run's, as without --refit. `counts`: the audited space's `split_beaten_by`, where the caller
        has them (a fold's are its own, for `beaten_by`)."""
        margin, best, _ = mismatch_scores(space, a, b, make, beaten_by, np.inf, counts)
        bar = np.broadcast_to(ranked_from, (len(space),))
        fold_share = np.zeros(len(space))
        for f, other in enumerate(self.spaces):
            rows, mine = self.rows(space, f)
            ea, eb = other.emb[a][mine], other.emb[b][mine]
            k = beaten_by_in(ea, eb, other.labels[mine] if other.classed else None, beaten_by)
            held, best_b, _ = group_margins(ea, eb, other.logit_scale, make, k, np.inf)
            margin[rows] = (margin[rows] + held) / 2
            fitted = best[rows] == rows
            best[rows[fitted]] = rows[best_b[fitted]]
            fold_share[rows] = rank_shares(ea, eb, margin[rows] >= bar[rows])
        share = np.zeros(len(space))
        for split in dict.fromkeys(space.splits.tolist()):
            rows = np.flatnonzero(space.splits == split)
            share[rows] = rank_shares(space.emb[a][rows], space.emb[b][rows], margin[rows] >= bar[rows])
        return margin, best, np.maximum(share, fold_share)

    def probs(self, space: Space, folds: int = 5, seed: int = 0, neighbours: np.ndarray | None = None,
              make: Callable = make_index) -> np.ndarray:
        """[N, C] class probabilities (`labels.judged_probs`): a train sample's from its fold's run, a linear
        probe fitted on the other folds' samples and, with `neighbours`, the vote of its nearest samples
        among them; the other splits' from the audited run, its k-fold probe (over every split) and the vote
        of `neighbours` (their nearest others in its joint space), as without --refit."""
        probs = judged_probs(space, neighbours, folds, seed)
        for rows, mine, seen, other in self._held_out(space):
            joint = other.joint()
            held = probe_probs(joint, other.labels, probs.shape[1], [(seen, mine)], seed)[mine]
            if neighbours is not None:
                fit = joint[seen]
                _, near = knn(fit, VOTERS, make(fit, seed), queries=joint[mine])
                held = agreement(held, vote(other.labels[seen], near, probs.shape[1]))
            probs[rows] = held
        return probs

    def modality_probs(self, space: Space, modalities: list[str], folds: int = 5,
                       seed: int = 0) -> dict[str, np.ndarray]:
        """`labels.modality_probs` (the mismatch finder's class margins), a train sample's from its fold's
        run: a probe on that modality's embeddings, fitted on the other folds' samples. A run that trained on
        a swapped value can have moved it among its partner's class (a unique value, a recording, is easily
        memorised; a run with `loss.positives: label` is trained to); its fold's run never saw it."""
        probs = modality_probs(space, modalities, folds, seed)
        for rows, mine, seen, other in self._held_out(space):
            for m in modalities:
                probs[m][rows] = probe_probs(other.emb[m], other.labels, probs[m].shape[1], [(seen, mine)], seed)[mine]
        return probs

    def _held_out(self, space: Space):
        """Per fold: its rows in the audited space, the same samples' rows in its run's space, the other
        folds' rows there, and that space."""
        for f, other in enumerate(self.spaces):
            rows, mine = self.rows(space, f)
            yield rows, mine, np.setdiff1d(np.arange(len(other)), mine), other


def load_refit(space: Space, fold: np.ndarray, runs: list[Path], data: str | Path, device: str = "auto") -> Refit:
    """Each fold run's embedding of `data`'s train split, checked to hold the audited space's train samples
    in the same order."""
    keys = [space.keys[i] for i in np.flatnonzero(space.splits == TRAIN)]
    spaces = []
    for run in runs:
        other = load_space(run, data, [TRAIN], device, contents=False)  # its embeddings are all it is used for
        if other.keys != keys:
            raise UsageError(f"{run}: its embedding of {data}'s train split does not hold the audited samples in "
                             f"their order")
        spaces.append(other)
    return Refit(fold, spaces)
