"""`jointspace export RUN --format open_clip|hf|onnx --out DIR`: a trained joint space for other tools.

- open_clip: `open_clip_config.json` + `open_clip_model.safetensors` (LoRA merged, the projection heads
  folded into open_clip's projections), loadable with `open_clip.create_model_and_transforms`;
- hf: one folder per modality (`config.json`, `model.safetensors`, tokenizer / preprocessing), loadable
  back as a jointspace tower (`name: jointspace, params: {pretrained: DIR/<modality>}`);
- onnx: `<modality>.onnx` per modality, the encoder up to the L2-normalised embedding.

Every export carries the run's fingerprint (`jointspace_export.json`, and each file's own metadata) and
checks itself before it is kept: what it wrote is loaded back and compared with the run's model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jointspace.errors import UsageError, require
from jointspace.model import JointModel
from jointspace.outputs import OutputType, json_with
from jointspace.run_dir import RunInfo
from jointspace.runs import load_run, model_fingerprint

MANIFEST = "jointspace_export.json"
EXPORT_FOLDER = OutputType("export", ((MANIFEST,),), json_with(MANIFEST, "format"))


@dataclass
class Exporting:
    """What a format writer gets: the run, its loaded model, and where to write."""

    run_dir: Path
    cfg: object
    model: JointModel
    info: RunInfo
    fingerprint: str
    shards: str | None = None

    def stamp(self) -> dict[str, str]:
        """The metadata every exported file carries."""
        return {"jointspace_run": str(self.run_dir), "jointspace_fingerprint": self.fingerprint}


def _writers() -> dict[str, Callable[[Exporting, Path], dict]]:
    from jointspace.export import hf, onnx, openclip

    return {"open_clip": openclip.export_openclip, "hf": hf.export_hf, "onnx": onnx.export_onnx}


FORMATS = ("open_clip", "hf", "onnx")
NEEDS = {"onnx": ("onnx", "onnxruntime")}  # modules of the optional extra `export` a format needs


def export_run(run_dir: str | Path, out: str | Path, fmt: str, overwrite: bool = False,
               shards: str | None = None) -> dict:
    """Export a finished contrastive run to `out` (written in a staging folder, moved into place whole)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    for module in NEEDS.get(fmt, ()):
        require("export", module, f"--format {fmt}")
    run_dir, out = Path(run_dir), Path(out)
    EXPORT_FOLDER.check(out, overwrite, [run_dir])
    cfg, model, info = load_run(run_dir)
    model.dedupe = False  # traced and compared row by row: no batch-dependent path
    job = Exporting(run_dir, cfg, model, info, model_fingerprint(run_dir), shards)
    with EXPORT_FOLDER.staged(out, overwrite, [run_dir]) as stage:
        manifest = {"format": fmt, **job.stamp(), **_writers()[fmt](job, stage)}
        manifest["load"] = str(manifest.get("load", "")).replace("DIR", str(out))
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


__all__ = ["FORMATS", "MANIFEST", "Exporting", "export_run"]
