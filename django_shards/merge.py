"""Merging the answers of several shards into what one database would have answered.

Rows: each shard runs the query with its ordering values selected as extra annotations
and its slice widened to ``[0:offset+limit]``; the sorted streams are merged with a heap,
NULLs placed as the backend places them and strings compared the way the backend's
default collation does (MySQL's ``*_general_ci`` ignores case and accents).
Counts and aggregates are combined from per-shard parts (``Avg`` through sum and count);
``values(...).annotate(...)`` groups are merged per group.
"""

from __future__ import annotations

import copy
import heapq
import random
import unicodedata
from collections import namedtuple
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import total_ordering
from typing import TYPE_CHECKING, Any

from django.db import NotSupportedError, connections
from django.db.models import (
    Aggregate,
    Avg,
    BooleanField,
    Count,
    DecimalField,
    F,
    IntegerField,
    Max,
    Min,
    Sum,
)
from django.db.models.expressions import OrderBy
from django.db.models.functions import Coalesce
from django.db.models.query import (
    FlatValuesListIterable,
    ModelIterable,
    NamedValuesListIterable,
    ValuesIterable,
    ValuesListIterable,
)

if TYPE_CHECKING:
    from django_shards.query import ShardedQuerySet

ORDER_PREFIX = "_shards_o"
RANDOM = object()


# -- ordering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderItem:
    expression: Any
    name: str | None  # the field or annotation name, when the item is one
    descending: bool
    nulls_first: bool = False
    nulls_last: bool = False


def ordering_of(query: Any) -> list[OrderItem] | object:
    """The query's effective ordering as :class:`OrderItem` s, or :data:`RANDOM`."""
    if query.extra_order_by:
        raise NotSupportedError("extra(order_by=...) cannot be merged across shards.")
    if query.order_by:
        items = query.order_by
    elif query.default_ordering and query.get_meta().ordering:
        items = query.get_meta().ordering
    else:
        items = ()
    out: list[OrderItem] = []
    for item in items:
        if isinstance(item, str):
            if item == "?":
                return RANDOM
            name = item.lstrip("-+")
            out.append(OrderItem(F(name), name, item.startswith("-")))
        elif isinstance(item, OrderBy):
            expr = item.expression
            out.append(
                OrderItem(
                    expr,
                    expr.name if isinstance(expr, F) else None,
                    item.descending,
                    bool(item.nulls_first),
                    bool(item.nulls_last),
                )
            )
        elif hasattr(item, "resolve_expression"):
            out.append(OrderItem(item, item.name if isinstance(item, F) else None, False))
    if not query.standard_ordering:  # reverse() / last()
        out = [
            OrderItem(i.expression, i.name, not i.descending, i.nulls_last, i.nulls_first)
            for i in out
        ]
    return out


@total_ordering
class _Reversed:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    def __lt__(self, other: _Reversed) -> bool:
        return other.value < self.value


def _mysql_text_key(text: str) -> str:
    """Approximates ``utf8mb4_general_ci``: compares upper-cased letters without accents,
    ignoring trailing spaces (so ``"ab" < "a_b"`` and ``"apple" == "Apple"``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper().rstrip(" ")


def folder(alias: str) -> Any:
    """A function making values compare as the backend's default collation compares them:
    on MySQL/MariaDB strings fold (case, accents); elsewhere values stay as they are."""
    if connections[alias].vendor != "mysql":
        return lambda value: value

    def fold(value: Any) -> Any:
        if isinstance(value, str):
            return _mysql_text_key(value)
        if isinstance(value, tuple):
            return tuple(fold(v) for v in value)
        return value

    return fold


class SortKey:
    """Builds comparable keys for rows as one backend orders them."""

    def __init__(self, items: list[OrderItem], alias: str) -> None:
        features = connections[alias].features
        self.nulls_largest = features.nulls_order_largest
        self.fold_text = connections[alias].vendor == "mysql"
        self.items = items

    def __call__(self, values: Iterable[Any]) -> tuple:
        key = []
        for item, value in zip(self.items, values, strict=True):
            if value is None:
                if item.nulls_first:
                    first = True
                elif item.nulls_last:
                    first = False
                else:
                    first = item.descending == self.nulls_largest
                key.append((-1 if first else 1, 0))
                continue
            if self.fold_text and isinstance(value, str):
                value = _mysql_text_key(value)
            key.append((0, _Reversed(value) if item.descending else value))
        return tuple(key)


# -- rows -------------------------------------------------------------------------------

_FLAT, _NAMED, _TUPLES, _DICTS, _MODELS = "flat", "named", "tuples", "dicts", "models"


def _row_kind(qs: ShardedQuerySet) -> str:
    cls = qs._iterable_class
    if issubclass(cls, FlatValuesListIterable):
        return _FLAT
    if issubclass(cls, NamedValuesListIterable):
        return _NAMED
    if issubclass(cls, ValuesListIterable):
        return _TUPLES
    if issubclass(cls, ValuesIterable):
        return _DICTS
    if issubclass(cls, ModelIterable):
        return _MODELS
    raise NotSupportedError(f"{cls.__name__} results cannot be merged across shards.")


def _row_names(qs: ShardedQuerySet) -> list[str]:
    """Column names of a values()/values_list() row, in row order (as Django names them)."""
    query = qs.query
    if getattr(query, "selected", None):
        return list(query.selected)
    return [*query.extra_select, *query.values_select, *query.annotation_select]


def _tuple_names(qs: ShardedQuerySet) -> list[str]:
    """Field names of a ``values_list(named=True)`` row, as Django's iterable picks them."""
    if qs._fields:
        return list(qs._fields)
    query = qs.query
    return [*query.extra_select, *query.values_select, *query.annotation_select]


