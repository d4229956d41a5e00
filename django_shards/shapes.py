"""The shape of a fan-out's query, as merging needs to know it: the kind of rows its
iterable class yields, its ordering, columns and limits (:func:`merge_spec`), and whether
its groups (``values().annotate()``) can span shards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.db import NotSupportedError
from django.db.models.query import (
    BaseIterable,
    FlatValuesListIterable,
    ModelIterable,
    NamedValuesListIterable,
    ValuesIterable,
    ValuesListIterable,
)

from django_shards import merge
from django_shards.merge import MergeSpec, RowKind

if TYPE_CHECKING:
    from django_shards.query import ShardedQuerySet


def row_kind(iterable_class: type[BaseIterable]) -> RowKind:
    if issubclass(iterable_class, FlatValuesListIterable):
        return RowKind.FLAT
    if issubclass(iterable_class, NamedValuesListIterable):
        return RowKind.NAMED
    if issubclass(iterable_class, ValuesListIterable):
        return RowKind.TUPLES
    if issubclass(iterable_class, ValuesIterable):
        return RowKind.DICTS
    if issubclass(iterable_class, ModelIterable):
        return RowKind.MODELS
    raise NotSupportedError(f"{iterable_class.__name__} results cannot be merged across shards.")


def merge_spec(qs: ShardedQuerySet) -> MergeSpec:
    """What merging needs to know of ``qs``."""
    query = qs.query
    computed = (*query.extra_select, *query.values_select, *query.annotation_select)
    selected = getattr(query, "selected", None)
    return MergeSpec(
        kind=row_kind(qs._iterable_class),
        ordering=merge.ordering_of(query),
        columns=tuple(selected) if selected else computed,
        field_names=tuple(qs._fields) if qs._fields else computed,
        low_mark=query.low_mark,
        high_mark=query.high_mark,
        distinct=bool(query.distinct),
        combinator=query.combinator,
        combinator_all=bool(query.combinator_all),
    )


def groups_are_complete(qs: ShardedQuerySet) -> bool:
    """True when no group can span shards: rows are grouped by the model (``pk``) or the
    grouping includes the shard key."""
    query = qs.query
    if query.group_by is True:
        return True
    sk = qs._shard_key
    assert sk is not None
    grouped = set(query.values_select) | set(qs._fields or ())
    return bool({sk.field_name, sk.attname} & grouped) or (
        sk.is_pk and bool({"pk", sk.field.name} & grouped)
    )


def is_grouped(query: Any) -> bool:
    return query.group_by is not None or any(
        getattr(a, "contains_aggregate", False) for a in query.annotation_select.values()
    )


def is_values_grouped(qs: ShardedQuerySet) -> bool:
    return is_grouped(qs.query) and qs.query.group_by is not True


def per_shard_rows(qs: ShardedQuerySet, spec: MergeSpec) -> tuple[Any, tuple[str, ...]]:
    """The queryset each shard runs for a merged fetch (sliced to ``[0:offset+limit]``,
    selecting its ordering values) and the names of those values."""
    shard_qs = qs._chain()
    shard_qs.query.clear_limits()
    order = merge.order_annotations(spec.ordering)
    if order:
        shard_qs = shard_qs.annotate(**order)
    if spec.high_mark is not None:
        shard_qs.query.set_limits(0, spec.high_mark)
    if spec.kind in (RowKind.FLAT, RowKind.NAMED):
        shard_qs._iterable_class = ValuesListIterable
    shard_qs._prefetch_related_lookups = ()  # done once, on the merged rows
    return shard_qs, tuple(order)


def named_aggregates(args: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``aggregate()``'s arguments by name, as Django names them."""
    aggregates = dict(kwargs)
    for arg in args:
        try:
            aggregates[arg.default_alias] = arg
        except (AttributeError, TypeError):
            raise TypeError("Complex aggregates require an alias") from None
    return aggregates
