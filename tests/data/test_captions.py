"""Several captions per image: one drawn per sample per epoch (seeded); evaluation by CLIP_benchmark's rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import webdataset as wds

from jointspace.config import load_config
from jointspace.data.dataset import load_split
from jointspace.data.sources import source_of
from jointspace.data.stream import ShardStream
from jointspace.evaluate.retrieval import retrieval_report

from .test_csv import write_csv
from .test_webdataset import COLOURS, TINY, _jpg


def test_clip_benchmark_rule_hand_worked():
    """2 images, 3 captions (c0, c1 of image 0; c2 of image 1), in 2-D:
    image->text: i0 = (1, 0) ranks c1 (its own) first: hit; i1 = (0, 1) ranks c0 (image 0's) first, its
    own c2 second: R@1 = 1/2, R@5 = 1, ranks [1, 2] -> median 1.5.
    text->image: c0 = (0, 1) ranks i1 first (wrong), c1 and c2 find their images: R@1 = 2/3 over 3 queries."""
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    captions = F.normalize(torch.tensor([[0.0, 1.0], [0.8, 0.6], [0.6, 0.8]]), dim=1)
    emb = {"image": images, "text": captions[[0, 2]]}  # a caption per image (unused where variants exist)
    report = retrieval_report(emb, None, variants={"text": (captions, torch.tensor([0, 0, 1]))}, ks=(1, 5))
    it, ti = report["image->text"], report["text->image"]
    assert it["n_queries"] == 2 and it["R@1"] == 0.5 and it["R@5"] == 1.0 and it["median_rank"] == 1.5
    assert ti["n_queries"] == 3 and ti["R@1"] == pytest.approx(2 / 3)
    labelled = retrieval_report(emb, torch.tensor([5, 5]), variants={"text": (captions, torch.tensor([0, 0, 1]))})
    assert labelled["image->text"]["R@1"] == 1.0  # same class: every caption is a positive of both


def test_csv_rows_of_one_image_are_its_captions_drawn_per_epoch(tmp_path):
    write_csv(tmp_path, "t.tsv", 6)
    rows = (tmp_path / "t.tsv").read_text().splitlines()
    extra = [r.replace("tile", "square") for r in rows[1:]] + [r.replace("tile", "patch") for r in rows[1:]]
    (tmp_path / "t.tsv").write_text("\n".join(rows + extra) + "\n")  # three captions per image
    cfg = load_config(None, [f"data.csv={tmp_path / 't.tsv'}"])
    data = load_split(source_of(cfg.data), "train", ["image", "text"])
    values, owner = data.variants["text"]
    assert len(data) == 6 and len(values) == 18 and owner.tolist() == sorted(owner.tolist())
    assert data.captions["text"][0] == "a red tile 0"
    data.draw_variants(seed=0, epoch=0)
    a = data.inputs["text"].clone()
    data.draw_variants(seed=0, epoch=0)
    assert torch.equal(a, data.inputs["text"])  # a pure function of (seed, epoch)
    drawn = [data.draw_variants(seed=0, epoch=e) or data.inputs["text"].clone() for e in range(1, 6)]
    assert any(not torch.equal(a, d) for d in drawn)
    for d in drawn:  # each drawn caption belongs to its own image
        for i in range(6):
            assert any(torch.equal(d[i], values[j]) for j in torch.nonzero(owner == i).flatten().tolist())


def test_txt_members_and_json_lists_are_several_captions_and_streams_draw_them(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    with wds.TarWriter(str(folder / "0.tar")) as sink:
        for i in range(4):
            sink.write({"__key__": f"{i:04d}", "jpg": _jpg(COLOURS["red"], i), "txt": f"first {i}",
                        "txt.1": f"second {i}", "txt.2": f"third {i}",
                        "json": json.dumps({"captions": [f"j{i}a", f"j{i}b"]})})
    src = source_of(load_config(None, [f"data.urls={folder / '0.tar'}"]).data)
    data = load_split(src, "train", ["image", "text"])
    assert len(data.variants["text"][0]) == 12
    src = source_of(load_config(None, [f"data.urls={folder / '0.tar'}", "data.keys={image: jpg, text: json.captions}"]).data)
    assert len(load_split(src, "train", ["image", "text"]).variants["text"][0]) == 8
    stream = ShardStream([str(folder / "0.tar")], {"image": "image", "text": "text"}, 4, seed=1, epoch=2,
                         shuffle_buffer=0, decode=src.layout.decode)
    picks = [stream._draw(["a", "b", "c"], f"{i:04d}") for i in range(4)]
    assert picks == [stream._draw(["a", "b", "c"], f"{i:04d}") for i in range(4)]  # same (seed, epoch, key)


def test_training_and_eval_with_several_captions(tmp_path):
    from jointspace.evaluate.runner import evaluate_run
    from jointspace.tasks.contrastive import train

    write_csv(tmp_path / "d", "train.tsv", 24)
    write_csv(tmp_path / "d", "test.tsv", 6, start=100)
    for name in ("train.tsv", "test.tsv"):
        rows = (tmp_path / "d" / name).read_text().splitlines()
        (tmp_path / "d" / name).write_text("\n".join(rows + [r.replace("tile", "square") for r in rows[1:]]) + "\n")
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=caps", f"data.csv={tmp_path / 'd' / 'train.tsv'}",
                             f"data.test_csv={tmp_path / 'd' / 'test.tsv'}", "train.epochs=2",
                             "eval.positives=instance", *TINY])
    run = train(cfg, show_progress=False)
    ev = evaluate_run(run)
    assert ev["n_values"] == {"text": 12}
    assert ev["retrieval"]["image->text"]["n_queries"] == 6 and ev["retrieval"]["text->image"]["n_queries"] == 12
    assert np.isfinite(ev["retrieval"]["text->image"]["R@1"])
