"""`data subsample`: one class thinned in one split, everything else copied."""

import pytest
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.data.dataset import load_split
from jointspace.data.shards import DataError, read_info
from jointspace.data.subsample import parse_keep, subsample_classes


def test_subsample_one_class(digits_dir, tmp_path):
    before = read_info(digits_dir)["splits"]
    info = subsample_classes(digits_dir, tmp_path / "imb", {"three": 0.5}, seed=1)
    counts = info["splits"]["train"]["class_counts"]
    assert counts["3"] == round(before["train"]["class_counts"]["3"] * 0.5)
    assert {k: v for k, v in counts.items() if k != "3"} == {k: v for k, v in before["train"]["class_counts"].items()
                                                           if k != "3"}
    assert info["splits"]["test"]["class_counts"] == before["test"]["class_counts"]
    assert info["subsampled"]["keep"] == {"three": 0.5} and info["modalities"] == read_info(digits_dir)["modalities"]
    assert len(load_split(tmp_path / "imb", "train", ["image", "audio"])) == info["splits"]["train"]["n_samples"]
    with pytest.raises(DataError, match=r"\['thirteen'\]"):
        subsample_classes(digits_dir, tmp_path / "x", {"thirteen": 0.5})


def test_parse_keep_and_cli(digits_dir, tmp_path):
    assert parse_keep(["three=0.05", "one=1"]) == {"three": 0.05, "one": 1.0}
    for bad in ("three", "three=0", "three=1.5", "=0.5", "three=x"):
        with pytest.raises(ValueError, match="CLASS=FRACTION"):
            parse_keep([bad])
    result = CliRunner().invoke(app, ["data", "subsample", str(digits_dir), "--out", str(tmp_path / "imb"),
                                      "--keep", "three=0.25"])
    assert result.exit_code == 0, result.output
    assert read_info(tmp_path / "imb")["subsampled"]["keep"] == {"three": 0.25}
