"""`jointspace export`: parse and dispatch to jointspace.export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from jointspace.cli_errors import friendly

console = Console()


@friendly(console)
def export(
    run: Annotated[Path, typer.Argument(help="a finished contrastive run folder")],
    format_: Annotated[str, typer.Option("--format", help="open_clip, hf or onnx")],
    out: Annotated[Path, typer.Option("--out", help="folder to write (moved into place when complete)")],
    shards: Annotated[str | None, typer.Option(help="samples to trace and check the encoders with "
                                               "(default: the run's data)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out folder")] = False,
) -> None:
    """Export a trained joint space for open_clip, Hugging Face-style loading or ONNX serving."""
    from jointspace.export import export_run
    from jointspace.tasks import require_verb

    require_verb(run, "export")
    manifest = export_run(run, out, format_, overwrite, shards)
    diffs = manifest["max_abs_diff"]
    shown = diffs if isinstance(diffs, float) else max(diffs.values())
    console.print(f"wrote {out} ({format_}: {', '.join(manifest['files'])}; fingerprint "
                  f"{manifest['jointspace_fingerprint'][:12]}; reloaded, max |diff| {shown:.1e})")
    if manifest.get("left_out"):
        console.print(f"not in this format: {', '.join(manifest['left_out'])} (use --format hf or onnx)")
    console.print(f"load it with: {manifest['load']}")
