"""Class folders with one subfolder per modality (the CILP assessment's layout), paired by file stem:
kinds chosen by the kinds, unpaired files listed, a missing modality an error unless --allow-missing,
angle grids recorded, points made from range images, seeded stratified splits."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.data.folders import read_modality_folders
from jointspace.data.manifest import pack_folder
from jointspace.data.shards import DataError, ReadStats, iter_samples, read_info, split_urls
from jointspace.errors import UsageError

H, W = 8, 16
AZIMUTH = np.radians(np.linspace(-30, 30, W))
ZENITH = np.radians(np.linspace(2, -34, H))  # row 0 the highest beam, as the built-in shapes set
NO_RETURN = 50.0


def scan(cls: int, i: int) -> np.ndarray:
    """A depth grid: a wall at a class-dependent distance, the top row "nothing hit" (NO_RETURN)."""
    r = np.full((H, W), 3.0 + 2.0 * cls, dtype=np.float32) + np.random.default_rng(i).uniform(0, 0.5, (H, W))
    r[0] = NO_RETURN
    return r.astype(np.float32)


def png(path, cls: int, i: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = np.array([(200, 40, 40), (40, 40, 200), (40, 200, 40)][cls], dtype=np.uint8)
    noise = np.random.default_rng(i).integers(0, 30, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour + noise).save(path)


def cilp_folder(root, n=12, classes=("cubes", "spheres"), split=None, degrees=False):
    """`root/[split/]<class>/{azimuth,zenith}.npy, rgb/NNNN.png, lidar/NNNN.npy` + one unpaired file per class."""
    for c, name in enumerate(classes):
        folder = root / split / name if split else root / name
        (folder / "lidar").mkdir(parents=True, exist_ok=True)
        np.save(folder / "azimuth.npy", np.degrees(AZIMUTH) if degrees else AZIMUTH)
        np.save(folder / "zenith.npy", np.degrees(ZENITH) if degrees else ZENITH)
        for i in range(n):
            png(folder / "rgb" / f"{i:04d}.png", c, 100 * c + i)
            np.save(folder / "lidar" / f"{i:04d}.npy", scan(c, 100 * c + i))
        png(folder / "rgb" / f"{n + 7:04d}.png", c, 0)  # no scan: unpaired
    return root


def test_pairs_by_stem_kinds_from_folder_words_and_lists_unpaired(tmp_path):
    root = cilp_folder(tmp_path / "data")
    (root / "README.md").write_text("notes")
    found = read_modality_folders(root)
    assert found.modalities == {"lidar": "range", "rgb": "image"}
    assert len(found.records) == 24 and sorted(found.unpaired) == ["cubes/rgb/0019.png", "spheres/rgb/0019.png"]
    assert found.ignored == ["README.md"]
    where, rec = found.records[0]
    assert where == "cubes/0000" and rec["rgb"] == "cubes/rgb/0000.png" and rec["lidar"] == "cubes/lidar/0000.npy"
    assert rec["label"] == "cubes" and "split" not in rec

    runner = CliRunner()
    r = runner.invoke(app, ["data", "pack", str(root), "--out", str(tmp_path / "shards"), "--val-fraction", "0.25",
                            "--test-fraction", "0.25"])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "unpaired: 2 files left out" in out and "cubes/rgb/0019.png, spheres/rgb/0019.png" in out
    info = read_info(tmp_path / "shards")
    assert {s: v["n_samples"] for s, v in info["splits"].items()} == {"train": 12, "val": 6, "test": 6}
    assert info["splits"]["test"]["class_counts"] == {"0": 3, "1": 3}  # stratified
    assert info["unpaired"]["n_files"] == 2 and info["class_names"] == ["cubes", "spheres"]
    grid = info["grids"]["lidar"]
    np.testing.assert_allclose(np.array(grid["azimuth"])[0], AZIMUTH)
    np.testing.assert_allclose(np.array(grid["zenith"])[:, 0], ZENITH)
    assert grid["no_return"] == NO_RETURN and not grid["degrees"]
    assert grid["files"] == ["cubes/azimuth.npy", "cubes/zenith.npy", "spheres/azimuth.npy", "spheres/zenith.npy"]
    sample = next(iter_samples(split_urls(tmp_path / "shards", "train"), ReadStats()))
    assert sample["rgb"].shape == (8, 8, 3) and sample["lidar"].shape == (H, W)
    again = pack_folder(root, tmp_path / "again", val_fraction=0.25, test_fraction=0.25)
    keys = lambda p: sorted(s["key"] for s in iter_samples(split_urls(p, "test"), ReadStats()))
    assert again["splits"] == info["splits"] and keys(tmp_path / "shards") == keys(tmp_path / "again")


def test_presplit_folders_and_carving_the_missing_split(tmp_path):
    root = tmp_path / "data"
    cilp_folder(root, n=8, split="train")
    cilp_folder(root, n=2, split="test")
    info = pack_folder(root, tmp_path / "shards", val_fraction=0.25)
    assert {s: v["n_samples"] for s, v in info["splits"].items()} == {"train": 12, "val": 4, "test": 4}
    assert info["val_carved_from_train"] == {"fraction": 0.25, "n_samples": 4}
    assert info["unpaired"]["n_files"] == 4


def test_caption_subfolders_are_text_and_become_zero_shot_prompts(tmp_path):
    root = tmp_path / "data"
    for c, (code, words) in enumerate({"c1": "a red thing", "c2": "a blue thing"}.items()):
        (root / code / "captions").mkdir(parents=True)
        for i in range(4):
            png(root / code / "camera" / f"{i}.png", c, i)
            (root / code / "captions" / f"{i}.txt").write_text(f"{words}\n")
    info = pack_folder(root, tmp_path / "shards", split_fractions=(1, 0, 0))
    assert info["modalities"] == {"camera": "image", "captions": "text"}
    assert info["zero_shot_prompts"] == {"c1": ["a red thing"], "c2": ["a blue thing"]}
    assert info["zero_shot_prompts_from"] == "captions"


def test_a_missing_modality_is_an_error_unless_allowed(tmp_path):
    root = cilp_folder(tmp_path / "data", n=4)
    for i in range(3):
        png(root / "cones" / "rgb" / f"{i:04d}.png", 2, i)  # no lidar folder at all
    with pytest.raises(DataError, match=r"3 samples lack a modality \(lidar missing in 1 class folders: "
                                        r"cones/ \(3 samples\)\).*--allow-missing"):
        pack_folder(root, tmp_path / "shards")
    assert not (tmp_path / "shards").exists()
    r = CliRunner().invoke(app, ["data", "pack", str(root), "--out", str(tmp_path / "shards"), "--allow-missing"])
    assert r.exit_code == 0, r.output
    assert "dropped 3 samples lacking a modality (lidar: cones/ (3 samples))" in " ".join(r.output.split())
    info = read_info(tmp_path / "shards")
    assert info["class_names"] == ["cubes", "spheres"] and info["dropped_missing"]["n_samples"] == 3


def test_folder_errors_name_what_and_how_many(tmp_path):
    root = cilp_folder(tmp_path / "data", n=3)
    (root / "cubes" / "rgb" / "0001.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"1 files share a stem .*cubes/rgb/0001.jpg \+ 0001.png"):
        read_modality_folders(root)
    (root / "cubes" / "rgb" / "0001.jpg").unlink()
    (root / "spheres" / "zenith.npy").unlink()
    with pytest.raises(DataError, match=r"found beside 1 of 2 lidar folders; none for 1: spheres/lidar/ \(zenith.npy\)"):
        read_modality_folders(root)
    np.save(root / "spheres" / "zenith.npy", ZENITH + 0.1)
    with pytest.raises(DataError, match="spheres/zenith.npy differs from cubes/zenith.npy"):
        read_modality_folders(root)
    np.save(root / "cubes" / "zenith.npy", ZENITH[:3])
    np.save(root / "spheres" / "zenith.npy", ZENITH[:3])
    with pytest.raises(DataError, match=r"zenith.npy has shape \(3,\); range images \(8, 16\) need \[8\]"):
        read_modality_folders(root)
    (root / "cubes" / "notes").mkdir()
    (root / "cubes" / "notes" / "a.md").write_text("x")
    with pytest.raises(DataError, match=r"no kind reads the 'notes' subfolders \(files: .md\)"):
        read_modality_folders(root)
    with pytest.raises(UsageError, match="--points-from read class folders with one subfolder per modality"):
        png(tmp_path / "flat" / "a" / "0.png", 0, 0)
        pack_folder(tmp_path / "flat", tmp_path / "out", points_from="lidar")


def test_points_from_lidar_match_a_hand_computed_grid(tmp_path):
    root = cilp_folder(tmp_path / "data", n=3, degrees=True)  # degrees are read as degrees
    r = CliRunner().invoke(app, ["data", "pack", str(root), "--out", str(tmp_path / "shards"), "--points-from",
                                 "lidar"])
    assert r.exit_code == 0, r.output
    info = read_info(tmp_path / "shards")
    assert info["modalities"] == {"lidar": "range", "rgb": "image", "points": "points"}
    assert info["grids"]["lidar"]["degrees"] and info["grids"]["lidar"]["points"]["max_points"] == (H - 1) * W
    samples = [s for split in info["splits"] for s in iter_samples(split_urls(tmp_path / "shards", split), ReadStats())]
    assert len(samples) == 6
    for s in samples:
        ranges = s["lidar"]
        want = []  # by hand, row by row: x right, y up, z forward (the built-in shapes set's sensor frame)
        for i in range(H):
            for j in range(W):
                d = float(ranges[i, j])
                if d < NO_RETURN:  # the top row is "nothing hit": no point
                    want.append([d * np.cos(ZENITH[i]) * np.sin(AZIMUTH[j]), d * np.sin(ZENITH[i]),
                                 d * np.cos(ZENITH[i]) * np.cos(AZIMUTH[j])])
        assert s["points"].shape == (len(want), 3) == ((H - 1) * W, 3)
        np.testing.assert_allclose(s["points"], np.array(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(UsageError, match="--points-from rgb"):
        pack_folder(root, tmp_path / "x", points_from="rgb")
    for f in root.glob("*/*.npy"):
        f.unlink()
    with pytest.raises(UsageError, match="needs azimuth.npy and zenith.npy beside the lidar files"):
        pack_folder(root, tmp_path / "y", points_from="lidar")
    from jointspace.config import load_config
    from jointspace.tasks.contrastive import train

    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=points", "tracker=none",
                             f"data.path={tmp_path / 'shards'}", "data.modalities=[rgb, points]", "data.image_size=8",
                             "data.max_points=64", "model.embed_dim=8", "model.towers.rgb.name=cnn",
                             "model.towers.rgb.params.channels=[4, 8]", "model.towers.points.name=pointnet",
                             "model.towers.points.params.widths=[8, 16]", "loss.anchor=rgb", "train.epochs=1",
                             "train.batch_size=4", "train.warmup_steps=0"])
    run = json.loads((train(cfg, show_progress=False) / "run.json").read_text())
    assert run["kinds"] == {"rgb": "image", "points": "points"}


def test_examples_cilp_folders_trains_in_one_command_after_data_pack(tmp_path, monkeypatch):
    """The README's bring-your-own line: `data pack data --out shards/cilp ...`, then
    `train examples/cilp_folders.yaml` (shrunk with --set), run from the folder that holds data/."""
    example = (Path(__file__).parents[2] / "examples" / "cilp_folders.yaml").resolve()
    cilp_folder(tmp_path / "data", n=12)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["data", "pack", "data", "--out", "shards/cilp", "--val-fraction", "0.25",
                            "--test-fraction", "0.25", "--points-from", "lidar"])
    assert r.exit_code == 0, r.output
    small = ["data.image_size=8", "model.embed_dim=8", "model.towers.rgb.params.channels=[4, 8]",
             "model.towers.lidar.params.channels=[4, 8]", "train.epochs=1", "train.batch_size=8",
             "train.warmup_steps=0", "cilp.projector_hidden=8", "cilp.projector_epochs=2", "cilp.classifier_hidden=0",
             "cilp.classifier_epochs=2", "cilp.batch_size=8", "tracker=none", "output_dir=runs"]
    r = runner.invoke(app, ["train", str(example), *[a for s in small for a in ("--set", s)]])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "runs" / "cilp_folders" / "cilp.json").read_text())
    assert 0 <= result["table"]["classifier_accuracy"] <= 1
    pre = json.loads((tmp_path / "runs" / "cilp_folders" / "pretrain" / "run.json").read_text())
    assert list(pre["kinds"]) == ["rgb", "lidar"]