def _finish_rows(qs: ShardedQuerySet, kind: str, rows: Iterable[Any]) -> Iterator[Any]:
    """Turn merged tuples back into what the queryset's iterable class yields."""
    if kind == _FLAT:
        return (row[0] for row in rows)
    if kind == _NAMED:
        cls = namedtuple("Row", _tuple_names(qs), rename=True)  # noqa: PYI024
        return (tuple.__new__(cls, row) for row in rows)
    return iter(rows)


def _dedupe(rows: Iterable[Any], kind: str, fold: Any = None) -> Iterator[Any]:
    """Rows without repeats (as the backend's DISTINCT sees them: ``fold``)."""
    seen: set[Any] = set()
    for row in rows:
        marker = tuple(row.values()) if kind == _DICTS else row
        if kind == _MODELS:
            marker = row.pk
        if fold is not None:
            marker = fold(marker if isinstance(marker, tuple) else (marker,))
        if marker in seen:
            continue
        seen.add(marker)
        yield row


def is_grouped(query: Any) -> bool:
    return query.group_by is not None or any(
        getattr(a, "contains_aggregate", False) for a in query.annotation_select.values()
    )


def per_shard_rows(qs: ShardedQuerySet) -> tuple[ShardedQuerySet, Any]:
    """The queryset each shard runs for a merged fetch, and what merging needs to know."""
    query = qs.query
    kind = _row_kind(qs)
    ordering = ordering_of(query)
    shard_qs = qs._chain()
    shard_qs.query.clear_limits()
    if query.high_mark is not None:
        shard_qs.query.set_limits(0, query.high_mark)
    names: list[str] = []
    if isinstance(ordering, list) and ordering:
        names = [f"{ORDER_PREFIX}{i}" for i in range(len(ordering))]
        low, high = shard_qs.query.low_mark, shard_qs.query.high_mark
        shard_qs.query.clear_limits()
        shard_qs = shard_qs.annotate(
            **{n: i.expression for n, i in zip(names, ordering, strict=True)}
        )
        shard_qs.query.set_limits(low, high)
    if kind in (_FLAT, _NAMED):
        shard_qs._iterable_class = ValuesListIterable
    return shard_qs, (kind, ordering, names)


def split_order_values(row: Any, kind: str, names: list[str]) -> tuple[list[Any], Any]:
    """Take the ordering annotations out of a row: (their values, the clean row)."""
    if not names:
        return [], row
    if kind == _MODELS:
        values = [row.__dict__.pop(n) for n in names]
        return values, row
    if kind == _DICTS:
        return [row.pop(n) for n in names], row
    k = len(names)
    return list(row[-k:]), row[:-k]


