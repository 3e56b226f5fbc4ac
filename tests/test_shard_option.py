"""The `--shard I/N` option of tests/conftest.py: every test in exactly one shard, bad values rejected."""

from types import SimpleNamespace

import pytest

from tests.conftest import pytest_collection_modifyitems


def fake_config(shard, deselected):
    hook = SimpleNamespace(pytest_deselected=lambda items: deselected.extend(items))
    return SimpleNamespace(getoption=lambda name: shard, hook=hook)


def test_shards_partition_the_collected_tests():
    collected = [f"test_{i}" for i in range(11)]
    seen = []
    for index in range(3):
        items, dropped = list(collected), []
        pytest_collection_modifyitems(fake_config(f"{index}/3", dropped), items)
        assert sorted(items + dropped) == sorted(collected)
        seen += items
    assert sorted(seen) == sorted(collected)  # each test in exactly one shard


def test_no_shard_keeps_everything():
    items, dropped = ["a", "b"], []
    pytest_collection_modifyitems(fake_config(None, dropped), items)
    assert items == ["a", "b"] and dropped == []


@pytest.mark.parametrize("shard", ["3/3", "-1/2", "1", "a/b"])
def test_bad_shards_are_usage_errors(shard):
    with pytest.raises(pytest.UsageError, match="--shard expects"):
        pytest_collection_modifyitems(fake_config(shard, []), ["a"])
