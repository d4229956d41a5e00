"""The shards of the ``users`` group as they are now (a split adds one)."""

from django_shards import Shard
from django_shards.shardmap import get_map

GROUP = "users"


def user_shards() -> list[Shard]:
    """The shards that own part of the ``users`` key space, in map order."""
    return get_map(GROUP).owning_shards


def shard_names() -> list[str]:
    return [shard.name for shard in user_shards()]
