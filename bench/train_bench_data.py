"""Data and evaluation for bench/train_vs_openclip.py: one set of samples written twice, as jointspace
shards and as open_clip_train shards (the very same PNG and caption bytes, in the same order), and
Recall@1 of a trained model of either kind on the held-out split with jointspace's retrieval code.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from jointspace.data.builtin import synthesize
from jointspace.data.dataset import SplitData, load_split
from jointspace.data.shards import ReadStats, iter_samples, read_info, split_urls, write_dataset
from jointspace.evaluate.retrieval import retrieval_metrics
from jointspace.kinds import Prep

SPLITS = ("train", "test")
LEVEL = {"shapes": "scene (hit = same shape, colour, size and position as the query's caption states; "
                   "144 scene kinds)",
         "digits": "class (hit = same digit; 10 classes)"}


def _scene_id(data: str, sample: dict) -> int:
    """Evaluation label: the shapes scene's attributes, or the digit class."""
    if data == "digits":
        return int(sample["label"])
    from jointspace.data.builtin import shapes

    m = sample["meta"]
    return (((list(shapes.SHAPES).index(m["shape"]) * len(shapes.COLOURS) + list(shapes.COLOURS).index(m["colour"]))
             * len(shapes.SIZES) + list(shapes.SIZES).index(m["size"])) * len(shapes.POSITIONS)
            + list(shapes.POSITIONS).index(m["position"]))


