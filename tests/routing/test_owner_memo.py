"""A map remembers the owners of the int keys it routed (no hashing on a repeated key)."""

from __future__ import annotations

from django_shards import shardmap
from django_shards.conf import get_config
from django_shards.shardmap import map_from_settings


def test_owner_of_remembers_int_keys_and_agrees_with_shard_for_key(monkeypatch):
    monkeypatch.setattr(shardmap, "OWNERS_REMEMBERED", 100)
    for group in ("users", "events", "metrics", "legacy"):
        shard_map = map_from_settings(get_config().groups[group])
        for key in range(1, 251):
            assert shard_map.owner_of(key) is shard_map.shard_for_key(key)
            assert shard_map.owners[key] is shard_map.shard_for_key(key)
            assert len(shard_map.owners) <= 100  # bounded
        # only ints are remembered: other keys that compare equal may hash elsewhere
        shard_map.owners.clear()
        for key in ("7", 7.0, True):
            try:
                shard_map.owner_of(key)
            except Exception:  # noqa: BLE001 - a strategy may refuse the type
                continue
        assert shard_map.owners == {}
