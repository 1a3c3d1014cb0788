"""Tests for jointspace.viz plots and HTML report."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jointspace.run_dir import RunDir
from jointspace.viz.plots import plot_retrieval_grid, plot_umap, query_indices, top_k_indices
from jointspace.viz.report import metrics_table, select_pairs, write_report

MODS = ["image", "text", "audio"]
KINDS = {"image": "image", "text": "text", "audio": "sequence", "lidar": "range"}
CLASSES = ["cat", "dog", "bird"]
N = 60


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _fake_npz(rng: np.random.Generator, n: int = N, dim: int = 16) -> dict[str, np.ndarray]:
    labels = np.arange(n, dtype=np.int64) % len(CLASSES)
    centres = rng.normal(size=(len(CLASSES), dim)) * 2
    data: dict[str, np.ndarray] = {
        f"emb_{m}": _unit(centres[labels] + rng.normal(size=(n, dim))) for m in MODS
    }
    audio = rng.normal(size=(n, 40, 13)).astype(np.float32)
    audio[:, 30:] = 0.0  # zero padding
    data.update(
        labels=labels,
        keys=np.array([f"s{i:04d}" for i in range(n)]),
        class_names=np.array(CLASSES),
        captions=np.array(
            [f"a photo of a {CLASSES[y]} number {i} doing things" for i, y in enumerate(labels)]
        ),
        preview_image=rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8),
        preview_audio=audio,
        kinds=np.array(json.dumps({m: KINDS[m] for m in MODS})),
    )
    return data


def _fake_eval(rng: np.random.Generator) -> dict:
    ret = {}
    for a, b in itertools.permutations(MODS, 2):
        r1, r5, r10 = sorted(rng.uniform(0.1, 1.0, size=3))
        ret[f"{a}->{b}"] = {
            "R@1": r1,
            "R@5": r5,
            "R@10": r10,
            "mAP@10": r1 * 0.9,
            "median_rank": 2.0,
            "mean_rank": 3.25,
            "n_queries": N,
        }
    return {
        "split": "test",
        "n_samples": N,
        "modalities": MODS,
        "retrieval": ret,
        "zero_shot": {"image": {"top1": 0.95, "top5": 1.0}, "audio": {"top1": 0.6123, "top5": 0.9}},
        "linear_probe": {"image": 0.97, "audio": 0.8, "text": 0.99},
    }


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    run = tmp_path / "my_run"
    (run / "eval").mkdir(parents=True)
    np.savez(run / "eval" / "embeddings_test.npz", **_fake_npz(rng))
    (run / "eval.json").write_text(json.dumps(_fake_eval(rng)))
    lines = [
        json.dumps(
            {
                "step": s,
                "epoch": s / 20,
                "split": "train",
                "loss": 3 / (1 + s),
                "lr": 1e-3,
                "temperature": 0.07,
            }
        )
        for s in range(0, 100, 10)
    ]
    lines += [
        json.dumps(
            {
                "step": s,
                "epoch": s / 20,
                "split": "val",
                "loss": 2 / (1 + s),
                "image->text/R@1": s / 100,
                "text->image/R@1": s / 120,
            }
        )
        for s in (40, 80)
    ]
    lines.insert(3, "{not json")  # a truncated line must be tolerated
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _check_pngs(paths: list[Path]) -> None:
    for p in paths:
        assert p.stat().st_size > 5_000, p
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and min(im.size) > 100


def test_write_report(run_dir: Path) -> None:
    out = write_report(run_dir, method="pca")
    assert out == run_dir / "report.html" and out.is_file()
    doc = out.read_text()
    ev = json.loads((run_dir / "eval.json").read_text())
    assert "my_run" in doc and "Data audit" not in doc  # never audited
    for pair, m in ev["retrieval"].items():
        assert f"<td>{pair.replace('>', '&gt;')}</td>" in doc
        for k in ("R@1", "R@5", "R@10", "mAP@10"):
            assert f"<td>{m[k]:.3f}</td>" in doc
        assert f"<td>{m['median_rank']:.1f}</td>" in doc
    assert "<td>0.612</td>" in doc and "<td>0.970</td>" in doc and "<td>0.990</td>" in doc
    pngs = sorted((run_dir / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {
        "curves.png",
        "umap.png",
        "retrieval_text_to_image.png",
        "retrieval_image_to_text.png",
        "retrieval_audio_to_image.png",
        "retrieval_text_to_audio.png",
    } <= names
    assert doc.count("data:image/png;base64,") == len(pngs) == 8  # + 2 confusion matrices
    _check_pngs(pngs)


def test_write_report_tolerates_missing_parts(run_dir: Path) -> None:
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "eval" / "embeddings_test.npz").unlink()
    ev = json.loads((run_dir / "eval.json").read_text())
    ev.pop("zero_shot")
    ev.pop("linear_probe")
    (run_dir / "eval.json").write_text(json.dumps(ev))
    RunDir(run_dir).write_last_audit({"folder": str(run_dir / "audit"), "data": "shards", "splits": ["test"],
                                      "n_samples": 9, "counts": {"duplicate": 1, "leak": 2}})
    doc = write_report(run_dir, method="pca").read_text()
    assert "<h2>Data audit</h2>" in doc and "<td>leak</td><td>2</td>" in doc  # the run's last audit
    assert "metrics.jsonl missing" in doc and "zero-shot top1" not in doc and "no embeddings found" in doc
    assert "<td>image-&gt;text</td>" in doc
    assert not (run_dir / "plots" / "curves.png").exists()


def test_top_k_indices_matches_bruteforce() -> None:
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(7, 12)), rng.normal(size=(50, 12))
    idx, sims = top_k_indices(q, g, 5)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    full = qn @ gn.T
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :5])
    excl = np.arange(7)
    idx2, _ = top_k_indices(g[:7], g, 3, exclude=excl)
    assert not np.any(idx2 == excl[:, None])


def test_query_indices_deterministic() -> None:
    np.testing.assert_array_equal(query_indices(60, 6), [0, 12, 24, 35, 47, 59])
    np.testing.assert_array_equal(query_indices(3, 6), [0, 1, 2])
    labels = np.repeat([7, 3, 5], 20)  # 60 samples in class blocks: evenly spaced would repeat classes
    qi = query_indices(60, 3, labels)
    assert sorted(labels[qi].tolist()) == [3, 5, 7] and qi.tolist() == [30, 50, 10]  # middle of each class
    many = query_indices(60, 5, labels)
    assert len(set(many.tolist())) == 5 and set(labels[many[:3]].tolist()) == {3, 5, 7}
    assert len(set(labels[query_indices(60, 2, labels)].tolist())) == 2


def test_retrieval_grid_lidar(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    data = _fake_npz(rng, n=20)
    data["emb_lidar"] = data.pop("emb_audio")
    data["preview_lidar"] = rng.uniform(0, 50, size=(20, 16, 128)).astype(np.float32)
    data["preview_image"] = rng.integers(0, 255, size=(20, 24, 24, 3), dtype=np.uint8)
    data["kinds"] = np.array(json.dumps({m: KINDS[m] for m in ("image", "text", "lidar")}))
    out = plot_retrieval_grid(data, "lidar", "image", tmp_path / "g.png", n_queries=3, k=4)
    _check_pngs([out])


def test_select_pairs() -> None:
    assert select_pairs(MODS, KINDS) == [("text", "image"), ("image", "text"), ("audio", "image"),
                                         ("text", "audio")]
    assert select_pairs(["image", "lidar"], KINDS) == [("image", "lidar"), ("lidar", "image")]
    pairs = select_pairs(["image", "text", "audio", "lidar"], KINDS)
    assert ("lidar", "image") in pairs and len(pairs) == 6
    assert len(select_pairs(["a", "b", "c", "d"])) <= 6


def test_metrics_table() -> None:
    ev = _fake_eval(np.random.default_rng(3))
    txt = metrics_table(ev)
    for pair, m in ev["retrieval"].items():
        assert pair in txt and f"{m['R@1']:.3f}" in txt and f"{m['mAP@10']:.3f}" in txt
    assert "0.612" in txt and "linear probe" in txt
    assert "zero-shot" not in metrics_table({"retrieval": ev["retrieval"]})


def test_plot_umap_real(tmp_path: Path) -> None:
    data = _fake_npz(np.random.default_rng(4), n=40)
    emb = {m: data[f"emb_{m}"] for m in MODS}
    out = plot_umap(emb, data["labels"], CLASSES, tmp_path / "u.png", max_points=120, seed=0)
    _check_pngs([out])
