"""Property tests (hypothesis): the `where` filter parsers and `--set` overrides take any input and
give either a parsed value or their own clear error, never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jointspace.config import ConfigError, apply_overrides, load_config
from jointspace.index.filters import WHERE_TYPES, IndexStoreError, parse_where
from jointspace.serve.parsing import BadRequest, _where

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
keys = st.sampled_from(list(WHERE_TYPES)) | st.text(max_size=12)


def _check_parsed(out: dict) -> None:
    assert set(out) <= set(WHERE_TYPES)
    for key, values in out.items():
        assert values and all(type(v) is WHERE_TYPES[key] for v in values)


@SETTINGS
@given(st.dictionaries(keys, json_values, max_size=5) | st.lists(st.text(max_size=30), max_size=6) | json_values)
def test_parse_where_parses_or_names_the_problem(where):
    try:
        out = parse_where(where)
    except IndexStoreError as err:
        assert str(err).startswith("where")
    else:
        _check_parsed(out)


@SETTINGS
@given(st.text(max_size=60) | st.builds(json.dumps, st.dictionaries(keys, json_values, max_size=4)))
def test_the_form_where_parses_or_is_a_422(raw):
    """The service's form field: `label=3&split=test` or a JSON object."""
    try:
        out = _where(raw)
    except BadRequest as err:
        assert err.status == 422 and err.detail.startswith("where")
    else:
        _check_parsed(out)


def test_where_examples():
    assert _where("label=3&split=test") == {"label": [3], "split": ["test"]}
    assert parse_where({"label": 3.0, "modality": ["image", "audio"]}) == {"label": [3], "modality": ["image", "audio"]}
    for bad in ({"split": 3}, {"label": 1.5}, {"label": True}, {"nope": 1}, ["label"]):
        with pytest.raises(IndexStoreError):
            parse_where(bad)


override_keys = st.sampled_from(["train.lr", "train.epochs", "model.embed_dim", "data.modalities", "loss.name",
                                 "train", "seed", "model.towers.image.params.channels", "eval.k"]) \
    | st.text(max_size=15)


@SETTINGS
@given(st.lists(st.builds(lambda k, v: f"{k}={v}", override_keys, st.text(max_size=25)) | st.text(max_size=25),
                max_size=4))
@example(["seed=!!python/name:os.system"]).via("a YAML tag is not constructed")
@example(["train.lr=.nan", "train.lr.x=1", "seed={a: 1", "=3", "train=5"])
def test_set_overrides_give_a_config_or_a_config_error(overrides):
    try:
        cfg = load_config(None, overrides)
    except ConfigError as err:
        assert str(err)
    else:
        assert cfg.train.epochs >= 1 and cfg.model.embed_dim >= 1


@SETTINGS
@given(st.lists(st.text(max_size=25), max_size=4))
def test_apply_overrides_sets_the_value_or_names_the_override(overrides):
    try:
        raw = apply_overrides({"train": {"lr": 0.1}}, overrides)
    except ConfigError as err:
        assert "override" in str(err)
    else:
        assert isinstance(raw, dict)
