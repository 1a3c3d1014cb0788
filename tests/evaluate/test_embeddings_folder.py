"""`jointspace embed`: embeddings + keys + labels per modality, as npy or parquet."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import torch
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.data.dataset import load_split
from jointspace.evaluate.embed import embed_split
from jointspace.runs import config_prep, load_run
from jointspace.tasks.contrastive import train


def test_embed_command_npy_and_parquet(tiny_cfg, digits_dir, tmp_path):
    cfg = tiny_cfg("data.label_map={zero: round, six: round, eight: round, nine: round}", epochs=1)
    run = train(cfg, show_progress=False)
    runner = CliRunner()
    res = runner.invoke(app, ["embed", str(run), str(digits_dir), "--out", str(tmp_path / "npy"), "--split", "val"])
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "npy" / "meta.json").read_text())
    assert meta["dims"] == {"image": 16, "text": 16, "audio": 16} and meta["split"] == "val"
    assert meta["class_names"][0] == "round" and len(meta["class_names"]) == 7

    data = load_split(digits_dir, "val", cfg.data.modalities, config_prep(cfg))
    _, model, _ = load_run(run)
    ref = embed_split(model, data)
    keys = np.load(tmp_path / "npy" / "keys.npy")
    labels = np.load(tmp_path / "npy" / "labels.npy")
    assert keys.tolist() == data.keys and len(labels) == len(data)
    assert set(labels.tolist()) <= set(range(7))  # label map applied
    for m in ("image", "text", "audio"):
        emb = np.load(tmp_path / "npy" / f"{m}.npy")
        assert emb.dtype == np.float32 and emb.shape == (len(data), 16)
        torch.testing.assert_close(torch.from_numpy(emb), ref[m], atol=1e-5, rtol=0)

    res = runner.invoke(app, ["embed", str(run), str(digits_dir), "--out", str(tmp_path / "pq"), "--split", "val",
                              "--format", "parquet"])
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "pq" / "image.parquet")
    assert table.column_names == ["key", "label", "class_name", "embedding"]
    assert table.column("key").to_pylist() == data.keys
    assert table.column("label").to_pylist() == labels.tolist()
    emb = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(emb, np.load(tmp_path / "npy" / "image.npy"), atol=1e-6)

    res = runner.invoke(app, ["embed", str(run), str(digits_dir), "--out", str(tmp_path / "x"), "--format", "csv"])
    assert res.exit_code == 2 and "npy, parquet" in res.output