def _rgb(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 image -> RGB [size, size, 3] (bicubic, PIL) so neither trainer resizes at train time."""
    img = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img)


def prepare(work: Path, data: str, n_samples: int, image_size: int, seed: int = 0) -> dict:
    """Source set, then jointspace shards (`js/`) and open_clip shards (`oc/train/`) of `image_size`
    RGB images + captions; returns {js, oc_urls, n_train, n_test, test_labels}. Cached by arguments."""
    src = work / f"src-{data}-{n_samples}-seed{seed}"
    if not (src / "dataset.json").exists():
        print(f"synthesising {data} ({n_samples} samples) into {src}", flush=True)
        synthesize(data, src, seed=seed, n=n_samples)
    out = work / f"data-{data}-{n_samples}-seed{seed}-{image_size}px"
    js, oc = out / "js", out / "oc"
    if not (out / "done.json").exists():
        info = read_info(src)
        labels: dict[str, int] = {}

        def samples(split: str):
            for s in iter_samples(split_urls(src, split), ReadStats(), ["image", "text"]):
                labels[s["key"]] = _scene_id(data, s)
                yield {"key": s["key"], "image": _rgb(s["image"], image_size), "text": s["text"],
                       "label": s["label"]}

        write_dataset(js, {split: samples(split) for split in SPLITS}, {"image": "image", "text": "text"},
                      info.get("class_names", []), {"name": f"{data} for bench/train_vs_openclip.py"})
        for shard in split_urls(js, "train"):
            _to_open_clip(Path(shard), oc / "train" / Path(shard).name)
        (out / "done.json").write_text(json.dumps({"eval_labels": labels}))
    info = read_info(js)
    urls = split_urls(oc, "train")
    first, last = Path(urls[0]).stem.split("-")[-1], Path(urls[-1]).stem.split("-")[-1]
    return {"js": js, "oc_urls": str(oc / "train" / f"shard-{{{first}..{last}}}.tar"),
            "n_train": info["splits"]["train"]["n_samples"], "n_test": info["splits"]["test"]["n_samples"],
            "eval_labels": json.loads((out / "done.json").read_text())["eval_labels"]}


def _to_open_clip(src: Path, dst: Path) -> None:
    """Copy a jointspace shard as open_clip_train reads it: `<key>.png` + `<key>.txt`, same bytes, same order."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    rename = {"image.png": "png", "text.txt": "txt"}
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            key, _, ext = member.name.partition(".")
            if ext not in rename:
                continue
            data = tin.extractfile(member).read()
            info = tarfile.TarInfo(f"{key}.{rename[ext]}")
            info.size, info.mtime = len(data), member.mtime
            tout.addfile(info, io.BytesIO(data))


def load_test(prepared: dict, image_size: int, context_length: int, model_name: str) -> tuple[SplitData, torch.Tensor]:
    """The test split as model inputs (open_clip BPE of that model) and its evaluation labels."""
    prep = Prep(image_size=image_size, context_length=context_length, tokenizers={"text": f"openclip:{model_name}"})
    test = load_split(prepared["js"], "test", ["image", "text"], prep)
    labels = torch.tensor([prepared["eval_labels"][k] for k in test.keys], dtype=torch.long)
    return test, labels


@torch.no_grad()
def embed_open_clip(weights: Path, model_name: str, test: SplitData, device: str, batch: int = 256) -> dict:
    """Embed the test split with an open_clip_train checkpoint, through the same input path as jointspace's
    open_clip towers ([-1, 1] -> OpenAI mean/std, ids padded to the context length)."""
    import open_clip

    from jointspace.towers.openclip import OpenCLIPImage, OpenCLIPText

    clip = open_clip.create_model(model_name, force_custom_text=True)
    state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    clip.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    towers = {"image": OpenCLIPImage(clip).to(device).eval(), "text": OpenCLIPText(clip).to(device).eval()}
    out = {}
    for m, tower in towers.items():
        x = test.inputs[m]
        out[m] = torch.cat([F.normalize(tower(x[i:i + batch].to(device)).float(), dim=-1).cpu()
                            for i in range(0, len(x), batch)])
    return out


@torch.no_grad()
def embed_jointspace(run_dir: Path, test: SplitData, device: str) -> dict:
    """Embed the test split with the jointspace run's final weights."""
    from jointspace.evaluate.embed import embed_split
    from jointspace.runs import load_run

    _, model, _ = load_run(run_dir)
    return embed_split(model.to(device), test, device=device)


def recall_at_1(emb: dict, labels: torch.Tensor) -> dict:
    """R@1 image->text and text->image (label-level hits, see LEVEL)."""
    return {f"{q}->{g}": retrieval_metrics(emb[q], emb[g], labels, labels, ks=(1,))["R@1"]
            for q, g in (("image", "text"), ("text", "image"))}


def bare_step(name: str, batch_size: int, context_length: int, image_size: int, device: str, amp,
              fused: bool = False, compile: bool = False) -> Callable[[], None]:
    """One training step of open_clip's model and ClipLoss, torch AdamW (`fused` or its default) and a
    grad clip, on random tensors already on the device, under the context `amp`: no data at all
    (`compile`: the model's forward through torch.compile)."""
    import open_clip

    gen = torch.Generator().manual_seed(0)
    model = open_clip.create_model(name).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None)
    forward = torch.compile(model) if compile else model
    loss_fn = open_clip.ClipLoss()
    images = torch.randn(batch_size, 3, image_size, image_size, generator=gen).to(device)
    texts = torch.randint(1, 49408, (batch_size, context_length), generator=gen).to(device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with amp:
            img, txt, scale = forward(images, texts)[:3]
            loss = loss_fn(img, txt, scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return step


def seconds_per_step(step: Callable[[], None], device: str, seconds: float, warmup: int = 1) -> float:
    """Seconds per call of `step` over at least `seconds` (and 2 calls), after `warmup` calls, with the
    device synchronised at both ends."""
    import time

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        step()
        n += 1
    sync()
    return (time.perf_counter() - t0) / n


def model_step_speed(name: str, batch_size: int, context_length: int, image_size: int, device: str,
                     precision: str, seconds: float = 15.0) -> float:
    """samples/s of the bare training step (`bare_step`, torch's default AdamW): what open_clip_train
    would reach with a free data loader. (jointspace can pass it: fused AdamW, and its text tower skips
    the padding.)"""
    amp = (torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16"
           else torch.autocast(device, enabled=False))
    step = bare_step(name, batch_size, context_length, image_size, device, amp)
    return batch_size / seconds_per_step(step, device, seconds)
