"""Export to ONNX: per modality, the encoder from model inputs to the L2-normalised embedding
(`<modality>.onnx`, inputs `input` and, for variable-length kinds, `lengths`; output `embedding`),
traced on samples of the run's data, with a dynamic batch axis (and a dynamic length axis where the
kind has lengths). The run's fingerprint and how to prepare inputs are in each file's metadata."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from jointspace.data.sources import shards_arg, source_of
from jointspace.runs import load_run_split, run_prep


class Encoder(nn.Module):
    """One modality of a joint model as a module of tensors: (input[, lengths]) -> embedding."""

    def __init__(self, model: nn.Module, modality: str):
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch = {self.modality: x} if lengths is None else {self.modality: x, f"{self.modality}_len": lengths}
        return self.model.encode(self.modality, batch)


def example_batch(job, modalities: list[str], n: int = 2) -> dict[str, torch.Tensor]:
    """The first `n` samples of the run's data (or of --shards), prepared as the run prepares them."""
    cfg = job.cfg
    source = shards_arg(job.shards, cfg.data) if job.shards else source_of(cfg.data)
    for split in (cfg.eval.split, "test", "val", "train"):
        try:
            data = load_run_split(cfg, job.info, source, split, modalities)
        except (FileNotFoundError, ValueError):
            continue
        if len(data):
            return data.batch(torch.arange(min(n, len(data))))
    raise FileNotFoundError(f"the run's data ({source}) has no samples to trace the encoders with; "
                            "pass --shards with a shard folder of the run's modalities")


def _stamp(path: Path, job, modality: str, inputs: list[str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    meta = {**job.stamp(), "modality": modality, "kind": job.info.kinds[modality], "inputs": ",".join(inputs),
            "prep": json.dumps(run_prep(job.cfg, job.info).to_json())}
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))


def _export_one(job, m: str, batch: dict[str, torch.Tensor], path: Path) -> list[str]:
    args = (batch[m],) + ((batch[f"{m}_len"],) if f"{m}_len" in batch else ())
    names = ["input", "lengths"][: len(args)]
    axes = {"input": {0: "batch", 1: "length"} if len(args) > 1 else {0: "batch"}, "lengths": {0: "batch"},
            "embedding": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder(job.model, m).eval(), args, str(path), input_names=names,
                          output_names=["embedding"], dynamic_axes={k: axes[k] for k in names + ["embedding"]},
                          dynamo=False)
    _stamp(path, job, m, names)
    return names


def _check(job, m: str, batch: dict[str, torch.Tensor], path: Path, names: list[str]) -> float:
    """onnxruntime against torch on the traced samples and on a batch of another size."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    first = torch.arange(len(batch[m]))
    for idx in (first, torch.cat([first, first[:1]])):  # the traced batch, and one of another size
        feed = [batch[m][idx]] + ([batch[f"{m}_len"][idx]] if len(names) > 1 else [])
        with torch.no_grad():
            ref = Encoder(job.model, m).eval()(*feed).numpy()
        got = session.run(None, {k: v.numpy() for k, v in zip(names, feed)})[0]
        worst = max(worst, float(abs(got - ref).max()))
    return worst


def export_onnx(job, out: Path) -> dict:
    """`<modality>.onnx` per modality, each checked with onnxruntime; returns the manifest's fields."""
    modalities = list(job.model.towers)
    batch = example_batch(job, modalities)
    inputs, diffs = {}, {}
    for m in modalities:
        path = out / f"{m}.onnx"
        inputs[m] = _export_one(job, m, batch, path)
        diffs[m] = _check(job, m, batch, path, inputs[m])
        if diffs[m] > 1e-4:
            raise RuntimeError(f"onnxruntime's {m} embeddings differ from torch's by {diffs[m]:.2e}")
    return {"modalities": modalities, "files": [f"{m}.onnx" for m in modalities], "inputs": inputs,
            "max_abs_diff": diffs, "load": "onnxruntime.InferenceSession('DIR/<modality>.onnx')"}
