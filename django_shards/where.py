"""Reading the shard key out of a compiled WHERE tree.

The key is read from the tree Django compiled, so it is found however the filter was
written (``pk=``, ``author=obj``, ``author_id__in=[...]``, ``Q`` objects, related
managers, ``get()``, ``in_bulk()``, the deletion collector ...). ``range`` predicates under
an ordered strategy (range) name the shards they overlap.

Every function here reads; none runs a query.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

from django.db.models import lookups
from django.db.models.expressions import Col
from django.db.models.sql.query import Query
from django.db.models.sql.where import AND, NothingNode, WhereNode

from django_shards.exceptions import NoShardForKey
from django_shards.keys import ShardKey
from django_shards.shardmap import ShardMap

_RANGE_LOOKUPS: dict[type, tuple[bool, bool]] = {
    # lookup class -> (sets the lower bound, inclusive)
    lookups.GreaterThan: (True, False),
    lookups.GreaterThanOrEqual: (True, True),
    lookups.LessThan: (False, False),
    lookups.LessThanOrEqual: (False, True),
}


def is_expression(value: Any) -> bool:
    """True for an expression (``F()``, a subquery ...), which names no key value."""
    return hasattr(value, "resolve_expression")


def on_key(lhs: Any, base_alias: str | None, column: str) -> bool:
    """True when a lookup's left side is the key ``column`` of the query's own table.

    The one test of "is this the key column"; ``ShardedQuerySet._target_shards`` inlines
    the same three comparisons on its one-key fast path (keep them alike).
    """
    return (
        isinstance(lhs, Col)
        and lhs.alias == base_alias
        and getattr(lhs.target, "column", None) == column
    )


def base_alias(query: Any) -> str | None:
    """The alias of the query's own table (``Query.base_table`` would cache None on a query
    that has no table yet, e.g. ``none()``)."""
    return next(iter(query.alias_map), None)


def _locate(shard_map: ShardMap, sk: ShardKey, value: Any) -> str | None:
    """The name of the shard owning key ``value``; None when no shard holds it (the query
    then matches nothing there)."""
    try:
        return shard_map.strategy.shard_for_key(shard_map.layout, sk.normalize(value))
    except NoShardForKey:
        return None


def _shards_from_lookup(
    node: lookups.Lookup, alias: str | None, sk: ShardKey, shard_map: ShardMap
) -> set[str] | None:
    if not on_key(node.lhs, alias, sk.column):
        return None
    rhs = node.rhs
    if is_expression(rhs):
        return None
    if isinstance(node, lookups.Exact):
        name = _locate(shard_map, sk, rhs)
        return set() if name is None else {name}
    if isinstance(node, lookups.In):
        if any(is_expression(v) for v in rhs):
            return None
        return {
            n for n in (_locate(shard_map, sk, v) for v in rhs if v is not None) if n is not None
        }
    if not shard_map.strategy.ordered:
        return None
    if isinstance(node, lookups.Range):
        lo, hi = (sk.normalize(v) for v in rhs)
        found = shard_map.shards_for_range(lo, hi, True, True)
    else:
        for cls, (is_lower, inclusive) in _RANGE_LOOKUPS.items():
            if isinstance(node, cls):
                bound = sk.normalize(rhs)
                if is_lower:
                    found = shard_map.shards_for_range(bound, None, inclusive, False)
                else:
                    found = shard_map.shards_for_range(None, bound, True, inclusive)
                break
        else:
            return None
    return None if found is None else {s.name for s in found}


def shards_from_where(
    node: Any, alias: str | None, sk: ShardKey, shard_map: ShardMap
) -> set[str] | None:
    """Names of the shards a WHERE tree can match, or None when it does not constrain the key.

    Conservative: a negated branch or an unknown expression constrains nothing. ``alias``
    is the query's own table (:func:`base_alias`).
    """
    if isinstance(node, WhereNode):
        if node.negated:
            return None
        children = node.children
        if len(children) == 1 and isinstance(children[0], lookups.Lookup):  # get(pk=...)
            return _shards_from_lookup(children[0], alias, sk, shard_map)
        results = [shards_from_where(c, alias, sk, shard_map) for c in children]
        if node.connector == AND:
            known = [r for r in results if r is not None]
            return set.intersection(*known) if known else None
        if not results or any(r is None for r in results):
            return None
        return set().union(*cast("list[set[str]]", results))
    if isinstance(node, NothingNode):
        return set()
    if isinstance(node, lookups.Lookup):
        return _shards_from_lookup(node, alias, sk, shard_map)
    return None


def shards_from_query(query: Any, sk: ShardKey, shard_map: ShardMap) -> set[str] | None:
    """:func:`shards_from_where` for a whole query, ``union()`` and friends included."""
    if query.combinator:
        found = [
            shards_from_where(q.where, base_alias(q), sk, shard_map) for q in query.combined_queries
        ]
        if any(n is None for n in found):
            return None
        return set().union(*cast("list[set[str]]", found))
    return shards_from_where(query.where, base_alias(query), sk, shard_map)


def keys_from_where(node: Any, alias: str | None, sk: ShardKey) -> set[Any] | None:
    """The key values an AND-ed WHERE tree names with ``=``/``IN``, or None if it names none."""
    if isinstance(node, WhereNode):
        if node.negated or node.connector != AND:
            return None
        found = [keys_from_where(c, alias, sk) for c in node.children]
        known = [k for k in found if k is not None]
        return set.intersection(*known) if known else None
    if not isinstance(node, lookups.Exact | lookups.In) or not on_key(node.lhs, alias, sk.column):
        return None
    values = [node.rhs] if isinstance(node, lookups.Exact) else node.rhs
    if is_expression(values) or any(is_expression(v) for v in values):
        return None
    return {sk.normalize(v) for v in values if v is not None}


def keys_of(query: Any, sk: ShardKey) -> set[Any] | None:
    """:func:`keys_from_where` for a query's own filters."""
    return keys_from_where(query.where, base_alias(query), sk)


def subqueries(node: Any) -> Iterator[Any]:
    """Every ``Query`` nested in a WHERE tree (``__in=queryset``, ``Exists``, ``Subquery``)."""
    if isinstance(node, Query):
        yield node
        yield from subqueries(node.where)
        return
    if isinstance(node, WhereNode):
        for child in node.children:
            yield from subqueries(child)
        return
    query = getattr(node, "query", None)
    if isinstance(query, Query):
        yield from subqueries(query)
    if hasattr(node, "get_source_expressions"):
        for expr in node.get_source_expressions():
            if expr is not None:
                yield from subqueries(expr)
    rhs = getattr(node, "rhs", None)
    if rhs is not None and is_expression(rhs):
        yield from subqueries(rhs)