def merge_rows(qs: ShardedQuerySet, plan: Any, per_shard: list[tuple[str, list[Any]]]) -> list[Any]:
    """Merge per-shard row lists (each sorted by the database) into the final list."""
    kind, ordering, names = plan
    query = qs.query
    if ordering is RANDOM:
        rows = [row for _, shard_rows in per_shard for row in shard_rows]
        random.shuffle(rows)
    elif names:
        streams = []
        for alias, shard_rows in per_shard:
            sort_key = SortKey(ordering, alias)  # type: ignore[arg-type]
            keyed = []
            for row in shard_rows:
                values, clean = split_order_values(row, kind, names)
                keyed.append((sort_key(values), tuple(values), clean))
            streams.append(keyed)
        merged = list(heapq.merge(*streams, key=lambda triple: triple[0]))
        if query.distinct and kind != _MODELS:
            # DISTINCT covers the ordering columns too (Django selects them)
            fold = folder(per_shard[0][0])
            seen: set[Any] = set()
            unique = []
            for _, values, row in merged:
                body = tuple(row.values()) if kind == _DICTS else row
                marker = fold((values, body if isinstance(body, tuple) else (body,)))
                if marker not in seen:
                    seen.add(marker)
                    unique.append((None, values, row))
            merged = unique
        rows = [row for _, _, row in merged]
    else:
        rows = [row for _, shard_rows in per_shard for row in shard_rows]
        if query.distinct and kind != _MODELS and per_shard:
            rows = list(_dedupe(rows, kind, folder(per_shard[0][0])))
    low, high = query.low_mark, query.high_mark
    rows = rows[low:high]
    return list(_finish_rows(qs, kind, rows))


# -- combined (union) queries -------------------------------------------------------------


def merge_combined(qs: ShardedQuerySet, per_shard: list[tuple[str, list[Any]]]) -> list[Any]:
    """``union``/``intersection``/``difference`` results: merged, deduplicated, sorted."""
    query = qs.query
    if query.combinator != "union":
        raise NotSupportedError(
            f"{query.combinator}() cannot be computed across shards; use union() or run it "
            "per shard with on_shard()."
        )
    kind = _row_kind(qs)
    rows = [row for _, shard_rows in per_shard for row in shard_rows]
    if not query.combinator_all and per_shard:
        rows = list(_dedupe(rows, kind if kind != _FLAT else _TUPLES, folder(per_shard[0][0])))
    ordering = ordering_of(query)
    if isinstance(ordering, list) and ordering:
        names = _row_names(qs) if kind != _MODELS else []

        def value(row: Any, item: OrderItem) -> Any:
            if item.name is None:
                raise NotSupportedError("Order a merged union() by column names.")
            if kind == _MODELS:
                return getattr(row, "pk" if item.name == "pk" else item.name)
            if kind == _DICTS:
                return row[item.name]
            if kind == _FLAT:
                return row
            return row[names.index(item.name)]

        sort_key = SortKey(ordering, per_shard[0][0] if per_shard else "default")
        rows.sort(key=lambda row: sort_key([value(row, i) for i in ordering]))
    return rows[query.low_mark : query.high_mark]


# -- aggregates ---------------------------------------------------------------------------


def _combine(kind: type, values: list[Any], fold: Any = None) -> Any:
    present = [v for v in values if v is not None]
    if kind is Count:
        return sum(present)
    if not present:
        return None
    if kind is Sum:
        total = present[0]
        for v in present[1:]:
            total = total + v
        return total
    if kind is Min:
        return min(present, key=fold) if fold else min(present)
    if kind is Max:
        return max(present, key=fold) if fold else max(present)
    raise AssertionError(kind)


def _average(total: Any, count: int, like: Any) -> Any:
    if not count or total is None:
        return None
    if isinstance(total, Decimal):
        return total / Decimal(count)
    if hasattr(total, "total_seconds"):  # a timedelta
        return total / count
    return float(total) / count


def _avg_scale(field: Any) -> int | None:
    """Decimal places MySQL/MariaDB give ``AVG`` of ``field`` (``div_precision_increment``
    is 4): integers 4, decimals their places + 4; None for floats (a double, not rounded)."""
    if isinstance(field, DecimalField):
        return (field.decimal_places or 0) + 4
    if isinstance(field, IntegerField | BooleanField):
        return 4
    return None


def _round_like_mysql(value: Any, scale: int | None) -> Any:
    if value is None or scale is None:
        return value
    rounded = Decimal(str(value)).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    return float(rounded) if isinstance(value, float) else rounded


