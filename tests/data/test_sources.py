"""Label maps (merging classes) and mixing shard sources with upsampling and resampling."""

from __future__ import annotations

import pytest
import torch

from jointspace.config import ConfigError, DataConfig, load_config
from jointspace.data.dataset import apply_label_map, load_split, remap_info
from jointspace.data.shards import DataError
from jointspace.data.sources import TrainSampler, load_sources, resampled_indices, source_mass
from jointspace.evaluate.embed import class_prompts

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
EVEN_ODD = {n: ("even" if i % 2 == 0 else "odd") for i, n in enumerate(NAMES)}


def test_label_map_merges_classes():
    names, labels = apply_label_map(["racist", "sexist", "homophobe", "none"], torch.tensor([0, 1, 2, 3, 3, 1]),
                                    {"racist": "hate", "sexist": "hate", "homophobe": "hate"})
    assert names == ["hate", "none"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 0]
    with pytest.raises(DataError, match=r"\['sexism'\]"):
        apply_label_map(["racist", "sexist"], torch.tensor([0]), {"sexism": "hate"})


def test_label_map_applies_to_loaded_split_and_prompts(digits_dir):
    plain = load_split(digits_dir, "test", ["image"])
    mapped = load_split(digits_dir, "test", ["image"], label_map=EVEN_ODD)
    assert mapped.class_names == ["even", "odd"]
    assert mapped.labels.tolist() == [i % 2 for i in plain.labels.tolist()]
    info = {"class_names": ["cat", "dog", "car"], "zero_shot_prompts": {"cat": ["a cat"], "dog": ["a dog"], "car": ["a car"]}}
    assert class_prompts(remap_info(info, {"cat": "animal", "dog": "animal"})) == [["a cat", "a dog"], ["a car"]]
    assert class_prompts(remap_info({"class_names": ["cat", "car"], "prompt_templates": ["a {}"]}, {"cat": "pet"})) == [
        ["a pet"], ["a car"]]


def test_source_mass_and_resampled_proportions():
    sizes, weights = [100, 50], [1.0, 4.0]
    assert torch.allclose(source_mass(sizes, weights), torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    idx = resampled_indices(sizes, weights, 30_000, seed=0, epoch=0)
    assert idx.min() >= 0 and idx.max() < 150
    frac_second = (idx >= 100).float().mean().item()
    assert abs(frac_second - 2 / 3) < 0.015
    counts = torch.bincount(idx[idx >= 100] - 100, minlength=50).float()  # uniform within a source
    assert counts.min() > 0.7 * counts.mean()
    assert torch.equal(idx, resampled_indices(sizes, weights, 30_000, seed=0, epoch=0))  # (seed, epoch) only
    assert not torch.equal(idx, resampled_indices(sizes, weights, 30_000, seed=0, epoch=1))


def test_sampler_epochs():
    plain = TrainSampler(n_data=10, sizes=[10], weights=[1.0])
    assert plain.n_samples == 10 and sorted(torch.cat(list(plain.batches(5, 0, 0))).tolist()) == list(range(10))
    mixed = TrainSampler(n_data=30, sizes=[10, 20], weights=[3.0, 1.0], resampled=True, samples_per_epoch=64)
    batches = list(mixed.batches(16, seed=1, epoch=2))
    assert mixed.n_samples == 64 and len(batches) == 4
    assert [b.tolist() for b in batches] == [b.tolist() for b in mixed.batches(16, seed=1, epoch=2)]


def test_weights_need_resampling():
    with pytest.raises(ConfigError, match="need data.resampled"):
        load_config(None, ["data.sources=[{path: a, weight: 2}]"])


def test_load_sources_concatenates_and_unifies_classes(digits_dir):
    cfg = DataConfig(sources=[{"path": str(digits_dir)}, {"path": str(digits_dir), "weight": 3}], resampled=True,
                     label_map=EVEN_ODD)
    one = load_split(digits_dir, "train", ["image", "text"])
    data = load_sources(cfg, "train", NAMES, modalities=["image", "text"])
    assert len(data) == 2 * len(one) and data.source_sizes == [len(one), len(one)]
    assert data.class_names == ["even", "odd"]
    assert data.labels.tolist() == [i % 2 for i in one.labels.tolist()] * 2
    assert data.inputs["image"].shape[1:] == one.inputs["image"].shape[1:]
    sampler = TrainSampler.from_config(cfg, data)
    assert sampler.weights == [1.0, 3.0] and sampler.n_samples == len(data)


def test_training_with_sources_resampling_and_label_map(tiny_cfg, digits_dir):
    """End to end: mixed + resampled train split, merged classes in training, run info and evaluation."""
    import json

    from jointspace.evaluate.runner import evaluate_run
    from jointspace.tasks.contrastive import train

    cfg = tiny_cfg(f"data.sources=[{{path: {digits_dir}}}, {{path: {digits_dir}, weight: 2}}]", "data.resampled=true",
                   "data.samples_per_epoch=48", "data.label_map={zero: small, one: small, two: small}",
                   "eval.linear_probe=false", epochs=1)
    run = train(cfg, show_progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["class_names"][0] == "small" and len(info["class_names"]) == 8
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 3  # 48 samples / batch 16
    result = evaluate_run(run)
    assert result["n_samples"] > 0 and "zero_shot" in result


def test_streaming_with_sources_matches_in_memory_classes_without_a_val_split(tiny_cfg, digits_dir, tmp_path):
    """data.streaming + data.sources (+ resampling, label map): the same class names and label mapping as
    the in-memory path, and a dataset without a val split streams (shapes read from the shards)."""
    import json
    import shutil

    from jointspace.engine.distributed import DistInfo
    from jointspace.tasks.batches import StreamedBatches
    from jointspace.tasks.contrastive import train

    no_val = tmp_path / "digits_no_val"
    shutil.copytree(digits_dir, no_val)
    shutil.rmtree(no_val / "val")
    common = [f"data.path={no_val}", f"data.sources=[{{path: {no_val}}}, {{path: {digits_dir}, weight: 3}}]",
              "data.resampled=true", "data.samples_per_epoch=64", "data.label_map={zero: small, one: small}",
              "eval.linear_probe=false"]
    streamed = tiny_cfg(*common, "data.streaming=true", name="stream_mix", epochs=1)
    in_memory = tiny_cfg(*common, name="mem_mix", epochs=1)
    info = json.loads((train(streamed, show_progress=False) / "run.json").read_text())
    ref = json.loads((train(in_memory, show_progress=False) / "run.json").read_text())
    assert info["class_names"] == ref["class_names"] and info["class_names"][0] == "small"
    assert info["kinds"] == ref["kinds"] and info["image_channels"] == ref["image_channels"]
    metrics = [json.loads(x) for x in (streamed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if m["split"] == "train"] == [1, 2, 3, 4]  # 64 samples / batch 16

    # the streamed labels are the in-memory ones: same tokens -> same merged label
    batches = StreamedBatches(streamed, DistInfo(), torch.device("cpu"), NAMES)
    mem = load_sources(in_memory.data, "train", NAMES, modalities=["image", "text"])
    label_of = {tuple(t.tolist()): int(y) for t, y in zip(mem.inputs["text"], mem.labels, strict=True)}
    seen = [(tuple(t.tolist()), int(y)) for batch, _, _ in batches.epoch(0)
            for t, y in zip(batch["text"], batch["label"], strict=True)]
    assert len(seen) == 64 and all(label_of[t] == y for t, y in seen)
    assert {y for _, y in seen} >= {0}  # "small" (zero + one) is drawn
