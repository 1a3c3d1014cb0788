"""`jointspace mine`: parse and dispatch to jointspace.audit.mine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointspace.cli_errors import friendly

console = Console()


@friendly(console)
def mine(
    run: Annotated[Path, typer.Argument(help="a finished joint-space run folder (its space ranks the candidates)")],
    data: Annotated[Path, typer.Argument(help="shard folder to mine (the run's own train data, to train with)")],
    out: Annotated[Path, typer.Option("--out", help="parquet file to write (negatives.parquet)")],
    split: Annotated[str, typer.Option(help="split whose samples are anchors and candidates")] = "train",
    anchor: Annotated[str | None, typer.Option(help="anchor modality (default: the run's first pair's)")] = None,
    candidate: Annotated[str | None, typer.Option(help="candidate modality (default: the other of that pair)")] = None,
    range_min: Annotated[int, typer.Option(help="skip this many of the most similar candidates left")] = 0,
    range_max: Annotated[int | None, typer.Option(help="consider only this many most similar non-positive "
                                                  "candidates (default: range-min + num-negatives, x 10 "
                                                  "with a score filter)")] = None,
    max_score: Annotated[float | None, typer.Option(help="drop candidates of a higher cosine")] = None,
    margin: Annotated[float | None, typer.Option(help="keep candidates at most the positive's cosine minus this")] = None,
    relative_margin: Annotated[float | None, typer.Option(help="keep candidates at most positive - |positive| x "
                                                          "this")] = None,
    num_negatives: Annotated[int, typer.Option(help="negatives per anchor")] = 3,
    device: str = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """Mine hard negatives for each anchor of a split through a run's joint space (sentence-transformers' window)."""
    from jointspace.audit.mine import Window, mine_negatives
    from jointspace.tasks import require_verb

    require_verb(run, "embed")
    window = Window(range_min, range_max, max_score, margin, relative_margin, num_negatives)
    got = mine_negatives(run, data, out, split, anchor, candidate, window, device, overwrite)
    console.print(f"wrote {out} ({got['anchor']} -> {got['candidate']} of {got['split']}: {got['anchors']} anchors, "
                  f"{got['negatives']} negatives, {got['without']} anchors with none)", soft_wrap=True,
                  markup=False, highlight=False)
