"""jointspace's contrastive step with open_clip towers is open_clip's own step: from the same weights,
batches and AdamW settings (fp32, CPU), `jointspace train` and open_clip's model + ClipLoss + AdamW (+
open_clip_train's cosine schedule and logit-scale clamp) give the same loss at every one of 20 steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from jointspace.data.dataset import epoch_batches
from jointspace.data.shards import write_dataset

N, BATCH, EPOCHS = 64, 16, 5  # 4 steps an epoch, 20 steps
WORDS = ["red", "green", "blue", "cube", "sphere", "cone", "small", "large", "left", "right", "top", "bottom", "near", "far"]


def _data(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 16, 16, 3), dtype=np.uint8)
    captions = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 8)))) + f" {i}" for i in range(N)]
    samples = [{"key": f"s{i:03d}", "image": images[i], "text": captions[i], "label": 0} for i in range(N)]
    write_dataset(tmp_path / "d", {"train": samples}, {"image": "image", "text": "text"}, ["any"], maxcount=N)
    return images, captions


def _config(tmp_path, name: str, path: str) -> dict:
    tower = {"model": name, "pretrained": path}
    return {
        "name": "js", "output_dir": str(tmp_path / "runs"), "tracker": "none", "seed": 0,
        "data": {"path": str(tmp_path / "d"), "modalities": ["image", "text"], "image_size": 16,
                 "context_length": 16},
        "model": {"embed_dim": 16, "head": {"type": "none"}, "init_temperature": 0.07,
                  "towers": {"image": {"name": "openclip_image", "params": tower},
                             "text": {"name": "openclip_text", "params": tower}}},
        "loss": {"name": "infonce", "positives": "instance"},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.98],
                  "warmup_steps": 3, "grad_clip": None, "log_every": 1, "amp": "none", "device": "cpu",
                  "num_threads": 2},
        "eval": {"linear_probe": False},
    }


def _reference_losses(name: str, state: dict, images: np.ndarray, captions: list[str], cfg: dict):
    """open_clip's own training step, as open_clip_train runs it: (losses, trained model, pixels, tokens)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip_train.scheduler import cosine_lr

    model = open_clip.create_model(name)
    model.load_state_dict(state)
    model.train()
    tokens = open_clip.get_tokenizer(name)(captions, context_length=16)
    mean, std = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1), torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    t = cfg["train"]
    optimizer = torch.optim.AdamW([{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
                                   {"params": [p for n, p in named if not exclude(n, p)],
                                    "weight_decay": t["weight_decay"]}],
                                  lr=t["lr"], betas=tuple(t["betas"]), eps=1e-8)
    steps_per_epoch = N // BATCH
    scheduler = cosine_lr(optimizer, t["lr"], t["warmup_steps"], steps_per_epoch * EPOCHS)
    loss_fn = open_clip.ClipLoss()
    losses = []
    for epoch in range(EPOCHS):
        for i, idx in enumerate(epoch_batches(N, BATCH, cfg["seed"], epoch)):
            scheduler(epoch * steps_per_epoch + i)
            optimizer.zero_grad()
            image_features, text_features, logit_scale = model(pixels[idx], tokens[idx])
            loss = loss_fn(image_features, text_features, logit_scale)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
    return losses, model.eval(), pixels, tokens


def test_twenty_steps_give_open_clips_losses(tiny_clip_file, tmp_path):
    from jointspace.tasks import load_task_config

    name, path, state = tiny_clip_file
    images, captions = _data(tmp_path)
    raw = _config(tmp_path, name, path)
    (tmp_path / "js.yaml").write_text(yaml.safe_dump(raw))
    from jointspace.tasks.contrastive import train

    torch.manual_seed(0)
    run = train(load_task_config(tmp_path / "js.yaml"), show_progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    ours = [r["loss"] for r in rows if r["split"] == "train"]
    reference, model, pixels, tokens = _reference_losses(name, state, images, captions, raw)
    assert len(ours) == len(reference) == 20
    assert ours == pytest.approx(reference, abs=1e-5), np.abs(np.array(ours) - np.array(reference)).max()
    assert reference[-1] < reference[0] - 0.05  # it learned something: the comparison is not of constants

    # after the same 20 steps both trainers hold the same model: the same embeddings, the same R@1
    from jointspace.evaluate.embed import embed_split
    from jointspace.evaluate.retrieval import retrieval_metrics
    from jointspace.runs import load_run, load_run_split

    cfg, ours_model, info = load_run(run)
    mine = embed_split(ours_model, load_run_split(cfg, info, tmp_path / "d", "train"))
    with torch.no_grad():
        theirs = {"image": model.encode_image(pixels, normalize=True), "text": model.encode_text(tokens, normalize=True)}
    for m in ("image", "text"):
        torch.testing.assert_close(mine[m], theirs[m], atol=2e-4, rtol=0)
    r1 = [retrieval_metrics(e["image"], e["text"], ks=(1,))["R@1"] for e in (mine, theirs)]
    assert r1[0] == r1[1] and r1[0] > 1 / N, r1
