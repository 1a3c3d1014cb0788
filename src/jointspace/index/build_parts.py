"""An index build split over the ranks of a torchrun job (`torchrun --nproc_per_node N -m jointspace.cli
index build ...`): every rank embeds its part of the shards (`my_part`: shard i goes to rank i mod N; with
fewer shards than ranks, sample j to rank j mod N), and rank 0 alone writes the index folder.

- FAISS, and a Milvus Lite file (which one process opens at a time): the ranks send their chunks to rank 0
  over the job's process group (gloo on CPU), one chunk per rank per round (`Gather`), so rank 0 holds
  at most N chunks at once; it builds the index from them exactly as a single process does.
- A Milvus server: every rank inserts its own rows into rank 0's staging collection (`RankInserts`) and
  sends rank 0 only its previews; rank 0 indexes the collection and switches the alias once every rank
  said it is done.

Every step that can fail on one rank ends in a collective that carries the failure (`agree`), so the
other ranks stop with it instead of waiting for the process group's timeout."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch.distributed as dist

from jointspace.data.shards import ReadStats
from jointspace.engine.distributed import DistInfo, cleanup, init_distributed
from jointspace.errors import JointspaceError

T = TypeVar("T")


class RankFailed(JointspaceError, RuntimeError):
    """Another rank of the job failed; its error is in the message."""


def my_part(pairs: list[T], rank: int, n_parts: int) -> tuple[list[T], bool]:
    """(this rank's shards, whether it takes them whole): shard i goes to rank i mod n_parts; with fewer
    shards than ranks every rank reads them all and keeps sample j where j mod n_parts is its rank."""
    if n_parts <= 1:
        return pairs, True
    if len(pairs) >= n_parts:
        return pairs[rank::n_parts], True
    return pairs, False


@contextmanager
def ranks(device: str):
    """This process's place in a torchrun job (one rank of one outside torchrun); a process group this
    opened is closed on the way out."""
    ours = not (dist.is_available() and dist.is_initialized())
    info = init_distributed("cuda" if device.startswith("cuda") else "cpu")
    try:
        yield info
    finally:
        if ours:
            cleanup(info)


def _said(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def agree(info: DistInfo, err: BaseException | None) -> None:
    """Every rank learns every rank's failure (a collective): a rank that failed raises its own error,
    the others RankFailed naming the first rank that failed. A no-op in a single process."""
    if info.enabled:
        said = [None] * info.world_size
        dist.all_gather_object(said, None if err is None else _said(err))
        failed = [(r, s) for r, s in enumerate(said) if s is not None]
    else:
        failed = []
    if err is not None:
        raise err
    if failed:
        raise RankFailed(f"rank {failed[0][0]} of {info.world_size} failed: {failed[0][1]}")


def together(info: DistInfo, fn: Callable[[], T] | None) -> T | None:
    """fn() on this rank (None: nothing to do here), then `agree` on how every rank's went."""
    try:
        out, err = (fn() if fn is not None else None), None
    except Exception as e:  # noqa: BLE001 - every rank must hear of it
        out, err = None, e
    agree(info, err)
    return out


def from_main(info: DistInfo, fn: Callable[[], T]) -> T:
    """fn() on rank 0, its result (pickled) on every rank; its failure raised on every rank."""
    box = [together(info, fn if info.is_main else None)]
    if info.enabled:
        dist.broadcast_object_list(box, src=0)
    return box[0]


class Gather:
    """Iterating on rank 0: the chunks of every rank (its own among them) in rounds of one chunk per rank;
    on the other ranks: their chunks are sent and nothing is yielded. `stats` (each rank's ReadStats)
    is summed into rank 0's when the last rank is done."""

    def __init__(self, chunks: Iterable, info: DistInfo, stats: ReadStats):
        self.chunks, self.info, self.stats, self.open, self.failed = iter(chunks), info, stats, True, False

    def _next(self) -> tuple:
        try:
            return "chunk", next(self.chunks)
        except StopIteration:
            return "done", (self.stats.n_ok, self.stats.n_bad, self.stats.errors)
        except Exception as err:  # noqa: BLE001 - sent to rank 0, raised below
            self.err = err
            return "error", _said(err)

    def _round(self, mine: tuple) -> tuple[list, tuple]:
        parts = [None] * self.info.world_size if self.info.is_main else None
        dist.gather_object(mine, parts, dst=0)
        verdict = [self._verdict(parts) if self.info.is_main else None]
        dist.broadcast_object_list(verdict, src=0)
        return parts or [], verdict[0]

    def _verdict(self, parts: list) -> tuple:
        for rank, (what, body) in enumerate(parts):
            if what == "error":
                return "error", f"rank {rank} of {self.info.world_size} failed: {body}"
            if what == "done" and rank:
                n_ok, n_bad, errors = body
                self.stats.n_ok, self.stats.n_bad = self.stats.n_ok + n_ok, self.stats.n_bad + n_bad
                self.stats.errors.extend(errors[: max(0, 50 - len(self.stats.errors))])
        return ("more",) if any(what == "chunk" for what, _ in parts) else ("end",)

    def __iter__(self) -> Iterator:
        done = False
        while self.open:
            mine = ("idle", None) if done else self._next()
            done = done or mine[0] == "done"
            parts, verdict = self._round(mine)
            if verdict[0] == "error":
                self.open, self.failed = False, True
                if mine[0] == "error":
                    raise self.err
                raise RankFailed(verdict[1])
            self.open = verdict[0] == "more"
            yield from (body for what, body in parts if what == "chunk")

    def told(self, err: BaseException) -> bool:
        """Rank 0, whose use of the chunks failed: whether every rank knows of a failure now (a round
        said it, or the ranks still sending are told by one more); False: they finished sending."""
        if self.failed:
            return True
        if not (self.open and self.info.enabled):
            return False
        self.open, self.failed = False, True
        dist.gather_object(("error", _said(err)), [None] * self.info.world_size, dst=0)
        dist.broadcast_object_list([("error", f"rank 0 failed: {_said(err)}")], src=0)
        return True


def rank_inserts(store, chunks: Iterable) -> Iterator:
    """Insert each chunk's rows into `store` (a Milvus staging collection) from this rank; what goes on to
    rank 0 is the chunk's previews (the index folder keeps them)."""
    for vectors, items, previews in chunks:
        store.add(vectors, items)
        yield np.zeros((0, store.dim), np.float32), [], previews


def build_ranked(info: DistInfo, chunks: Iterable, stats: ReadStats, make: Callable, finish: Callable):
    """Rank 0: `make` an index of every rank's chunks, `finish` it (save), and return it; the other ranks
    send their chunks and return None once rank 0 has saved (a failure anywhere is raised everywhere)."""
    sent = Gather(chunks, info, stats)
    if not info.is_main:
        for _ in sent:
            pass
        agree(info, None)  # wait for rank 0's save
        return None
    try:
        store = make(sent)
        finish(store)
    except BaseException as err:
        if not sent.told(err):
            agree(info, err)
        raise
    agree(info, None)
    return store
