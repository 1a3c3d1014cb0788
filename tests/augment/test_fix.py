"""The fix loop end to end on tiny data: analysis, generated shards, retrained runs, before/after table."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.config import load_config
from jointspace.data.shards import read_info
from jointspace.data.subsample import subsample_classes
from jointspace.kinds import Prep
from jointspace.tasks.classify import ClassifyRunConfig, train_classifier

from .conftest import tiny_augment_overrides


@pytest.fixture(scope="module")
def imbalanced_run(digits_dir, tmp_path_factory):
    """A 2-epoch image classifier on tiny digits with `three` thinned to a third in train."""
    root = tmp_path_factory.mktemp("fix")
    subsample_classes(digits_dir, root / "imb", {"three": 0.3})
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[
        f"output_dir={root}/runs", "name=clf", f"data.path={root}/imb", "data.modalities=[image]",
        "data.image_size=8", "model.embed_dim=8", "model.towers.image.name=cnn",
        "model.towers.image.params.channels=[4, 8]", "fusion.strategy=late", "train.epochs=2", "train.batch_size=16",
        "train.warmup_steps=0", "tracker=none"])
    return train_classifier(cfg, show_progress=False)


def test_cli_fix_end_to_end(imbalanced_run, tmp_path):
    aug = tmp_path / "aug.yaml"
    aug.write_text(yaml.safe_dump({"fix": {"classes": ["three"], "n_per_class": 6, "upsample": 2.0}}))
    out = tmp_path / "fix"
    sets = [x for o in tiny_augment_overrides("ignored", "ignored", steps=4)
            if not o.startswith(("name=", "output_dir=", "data.path=")) for x in ("--set", o)]
    result = CliRunner().invoke(app, ["augment", "fix", str(imbalanced_run), "--out", str(out), "--config", str(aug),
                                      *sets])
    assert result.exit_code == 0, result.output
    fix = json.loads((out / "fix.json").read_text())
    assert fix["targets"] == ["three"] and fix["n_generated"] == 6 and fix["analysis"]["split"] == "val"
    assert set(fix["runs"]) == {"before", "oversampled", "generated"}
    for m in fix["runs"].values():
        assert 0 <= m["recall"]["three"] <= 1 and 0 <= m["accuracy"] <= 1
    info = read_info(out / "generated")
    assert info["splits"]["train"]["n_samples"] == 6 and info["splits"]["train"]["class_counts"] == {"3": 6}
    retrained = load_config(out / "clf-generated" / "config.yaml")
    assert [s.weight for s in retrained.data.sources] == [1.0, 2.0] and retrained.data.resampled
    assert retrained.data.samples_per_epoch == read_info(retrained.data.sources[0].path)["splits"]["train"]["n_samples"]
    table = (out / "fix.md").read_text()
    assert "| run | recall three | accuracy | macro recall |" in table and "generated images (fix)" in table
    assert "recall three" in (out / "report.html").read_text() and (out / "generated_grid.png").exists()
    again = CliRunner().invoke(app, ["augment", "fix", str(imbalanced_run), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_fix_picks_worst_classes_and_refuses_unfinished_runs(tmp_path):
    from jointspace.augment.fix import pick_targets

    analysis = {"recall": {"a": 0.9, "b": 0.1, "c": 0.1, "d": None}, "support": {"a": 5, "b": 9, "c": 3, "d": 0}}
    assert pick_targets(analysis, 2, []) == ["c", "b"]
    assert pick_targets(analysis, 1, ["a"]) == ["a"]
    with pytest.raises(ValueError, match=r"\['z'\]"):
        pick_targets(analysis, 1, ["z"])
    run = tmp_path / "contrastive"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"kinds": {"image": "image"}}))
    result = CliRunner().invoke(app, ["augment", "fix", str(run)])
    assert result.exit_code == 2 and "needs a finished classifier run" in result.output


def test_generated_shards_borrow_other_modalities(digits_dir, tmp_path):
    """A multi-modality run: generated images come with text and audio of real samples of their class."""
    import numpy as np

    from jointspace.augment.fix import write_generated
    from jointspace.data.dataset import load_split

    cfg = load_config(None, [f"data.path={digits_dir}", "data.modalities=[image, text, audio]"])
    images = {"seven": np.full((3, 8, 8), 200, dtype=np.uint8)}
    assert write_generated(tmp_path / "gen", images, cfg, "image", {"generated": True}) == 3
    data = load_split(tmp_path / "gen", "train", ["image", "text", "audio"], Prep(image_size=8))
    assert data.labels.tolist() == [7, 7, 7] and all("seven" in c for c in data.captions["text"])
    assert data.inputs["audio"].shape[0] == 3 and data.inputs["image"].shape == (3, 1, 8, 8)


def test_fix_on_a_contrastive_run_judges_retrieval(tiny_cfg, diffusion_run, tmp_path):
    """A contrastive image+text+audio run: targets from image->text class-level R@1 on val, retrained by the
    contrastive loop with the generated shards mixed in, the same measure before and after."""
    import numpy as np

    from jointspace.augment.fix import analyse_split, run_fix
    from jointspace.diffusion.config import load_augment_config
    from jointspace.tasks.contrastive import train

    run = train(tiny_cfg("loss.positives=label", name="contrastive", epochs=1),
                show_progress=False)
    aug = load_augment_config(None, [*tiny_augment_overrides("ignored", tmp_path / "unused", steps=4),
                                     "fix.worst=2", "fix.n_per_class=4", "fix.oversample_control=false"])
    result = run_fix(run, aug, diffusion=diffusion_run, out=tmp_path / "fix", log=lambda _: None)
    assert result["task"] == "contrastive" and result["measure"] == "image->text R@1 (class-level)"
    assert len(result["targets"]) == 2 and set(result["runs"]) == {"before", "generated"}
    recall = result["analysis"]["recall"]
    assert sorted(recall[c] for c in result["targets"]) == sorted(v for v in recall.values() if v is not None)[:2]
    retrained = load_config(tmp_path / "fix" / "contrastive-generated" / "config.yaml")
    assert len(retrained.data.sources) == 2 and (tmp_path / "fix" / "contrastive-generated" / "model.safetensors").exists()
    # the "before" row is the same measure recomputed by hand: top-1 text of each test image, same class?
    from jointspace.data.dataset import load_split
    from jointspace.evaluate.embed import embed_split
    from jointspace.runs import load_run
    from jointspace.tasks.common import split_kwargs

    cfg, model, _ = load_run(run)
    data = load_split(cfg.data.path, cfg.eval.split, **split_kwargs(cfg))
    emb = embed_split(model, data)
    hit = (data.labels[(emb["image"] @ emb["text"].T).argmax(1)] == data.labels).numpy()
    assert result["runs"]["before"]["accuracy"] == pytest.approx(hit.mean())
    for c in result["targets"]:
        k = data.class_names.index(c)
        assert result["runs"]["before"]["recall"][c] == pytest.approx(hit[data.labels.numpy() == k].mean())
    assert analyse_split(run, cfg.eval.split)["accuracy"] == pytest.approx(float(np.mean(hit)))
    assert "R@1" in (tmp_path / "fix" / "fix.md").read_text()
