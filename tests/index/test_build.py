"""Building, extending and querying an index with a tiny trained digits run; the CLI verbs."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from jointspace.commands.index import index_app, search
from jointspace.data.shards import ReadStats, iter_samples, split_urls
from jointspace.index.build import add_shards, build_index, open_for_run
from jointspace.index.bulk import choose_factory
from jointspace.index.query import model_fingerprint
from jointspace.index.store import FingerprintError, IndexStore


def first_sample(digits_dir, split: str = "test") -> dict:
    return next(iter_samples(split_urls(digits_dir, split), ReadStats()))


def test_index_holds_every_sample_and_modality(tiny_index, tiny_run):
    store = IndexStore.open(tiny_index)
    s = store.stats()
    assert s["n_samples"] == 180 and s["modalities"] == {"image": 180, "text": 180, "audio": 180}
    assert s["splits"] == {"train": 180, "val": 180, "test": 180} and s["factory"] == "Flat"
    assert s["fingerprint"] == model_fingerprint(tiny_run)
    item = store.get("digits-test-00000")
    assert item["modalities"] == ["audio", "image", "text"] and item["caption"] and item["has_thumbnail"]
    assert item["source"].endswith("test/shard-000000.tar#digits-test-00000")
    png = Image.open(io.BytesIO(store.preview("digits-test-00000")))
    assert png.size == (64, 64)  # the 8x8 digit, upscaled


def test_any_modality_in_finds_its_own_sample(tiny_index, digits_dir, tmp_path):
    store, enc = open_for_run(tiny_index)
    sample = first_sample(digits_dir)
    path = tmp_path / "q.png"
    Image.fromarray(sample["image"]).save(path)
    np.save(tmp_path / "q.npy", sample["audio"])
    queries = {"image": enc.encode_file("image", path), "audio": enc.encode_file("audio", tmp_path / "q.npy"),
               "text": enc.encode("text", [sample["text"]])}
    for modality, q in queries.items():
        top = store.search(q, 3, where={"modality": modality})[0][0]
        assert top["score"] == pytest.approx(1.0, abs=1e-4), modality
        if modality != "text":  # captions repeat across samples
            assert top["key"] == sample["key"]


def test_search_matches_brute_force_over_model_embeddings(tiny_index, digits_dir):
    store, enc = open_for_run(tiny_index)
    samples = list(iter_samples(split_urls(digits_dir, "val"), ReadStats()))
    row_of = {s["key"]: i for i, s in enumerate(samples)}
    sims = enc.encode("text", ["the digit seven", "someone saying two"]) @ \
        enc.encode("image", [s["image"] for s in samples]).T
    got = store.search(enc.encode("text", ["the digit seven", "someone saying two"]), 5,
                       where={"modality": "image", "split": "val"})
    for qi, row in enumerate(got):
        assert [h["score"] for h in row] == pytest.approx(np.sort(sims[qi])[::-1][:5], abs=1e-5)
        assert all(sims[qi, row_of[h["key"]]] == pytest.approx(h["score"], abs=1e-5) for h in row)


def test_a_different_model_is_refused(tiny_index, tiny_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    assert open_for_run(tiny_index, other)[0].n_items == 540  # a copy of the same model is fine
    (other / "config.yaml").write_text((other / "config.yaml").read_text() + "\n# edited\n")
    with pytest.raises(FingerprintError, match="built with model .* embeddings of different models"):
        open_for_run(tiny_index, other)


def test_build_then_add_and_replace(tiny_run, digits_dir, tmp_path):
    out = tmp_path / "idx"
    store = build_index(tiny_run, digits_dir, out, splits=["test"], modalities=["image", "text"])
    assert store.n_items == 120
    with pytest.raises(FileExistsError, match="exists there already: pass --overwrite"):
        build_index(tiny_run, digits_dir, out)
    assert add_shards(out, digits_dir, splits=["val"], modalities=["audio"]) == 60
    assert IndexStore.open(out).stats()["modalities"] == {"image": 60, "text": 60, "audio": 60}
    with pytest.raises(ValueError, match="already in the index"):
        add_shards(out, digits_dir, splits=["test"], modalities=["image"])
    assert add_shards(out, digits_dir, splits=["test"], modalities=["image"], replace=True) == 60
    assert IndexStore.open(out).n_items == 180


def test_factory_choice_by_size(tiny_run, digits_dir, tmp_path):
    assert choose_factory(10_000) == "Flat"
    assert choose_factory(1_000_000) == "IVF4096,Flat"
    assert choose_factory(10, "HNSW32") == "HNSW32"
    store = build_index(tiny_run, digits_dir, tmp_path / "hnsw", splits=["val"], factory="HNSW16")
    assert store.meta["search"] == {"efSearch": 128} and store.n_items == 180
    ivf = build_index(tiny_run, digits_dir, tmp_path / "ivf8", splits=["val"], factory="IVF8,Flat", nprobe=8)
    assert ivf.meta["search"] == {"nprobe": 8} and ivf.n_items == 180
    with pytest.raises(ValueError, match="factory 'IVF9999,Flat'"):
        build_index(tiny_run, digits_dir, tmp_path / "ivf", splits=["val"], factory="IVF9999,Flat")


def test_cli_verbs(tiny_run, digits_dir, tmp_path):
    app = typer.Typer()
    app.add_typer(index_app, name="index")
    app.command()(search)
    runner = CliRunner()
    out = str(tmp_path / "idx")
    r = runner.invoke(app, ["index", "build", str(tiny_run), str(digits_dir), "--out", out, "--split", "test"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", out, "--text", "the digit three", "--k", "4", "--where", "modality=image",
                            "--json"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert len(hits) == 4 and {h["modality"] for h in hits} == {"image"}
    np.save(tmp_path / "v.npy", np.ones(16, np.float32))
    r = runner.invoke(app, ["search", out, "--vector", str(tmp_path / "v.npy"), "--target", "audio"])
    assert r.exit_code == 0 and "audio" in r.output, r.output
    r = runner.invoke(app, ["search", out, "--text", "x", "--where", "colour=red"])
    assert r.exit_code == 2 and "unknown key 'colour'" in " ".join(r.output.split())
    r = runner.invoke(app, ["search", out, "--file", str(tmp_path / "missing.png"), "--modality", "image"])
    assert r.exit_code == 2 and "missing.png: no such file" in " ".join(r.output.split())
    r = runner.invoke(app, ["index", "delete", out, "digits-test-00000"])
    assert r.exit_code == 0 and "deleted 3 items" in r.output, r.output
    r = runner.invoke(app, ["index", "delete", out, "--where", "label=3", "--where", "split=test"])
    assert r.exit_code == 0 and "deleted" in r.output, r.output
    r = runner.invoke(app, ["index", "info", out])
    info = json.loads(r.output)
    assert r.exit_code == 0 and info["n_samples"] < 60
    mem = info["memory"]  # an exact index: vectors in FAISS (4 bytes x dim each), items in RAM, nothing on disk
    assert mem["faiss_bytes"] >= info["n_vectors"] * info["dim"] * 4 and mem["exact_vectors_bytes"] == 0
    assert mem["items_in"] == "ram" and mem["in_ram_bytes"] == mem["faiss_bytes"] + mem["items_bytes"]


def test_cli_build_takes_its_defaults_from_the_run_config_index_section(tiny_run, digits_dir, tmp_path):
    """`index:` in the run's config (factory, nprobe, splits, modalities) sets `index build`'s defaults;
    flags override them; a wrong field there names itself."""
    import yaml

    from jointspace.config import ConfigError, load_config

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    raw = yaml.safe_load((run / "config.yaml").read_text())
    raw["index"] = {"factory": "IVF4,Flat", "nprobe": 2, "splits": ["val"], "modalities": ["image", "text"]}
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    app = typer.Typer()
    app.add_typer(index_app, name="index")
    app.command()(search)
    r = CliRunner().invoke(app, ["index", "build", str(run), str(digits_dir), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    meta = IndexStore.open(tmp_path / "a").stats()
    assert meta["factory"] == "IVF4,Flat" and meta["search"] == {"nprobe": 2}
    assert set(meta["modalities"]) == {"image", "text"} and set(meta["splits"]) == {"val"}
    r = CliRunner().invoke(app, ["index", "build", str(run), str(digits_dir), "--out", str(tmp_path / "b"),
                                 "--factory", "Flat", "--split", "test", "--modality", "audio"])
    assert r.exit_code == 0, r.output
    meta = IndexStore.open(tmp_path / "b").stats()
    assert meta["factory"] == "Flat" and set(meta["modalities"]) == {"audio"} and set(meta["splits"]) == {"test"}
    with pytest.raises(ConfigError, match="index.nprobes"):
        load_config(run / "config.yaml", ["index.nprobes=3"])
