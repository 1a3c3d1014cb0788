"""Training with mined hard negatives (data.hard_negatives, data.n_per_anchor): the drawn negatives, the
batch's extra candidates and their positive mask, the refusals, and a CLI run that resumes bitwise equal."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from jointspace.cli import app, builtin_config
from jointspace.data.dataset import load_split
from jointspace.data.hard_negatives import HardNegatives, Negatives, write_negatives
from jointspace.data.shards import DataError
from jointspace.errors import UsageError
from jointspace.losses.extra import WithExtra, extra_key

from ..conftest import tiny_overrides

runner = CliRunner()
pytest.importorskip("pyarrow")


def _mined(digits_dir, path, per_anchor=3, skip_first=True):
    """A negatives file by hand: each train sample's first `per_anchor` samples of another label (the
    first sample none), image -> text."""
    data = load_split(digits_dir, "train", ["image", "text"])
    labels, keys = data.labels.tolist(), data.keys
    rows = [(a, j) for a in range(int(skip_first), len(keys))
            for j in [j for j in range(len(keys)) if labels[j] != labels[a]][:per_anchor]]
    write_negatives(path, Negatives([keys[a] for a, _ in rows], [keys[j] for _, j in rows],
                                    torch.arange(len(rows)).numpy(), torch.zeros(len(rows)).numpy(),
                                    torch.ones(len(rows)).numpy(), "image", "text"))
    return data, rows


def test_drawn_negatives_come_from_each_anchors_list_and_depend_on_seed_and_epoch(digits_dir, tmp_path):
    data, rows = _mined(digits_dir, tmp_path / "neg.parquet")
    mined = {a: {j for b, j in rows if b == a} for a, _ in rows}
    neg = HardNegatives(tmp_path / "neg.parquet", data, 2, "label", "text")
    neg.draw(0, 0)
    first = neg.picks.clone()
    assert (first[0] == -1).all()  # no negatives mined for sample 0: empty slots
    assert all(set(first[a].tolist()) <= mined[a] and len(set(first[a].tolist())) == 2 for a in mined)
    neg.draw(0, 0)
    assert torch.equal(neg.picks, first)
    neg.draw(0, 1)
    assert not torch.equal(neg.picks, first)

    idx = torch.tensor([0, 5, 7])
    batch, mask = neg.extend(data.batch(idx), idx, None)
    picks = neg.picks[idx]
    assert batch[extra_key("text")].shape == (3, 2, data.inputs["text"].shape[1])
    assert torch.equal(batch[extra_key("text")][1:], data.inputs["text"][picks[1:]])
    assert isinstance(mask, WithExtra) and mask.valid.tolist() == [False, False, True, True, True, True]
    flat = picks.clamp(min=0).reshape(-1)
    same = data.labels[idx][:, None] == data.labels[flat][None, :]  # label positives, by hand
    assert torch.equal(mask.extra, same | (idx[:, None] == flat[None, :]))


def test_keys_missing_from_the_data_are_one_line_naming_the_file(digits_dir, tmp_path):
    path = tmp_path / "neg.parquet"
    write_negatives(path, Negatives(["nope"], ["digits-train-00001"], torch.zeros(1, dtype=torch.long).numpy(),
                                    torch.zeros(1).numpy(), torch.zeros(1).numpy(), "image", "text"))
    data = load_split(digits_dir, "train", ["image", "text"])
    with pytest.raises(DataError, match=f"{path}: 1 keys are not in the train split .first: 'nope'"):
        HardNegatives(path, data, 1, "label", "text")


def test_a_file_with_no_negatives_is_one_line_naming_the_file(digits_dir, tmp_path):
    """`mine` can find nothing inside its window (it says so); training from that file is refused, not
    started with a modality pair it cannot know."""
    path = tmp_path / "neg.parquet"
    empty = torch.zeros(0)
    write_negatives(path, Negatives([], [], empty.long().numpy(), empty.numpy(), empty.numpy(), "image", "text"))
    data = load_split(digits_dir, "train", ["image", "text"])
    with pytest.raises(DataError, match=f"{path}: holds no negatives"):
        HardNegatives(path, data, 1, "label", "text")


def test_refusals(tiny_cfg, digits_dir, tmp_path):
    from jointspace.tasks.contrastive import train

    _mined(digits_dir, tmp_path / "neg.parquet")
    with pytest.raises(UsageError, match="hard_negatives needs the train split in memory"):
        tiny_cfg(f"data.hard_negatives={tmp_path / 'neg.parquet'}", "data.streaming=true")
    cfg = tiny_cfg(f"data.hard_negatives={tmp_path / 'neg.parquet'}", "loss.name=triplet", epochs=1)
    with pytest.raises(UsageError, match="the loss 'triplet' cannot take extra candidates"):
        train(cfg, show_progress=False)


def test_cli_training_with_hard_negatives_and_no_duplicates_resumes_bitwise_equal(digits_dir, tmp_path, monkeypatch):
    from jointspace.losses import BindingLoss

    _mined(digits_dir, tmp_path / "neg.parquet")
    seen = []
    real = BindingLoss._with_extra

    def spy(self, emb, gathered, positives, extra, ctx):
        seen.append((emb[extra_key("text")].shape[0], extra.extra.shape))
        return real(self, emb, gathered, positives, extra, ctx)

    monkeypatch.setattr(BindingLoss, "_with_extra", spy)
    sets = [*tiny_overrides(digits_dir, tmp_path / "runs", "hn", epochs=2), "train.checkpoint_every_steps=2",
            "train.keep_checkpoints=10", f"data.hard_negatives={tmp_path / 'neg.parquet'}", "data.n_per_anchor=2",
            "loss.positives=instance", "data.batch_sampler=no_duplicates"]
    args = ["train", str(builtin_config("digits")), *[x for s in sets for x in ("--set", s)]]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert seen and all(shape == (16 * 2, (16, 32)) for shape in seen)  # every step: 2 extra texts per anchor
    full = tmp_path / "runs" / "hn"
    half = tmp_path / "runs" / "hn_half"
    shutil.copytree(full, half)
    (half / "model.safetensors").unlink()
    (half / "checkpoints" / "latest.json").write_text(json.dumps({"name": "step_0000004"}))
    again = runner.invoke(app, [*args, "--set", "name=hn_half", "--resume"])
    assert again.exit_code == 0, again.output
    a, b = load_file(str(full / "model.safetensors")), load_file(str(half / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
