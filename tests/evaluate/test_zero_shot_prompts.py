"""Zero-shot from the data's own captions: a two-class folder set whose folder names (short codes) the
captions never use; `data pack` records each class's captions as its prompts, `eval` and the report say
which prompts were used (captions, templates x class names, given), and a file of prompts per class works."""

import json

import numpy as np
import pytest
from PIL import Image

from jointspace.config import load_config
from jointspace.data.manifest import pack_folder
from jointspace.errors import UsageError
from jointspace.evaluate.prompts import choose_prompts, read_prompt_file
from jointspace.evaluate.runner import evaluate_run
from jointspace.tasks.contrastive import train
from jointspace.viz.report import metrics_table

from ..conftest import tiny_overrides

CAPTIONS = {"xq1": ["a red square", "a bright red square", "a red square shape"],
            "zk7": ["a blue circle", "a dark blue circle", "a blue round circle"]}


def caption_folder(root, n=24):
    """`root/<code>/NNNN.png` + `NNNN.txt`: red pictures captioned about squares, blue ones about circles."""
    for c, (code, captions) in enumerate(CAPTIONS.items()):
        (root / code).mkdir(parents=True)
        for i in range(n):
            rgb = np.array([(210, 30, 30), (30, 30, 210)][c], dtype=np.uint8)
            noise = np.random.default_rng(100 * c + i).integers(0, 40, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(rgb + noise).save(root / code / f"{i:04d}.png")
            (root / code / f"{i:04d}.txt").write_text(captions[i % 3] + "\n")
    return root


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zeroshot")
    info = pack_folder(caption_folder(tmp / "photos"), tmp / "shards", val_fraction=0.25, test_fraction=0.25)
    overrides = [o for o in tiny_overrides(tmp / "shards", tmp / "runs", "captions", epochs=6) if "audio" not in o]
    cfg = load_config(None, [*overrides, "data.modalities=[image, text]", "data.image_size=8", "train.lr=0.01",
                             "model.towers.image.name=cnn", "model.towers.text.name=transformer",
                             "model.towers.text.params.heads=2", "loss.positives=label", "loss.anchor=image"])
    return info, train(cfg, show_progress=False), tmp


def test_pack_records_each_class_captions_as_its_prompts(caption_run):
    info, _, _ = caption_run
    assert info["zero_shot_prompts_from"] == "captions"
    assert {k: sorted(v) for k, v in info["zero_shot_prompts"].items()} == {k: sorted(v) for k, v in CAPTIONS.items()}


def test_eval_says_which_prompts_it_used(caption_run):
    _, run_dir, tmp = caption_run
    result = evaluate_run(run_dir)
    assert result["zero_shot_prompts"] == {"from": "captions"}
    assert result["zero_shot"]["image"]["top1"] >= 0.9, result["zero_shot"]  # the folder codes would be chance
    assert "zero-shot prompts: captions" in metrics_table(result)
    prompts = tmp / "prompts.yaml"
    prompts.write_text("xq1: [a red square]\nzk7: a blue circle\n")
    given = evaluate_run(run_dir, zero_shot_prompts=prompts)
    assert given["zero_shot_prompts"] == {"from": "given", "file": str(prompts)}
    assert given["zero_shot"]["image"]["top1"] >= 0.9 and f"zero-shot prompts: given ({prompts})" in metrics_table(given)
    swapped = tmp / "swapped.json"
    swapped.write_text(json.dumps({"xq1": ["a blue circle"], "zk7": ["a red square"]}))
    assert evaluate_run(run_dir, zero_shot_prompts=swapped)["zero_shot"]["image"]["top1"] <= 0.1
    report = (run_dir / "eval.json").read_text()
    assert '"from": "given"' in report


def test_templates_x_class_names_without_prompts_and_bad_prompt_files(tmp_path):
    prompts, used = choose_prompts({"class_names": ["a", "b"], "prompt_templates": ["a photo of {}"]})
    assert prompts == [["a photo of a"], ["a photo of b"]] and used["from"] == "templates x class names"
    prompts, used = choose_prompts({"class_names": ["a", "b"], "zero_shot_prompts": {"a": ["x"], "b": []}})
    assert prompts[0] == ["x"] and used == {"from": "given", "filled": ["b"]}
    bad = tmp_path / "p.yaml"
    for text, match in [("[a, b]", "expected a mapping of class name -> list of prompts, got list"),
                        ("a: [x]\nb: 3\n", "class 'b': expected a non-empty list of non-empty strings, got 3"),
                        ("a: [x]\n", r"no prompts for \['b'\]"),
                        ("a: [x]\nb: [y]\nc: [z]\n", r"classes the data lacks: \['c'\]"),
                        ("a: [x\n", "not YAML or JSON")]:
        bad.write_text(text)
        with pytest.raises(UsageError, match=f"eval.zero_shot_prompts: {bad}: {match}"):
            read_prompt_file(bad, ["a", "b"])
    with pytest.raises(UsageError, match="no such file"):
        read_prompt_file(tmp_path / "none.yaml", ["a"])
