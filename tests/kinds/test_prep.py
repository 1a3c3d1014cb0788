"""Prep keyed by kind: each kind's size fields are Prep sizes and `data.<name>` config fields."""

from __future__ import annotations

import pytest

from jointspace.config import ConfigError, load_config
from jointspace.kinds import Prep, all_kinds, size_fields
from jointspace.runs import config_prep


def test_every_kind_size_is_a_prep_size_and_a_config_field():
    declared = {s.name for k in all_kinds() for s in k.sizes}
    assert declared == set(size_fields()) == set(Prep().sizes)
    cfg = load_config(None, [f"data.{name}={size_fields()[name].default + 1}" for name in declared])
    assert config_prep(cfg).sizes == {n: s.default + 1 for n, s in size_fields().items()}


def test_sizes_read_as_attributes_and_old_run_json_reads_unchanged():
    old = {"image_size": 12, "context_length": 8, "max_frames": 10, "max_points": 64,
           "channels": {"image": 1}, "tokenizers": {}, "max_range": {"lidar": 40.0}, "gone": 3}
    prep = Prep.from_json(old)
    assert (prep.image_size, prep.context_length, prep.max_frames, prep.max_points) == (12, 8, 10, 64)
    assert prep.channels == {"image": 1} and prep.max_range == {"lidar": 40.0}
    assert Prep.from_json(prep.to_json()) == prep
    assert {k: v for k, v in prep.to_json().items() if k in old} == {k: v for k, v in old.items() if k != "gone"}
    assert prep.updated(image_size=5).image_size == 5 and prep.image_size == 12
    with pytest.raises(ValueError, match="unknown size field 'pixels'"):
        Prep(pixels=3)


def test_an_unknown_data_size_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="data.pixels: unknown field"):
        load_config(None, ["data.pixels=3"])
    with pytest.raises(ConfigError, match="data.context_length"):
        load_config(None, ["data.context_length=1"])