def round_averages_like_backend(
    qs: ShardedQuerySet, aggregates: dict[str, Any], answer: dict[str, Any], alias: str
) -> None:
    """MySQL/MariaDB round ``AVG`` of integers and decimals; round the merged average alike."""
    if connections[alias].vendor != "mysql":
        return
    for name, agg in aggregates.items():
        if type(agg) is not Avg or answer.get(name) is None:
            continue
        source = agg.get_source_expressions()[0]
        field_name = getattr(source, "name", None)
        try:
            field = qs.model._meta.get_field(field_name) if field_name else None
        except Exception:  # noqa: BLE001 - a path through a relation: leave it exact
            field = None
        answer[name] = _round_like_mysql(answer[name], _avg_scale(field))


def _aggregate_kind(agg: Any) -> type:
    for kind in (Avg, Count, Sum, Min, Max):
        if type(agg) is kind:
            return kind
    raise NotSupportedError(
        f"{type(agg).__name__} cannot be combined across shards; Sum, Count, Min, Max and "
        "Avg can. Run it per shard with on_shard()."
    )


@dataclass
class AggregatePlan:
    """How each requested aggregate is computed from per-shard parts."""

    parts: dict[str, Any]  # alias sent to every shard -> aggregate
    recipes: dict[str, tuple[str, Any]]  # requested alias -> (kind, detail)
    distinct: dict[str, Any]  # alias -> Count(distinct=True): values fetched per shard


def filter_of(agg: Any) -> Any:
    """The ``filter=`` condition of an aggregate (Django 6.1 wraps it in AggregateFilter)."""
    condition = agg.filter
    return getattr(condition, "condition", condition) if condition is not None else None


def plan_aggregate(aggregates: dict[str, Any]) -> AggregatePlan:
    parts: dict[str, Any] = {}
    recipes: dict[str, tuple[str, Any]] = {}
    distinct: dict[str, Any] = {}
    for alias, agg in aggregates.items():
        if not isinstance(agg, Aggregate):
            raise NotSupportedError(
                f"aggregate({alias}=...) is an expression over aggregates; across shards "
                "only plain Sum, Count, Min, Max and Avg can be combined."
            )
        kind = _aggregate_kind(agg)
        default = getattr(agg, "default", None)
        if kind is Count and agg.distinct:
            distinct[alias] = agg
            recipes[alias] = ("distinct", None)
            continue
        if getattr(agg, "distinct", False):
            raise NotSupportedError(
                f"{kind.__name__}(distinct=True) cannot be combined across shards."
            )
        expressions = agg.get_source_expressions()[: agg.arity or None]
        if kind is Avg:
            parts[f"{alias}__sum"] = Sum(*expressions, filter=filter_of(agg))
            parts[f"{alias}__count"] = Count(*expressions, filter=filter_of(agg))
            recipes[alias] = ("avg", default)
        else:
            parts[alias] = kind(*expressions, filter=filter_of(agg))
            recipes[alias] = (kind.__name__, default)
    return AggregatePlan(parts, recipes, distinct)


