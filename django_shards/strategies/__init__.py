"""Strategies: a key becomes a *point*; a strategy's layout maps points to shard names.

One module per strategy. A custom strategy is any :class:`Strategy` subclass named by
dotted path in a group's ``STRATEGY``.
"""

from django_shards.strategies.base import (
    Layout,
    StoredKeys,
    Strategy,
    canonical_text,
    load_strategy,
    register_drawer,
)

__all__ = ["Layout", "StoredKeys", "Strategy", "canonical_text", "load_strategy", "register_drawer"]
