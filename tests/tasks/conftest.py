"""Tiny shapes shards (RGB + LiDAR + caption) for the supervised-loop tests."""

import pytest


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """84 procedural scenes: 59 train / 13 val / 13 test (about 1 s to render)."""
    from jointspace.data.builtin import synthesize

    root = tmp_path_factory.mktemp("shards") / "shapes"
    synthesize("shapes", root, seed=0, n=84, maxcount=100)
    return root
