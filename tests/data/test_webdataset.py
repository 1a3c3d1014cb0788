"""Foreign WebDataset shards, read directly (no dataset.json): img2dataset's layout, open_clip_train's and
the seed project's class folders, written here with plain webdataset.TarWriter."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.config import load_config
from jointspace.data.dataset import load_split
from jointspace.data.inspect import inspect_shards
from jointspace.data.sources import source_of
from jointspace.data.webdataset import expand_urls
from jointspace.tasks.contrastive import train

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230)}
runner = CliRunner()


def _jpg(rgb, seed: int, fmt: str = "JPEG") -> bytes:
    noise = np.random.default_rng(seed).integers(-20, 20, (12, 12, 3))
    arr = np.clip(np.array(rgb)[None, None] + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def write_shards(folder: Path, n: int, per_shard: int, style: str, start: int = 0) -> None:
    """img2dataset: jpg + txt + json (no label); openclip: png + txt + cls; seed: png + txt (label = folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for s in range(0, n, per_shard):
        with wds.TarWriter(str(folder / f"{(start + s) // per_shard:05d}.tar")) as sink:
            for i in range(start + s, start + min(s + per_shard, n)):
                c = names[i % 3]
                rec = {"__key__": f"{i:09d}", "txt": f"a {c} square number {i}"}
                if style == "img2dataset":
                    rec["jpg"] = _jpg(COLOURS[c], i)
                    rec["json"] = json.dumps({"key": f"{i:09d}", "caption": rec["txt"], "url": f"http://x/{i}.jpg"})
                else:
                    rec["png"] = _jpg(COLOURS[c], i, "PNG")
                if style == "openclip":
                    rec["cls"] = str(i % 3)
                sink.write(rec)


TINY = ["tracker=none", "data.image_size=12", "data.context_length=16", "model.embed_dim=8",
        "model.towers.image.name=cnn", "model.towers.image.params.channels=[4, 8]",
        "model.towers.text.name=transformer", "model.towers.text.params.width=16", "model.towers.text.params.layers=1",
        "loss.anchor=image", "train.batch_size=8", "train.warmup_steps=0", "train.log_every=1", "eval.linear_probe=false"]


def test_expand_urls_takes_open_clip_specs(tmp_path):
    write_shards(tmp_path / "a", 8, 4, "openclip")
    write_shards(tmp_path / "b" / "c", 4, 4, "openclip")
    a = [str(tmp_path / "a" / f"{i:05d}.tar") for i in range(2)]
    assert expand_urls(str(tmp_path / "a" / "{00000..00001}.tar")) == a
    assert expand_urls(f"{a[0]}::{a[1]}") == a == expand_urls(a) == expand_urls(str(tmp_path / "a" / "*.tar"))
    assert expand_urls(str(tmp_path / "b")) == [str(tmp_path / "b" / "c" / "00000.tar")]  # a folder: every tar
    assert expand_urls(f"pipe:cat {a[0]}") == [f"pipe:cat {a[0]}"]


def test_img2dataset_shards_train_evaluate_index_and_search(tmp_path):
    """No labels: every sample is its own class, so positives are instance pairs."""
    write_shards(tmp_path / "shards", 48, 16, "img2dataset")
    write_shards(tmp_path / "test", 12, 12, "img2dataset", start=48)
    urls = str(tmp_path / "shards" / "{00000..00002}.tar")
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=i2d", f"data.urls={urls}",
                             f"data.test_urls={tmp_path / 'test' / '00004.tar'}", "train.epochs=2", *TINY])
    assert cfg.data.modalities == ["image", "text"]  # open_clip's default keys
    run = train(cfg, show_progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["kinds"] == {"image": "image", "text": "text"} and info["class_names"] == []
    r = runner.invoke(app, ["eval", str(run)])
    assert r.exit_code == 0, r.output
    ev = json.loads((run / "eval.json").read_text())
    assert ev["n_samples"] == 12 and ev["retrieval"]["image->text"]["n_queries"] == 12  # one positive each
    r = runner.invoke(app, ["index", "build", str(run), urls, "--out", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", str(tmp_path / "idx"), "--text", "a red square", "--json", "--k", "3"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 3, r.output


def _openclip_cfg(tmp_path, name, *extra):
    return load_config(None, [f"output_dir={tmp_path / 'runs'}", f"name={name}",
                              f"data.urls={tmp_path / 'oc' / '{00000..00005}.tar'}",
                              f"data.val_urls={tmp_path / 'oc' / '00006.tar'}", "train.epochs=2", *TINY, *extra])


def test_open_clip_shards_with_cls_labels_and_a_corrupt_sample(tmp_path):
    write_shards(tmp_path / "oc", 56, 8, "openclip")
    bad = tmp_path / "oc" / "00001.tar"  # one member replaced by garbage: skipped and counted
    with wds.TarWriter(str(bad)) as sink:
        for i in range(8, 16):
            sink.write({"__key__": f"{i:09d}", "txt": "x", "cls": str(i % 3),
                        "png": b"not a png" if i == 9 else _jpg(COLOURS["red"], i, "PNG")})
    cfg = _openclip_cfg(tmp_path, "mem", "data.max_bad_fraction=0.05")
    data = load_split(source_of(cfg.data), "train", ["image", "text"], max_bad_fraction=0.05)
    assert len(data) == 47 and data.stats.n_bad == 1 and sorted(set(data.labels.tolist())) == [0, 1, 2]
    run = train(cfg, show_progress=False)
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["split"] == "train"] == list(range(1, 11))  # 47 // 8 = 5 per epoch
    val = str(tmp_path / "oc" / "00006.tar")
    r = runner.invoke(app, ["eval", str(run), "--split", "val"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval.json").read_text())["n_samples"] == 8
    r = runner.invoke(app, ["index", "build", str(run), f"pipe:cat {val}", "--out", str(tmp_path / "idx")])
    assert r.exit_code == 0 and "16 items" in " ".join(r.output.split()), r.output  # a pipe: URL: 8 x 2 modalities


def test_open_clip_shards_stream_and_resume_exactly(tmp_path):
    write_shards(tmp_path / "oc", 56, 8, "openclip")
    cfg = _openclip_cfg(tmp_path, "full", "data.streaming=true", "data.shuffle_buffer=16",
                        "train.checkpoint_every_steps=3", "train.keep_checkpoints=10")
    full = train(cfg, show_progress=False)
    half = full.parent / "half"
    shutil.copytree(full, half)
    (half / "model.safetensors").unlink()
    (half / "checkpoints" / "latest.json").write_text(json.dumps({"name": "step_0000009"}))
    resumed = train(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_seed_class_folder_layout_labels_from_folders_and_inspect(tmp_path):
    for c, label in (("class_0", 0), ("class_1", 1)):
        write_shards(tmp_path / "data" / c, 12, 12, "seed", start=label * 100)
    src = source_of(load_config(None, [f"data.urls={tmp_path / 'data'}"]).data)
    assert src.info["class_names"] == ["class_0", "class_1"] and src.info["labelled"]
    data = load_split(src, "train", ["image", "text"])
    assert data.labels.tolist().count(0) == data.labels.tolist().count(1) == 12
    result = inspect_shards(str(tmp_path / "data"))
    assert result["train"]["class_counts"] == {"class_0": 12, "class_1": 12}
    assert result["train"]["modalities"]["image"]["shape"] == [12, 12, 3]
    r = runner.invoke(app, ["data", "inspect", str(tmp_path / "data" / "*" / "*.tar")])
    assert r.exit_code == 0 and "class_1" in r.output, r.output


def test_json_labels_by_name(tmp_path):
    folder = tmp_path / "j"
    folder.mkdir()
    with wds.TarWriter(str(folder / "0.tar")) as sink:
        for i in range(6):
            sink.write({"__key__": f"{i:04d}", "jpg": _jpg(COLOURS["blue"], i), "txt": "t",
                        "json": json.dumps({"animal": ("owl", "fox")[i % 2]})})
    cfg = load_config(None, [f"data.urls={folder / '0.tar'}", "data.label_key=animal"])
    data = load_split(source_of(cfg.data), "train", ["image", "text"])
    assert data.class_names == ["fox", "owl"] and data.labels.tolist() == [1, 0, 1, 0, 1, 0]
    with pytest.raises(Exception, match="not one of data.class_names"):
        bad = load_config(None, [f"data.urls={folder / '0.tar'}", "data.label_key=animal", "data.class_names=[owl]"])
        load_split(source_of(bad.data), "train", ["image", "text"], max_bad_fraction=0.0)


@pytest.mark.parametrize("streaming", [False, True])
def test_seed_class_folders_as_weighted_sources(tmp_path, streaming):
    """The seed's per-class shard folders as data.sources with upsampling weights: classes by folder name,
    unified across sources; resampled draws honour the weights (in memory and streamed)."""
    for c, label in (("class_0", 0), ("class_1", 1)):
        write_shards(tmp_path / "data" / c, 16, 8, "seed", start=label * 100)
    srcs = (f"[{{path: '{tmp_path / 'data' / 'class_0'}'}}, "
            f"{{path: '{tmp_path / 'data' / 'class_1' / '{00012..00013}.tar'}', weight: 3}}]")
    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", f"name=src{int(streaming)}",
                             f"data.urls={tmp_path / 'data'}", f"data.sources={srcs}", "data.label_from=folder",
                             "data.resampled=true", "data.samples_per_epoch=64", f"data.streaming={str(streaming).lower()}",
                             "train.epochs=1", *TINY])
    run = train(cfg, show_progress=False)
    assert json.loads((run / "run.json").read_text())["class_names"] == ["class_0", "class_1"]
    if not streaming:
        r = runner.invoke(app, ["eval", str(run), "--split", "train", "--data", str(tmp_path / "data")])
        assert r.exit_code == 0, r.output
        ev = json.loads((run / "eval.json").read_text())
        assert ev["n_samples"] == 32 and set(ev["zero_shot"]) == {"image"}  # prompts from the folder names
        r = runner.invoke(app, ["index", "build", str(run), str(tmp_path / "data"), "--out", str(tmp_path / "i")])
        assert r.exit_code == 0, r.output
    from jointspace.data.sources import TrainSampler, load_sources

    if not streaming:
        data = load_sources(cfg.data, "train", modalities=["image", "text"])
        idx = torch.cat(list(TrainSampler.from_config(cfg.data, data).batches(8, 0, 0)))
        share = float((data.labels[idx] == 1).float().mean())
        assert data.labels.tolist().count(1) == 16 and 0.6 < share < 0.9  # weight 3 of 4: 0.75


def test_numeric_class_folders_sources_without_labels_and_counting(tmp_path):
    """Folders 1, 2, 10 are classes in numeric order; unlabelled sources never share a class; keys of
    members under ./ count once each; a labelled task on unlabelled shards fails with one line."""
    import tarfile

    from jointspace.config import DataConfig
    from jointspace.data.dataset import concat_splits
    from jointspace.data.webdataset import count_samples
    from jointspace.tasks.classify import ClassifyRunConfig, train_classifier

    for c in ("1", "2", "10"):
        write_shards(tmp_path / "num" / c, 4, 4, "seed", start=int(c) * 100)
    src = source_of(DataConfig(urls=str(tmp_path / "num")))
    data = load_split(src, "train", ["image", "text"])
    assert src.info["class_names"] == ["1", "2", "10"] and sorted(set(data.labels.tolist())) == [0, 1, 2]
    write_shards(tmp_path / "u1", 4, 4, "img2dataset")
    write_shards(tmp_path / "u2", 4, 4, "img2dataset")  # the same keys as u1
    parts = [load_split(source_of(DataConfig(urls=str(tmp_path / u))), "train", ["image", "text"]) for u in ("u1", "u2")]
    both = concat_splits(parts)
    assert len(set(both.labels.tolist())) == 8 and not both.labelled
    with tarfile.open(tmp_path / "dot.tar", "w") as tar:
        for i in range(5):
            for ext in ("jpg", "txt"):
                payload = io.BytesIO(b"x")
                info = tarfile.TarInfo(f"./{i:04d}.{ext}")
                info.size = 1
                tar.addfile(info, payload)
    assert count_samples([str(tmp_path / "dot.tar")]) == 5
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[f"output_dir={tmp_path}", "name=clf", f"data.urls={tmp_path / 'u1'}",
                             "data.test_urls=" + str(tmp_path / "u2"), "task=classify", "fusion.strategy=late", *TINY])
    with pytest.raises(Exception, match="no labels"):
        train_classifier(cfg, show_progress=False)
