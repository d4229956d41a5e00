"""Errors raised by django_shards. All subclass :class:`ShardingError`."""

from __future__ import annotations

from django.db import OperationalError


class ShardingError(Exception):
    """Base class of every django_shards error."""


class ShardKeyRequired(ShardingError):
    """A query on a sharded model names no shard key and fan-out is refused."""


class NoShardForKey(ShardingError, LookupError):
    """The key falls outside every shard's range."""


class ShardUnavailable(ShardingError, OperationalError):
    """A shard's primary, or the catalog holding the shard maps, cannot be reached (also an
    ``OperationalError``, as before)."""


class ShardMoving(ShardingError):
    """A write hit a key frozen by a split's cutover. Retryable: try again shortly."""

    retryable = True


class FanoutError(ShardingError):
    """A shard failed during a fan-out query (and partial results were not allowed)."""


class ShardKeyChanged(ShardingError, ValueError):
    """A write would change a row's shard key: the row would stay on its old shard, or be
    copied to the new one. Nothing was written. To move a row, create it with the new key
    and delete the old one."""


class CrossShardRelation(ShardingError, ValueError):
    """Two objects on different shards (or groups) were related."""


class SplitError(ShardingError):
    """A shard split cannot be planned, run, resumed or aborted as asked."""


class UnknownShard(ShardingError, LookupError, ValueError):
    """A shard name that the group's map does not know."""