def combine_aggregates(
    plan: AggregatePlan,
    answers: list[dict[str, Any]],
    distinct_values: dict[str, set],
    fold: Any = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = {"Sum": Sum, "Count": Count, "Min": Min, "Max": Max}
    for alias, (recipe, default) in plan.recipes.items():
        if recipe == "distinct":
            out[alias] = len(distinct_values[alias])
            continue
        if recipe == "avg":
            total = _combine(Sum, [a[f"{alias}__sum"] for a in answers])
            count = _combine(Count, [a[f"{alias}__count"] for a in answers])
            value = _average(total, count, None)
        else:
            value = _combine(kinds[recipe], [a[alias] for a in answers], fold)
        out[alias] = default if value is None and default is not None else value
    return out


# -- values(...).annotate(...) groups -----------------------------------------------------


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


def _unwrap(annotation: Any) -> tuple[Any, Any]:
    """(aggregate, default) of a resolved annotation (``default=`` resolves to Coalesce)."""
    if isinstance(annotation, Coalesce):
        first, *rest = annotation.get_source_expressions()
        if isinstance(first, Aggregate) and len(rest) == 1:
            return first, getattr(rest[0], "value", rest[0])
    return annotation, None


def per_shard_groups(qs: ShardedQuerySet) -> tuple[ShardedQuerySet, Any]:
    """The grouped queryset each shard runs (as dicts, unsliced, unordered) and the plan."""
    query = qs.query
    kind = _row_kind(qs)
    names = _row_names(qs)
    complete = groups_are_complete(qs)
    shard_qs = qs._chain()
    shard_qs.query.clear_limits()
    shard_qs.query.clear_ordering(force=True)
    recipes: dict[str, tuple[str, Any]] = {}
    if not complete:
        if _has_aggregate_filter(query.where):
            raise NotSupportedError(
                "Filtering on an aggregate (HAVING) across shards is not supported unless the "
                "groups include the shard key; filter after fetching, or use on_shard()."
            )
        for alias, annotation in list(shard_qs.query.annotation_select.items()):
            if not getattr(annotation, "contains_aggregate", False):
                continue
            agg, default = _unwrap(annotation)
            if not isinstance(agg, Aggregate):
                raise NotSupportedError(
                    f"{alias}={annotation!r} cannot be merged across shards; use plain "
                    "Sum, Count, Min, Max or Avg annotations."
                )
            akind = _aggregate_kind(agg)
            if getattr(agg, "distinct", False):
                raise NotSupportedError(
                    f"{akind.__name__}(distinct=True) per group cannot be combined across "
                    "shards unless the groups include the shard key."
                )
            if akind is Avg:
                total = copy.copy(agg)
                total.function, total.name = "SUM", "Sum"
                count = copy.copy(agg)
                count.function, count.name = "COUNT", "Count"
                count.output_field = IntegerField()
                source = agg.get_source_expressions()[0]
                scale = _avg_scale(getattr(source, "output_field", None))
                shard_qs.query.annotations[alias] = total
                shard_qs.query.annotations[f"{alias}__count"] = count
                shard_qs.query.append_annotation_mask([f"{alias}__count"])
                if shard_qs.query.selected:
                    shard_qs.query.selected[f"{alias}__count"] = f"{alias}__count"
                recipes[alias] = ("avg", (default, scale))
            else:
                recipes[alias] = (akind.__name__, (default, None))
    shard_qs._iterable_class = ValuesIterable
    return shard_qs, (kind, names, recipes)


def _has_aggregate_filter(node: Any) -> bool:
    return bool(getattr(node, "contains_aggregate", False))


def merge_groups(
    qs: ShardedQuerySet, plan: Any, per_shard: list[tuple[str, list[dict]]]
) -> list[Any]:
    kind, names, recipes = plan
    query = qs.query
    kinds = {"Sum": Sum, "Count": Count, "Min": Min, "Max": Max}
    fold = folder(per_shard[0][0]) if per_shard else (lambda v: v)
    if recipes:
        key_names = [n for n in names if n not in recipes]
        groups: dict[tuple, list[dict]] = {}
        for _, rows in per_shard:
            for row in rows:
                groups.setdefault(fold(tuple(row[n] for n in key_names)), []).append(row)
        merged = []
        mysql = bool(per_shard) and connections[per_shard[0][0]].vendor == "mysql"
        for parts in groups.values():
            row = dict(parts[0])
            for alias, (recipe, (default, scale)) in recipes.items():
                if recipe == "avg":
                    total = _combine(Sum, [p[alias] for p in parts])
                    count = _combine(Count, [p[f"{alias}__count"] for p in parts])
                    value = _average(total, count, None)
                    if mysql:
                        value = _round_like_mysql(value, scale)
                    row.pop(f"{alias}__count", None)
                else:
                    value = _combine(kinds[recipe], [p[alias] for p in parts], fold)
                row[alias] = default if value is None and default is not None else value
            merged.append(row)
    else:
        merged = [row for _, rows in per_shard for row in rows]
    ordering = ordering_of(query)
    if ordering is RANDOM:
        random.shuffle(merged)
    elif ordering:
        for item in ordering:  # type: ignore[union-attr]
            if item.name is None or (item.name not in merged[0] if merged else False):
                raise NotSupportedError(
                    "A merged group-by can be ordered by its values and annotation names only."
                )
        alias = per_shard[0][0] if per_shard else "default"
        sort_key = SortKey(ordering, alias)  # type: ignore[arg-type]
        merged.sort(key=lambda row: sort_key([row[i.name] for i in ordering]))  # type: ignore[union-attr]
    if query.distinct:
        merged = list(_dedupe(merged, _DICTS, fold))
    merged = merged[query.low_mark : query.high_mark]
    if kind == _DICTS:
        return [{n: row[n] for n in names} for row in merged]
    tuples = [tuple(row[n] for n in names) for row in merged]
    return list(_finish_rows(qs, kind, tuples)) if kind in (_FLAT, _NAMED) else tuples
