"""django_shards: shard Django models across MySQL/MariaDB databases with the plain ORM."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "Shard",
    "ShardedManager",
    "ShardedQuerySet",
    "SnowflakeField",
    "atomic",
    "consistency",
    "shard_for",
]


def __getattr__(name: str) -> Any:
    # Lazy re-exports: importing the package must not import models before apps load.
    if name == "ShardedManager":
        from django_shards.manager import ShardedManager

        return ShardedManager
    if name == "ShardedQuerySet":
        from django_shards.query import ShardedQuerySet

        return ShardedQuerySet
    if name == "SnowflakeField":
        from django_shards.ids import SnowflakeField

        return SnowflakeField
    if name == "Shard":
        from django_shards.conf import Shard

        return Shard
    if name == "shard_for":
        from django_shards.routing import shard_for

        return shard_for
    if name == "consistency":
        from django_shards.context import consistency

        return consistency
    if name == "atomic":
        from django_shards.transaction import atomic

        return atomic
    raise AttributeError(f"module 'django_shards' has no attribute {name!r}")
