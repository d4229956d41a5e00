"""Merging the answers of several shards into what one database would have answered.

Rows: each shard runs the query with its ordering values selected as extra annotations
and its slice widened to ``[0:offset+limit]``; the sorted streams are merged with a heap,
NULLs placed as the backend places them and strings compared the way the backend's
default collation does (MySQL's ``*_general_ci`` ignores case and accents).
Counts and aggregates are combined from per-shard parts (``Avg`` through sum and count);
``values(...).annotate(...)`` groups are merged per group.

This module knows Django's ``Query`` and expressions, never a queryset: what it merges is
described by a :class:`MergeSpec` that the caller builds.
"""

from __future__ import annotations

import copy
import enum
import heapq
import random
import unicodedata
from collections import namedtuple
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import total_ordering
from typing import Any

from django.core.exceptions import FieldDoesNotExist
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
    Model,
    Sum,
)
from django.db.models.expressions import OrderBy
from django.db.models.functions import Coalesce

ORDER_PREFIX = "_shards_o"
#: the aggregates whose per-shard answers combine into the whole's
AGGREGATES: tuple[type[Aggregate], ...] = (Avg, Count, Sum, Min, Max)


# -- what is merged -------------------------------------------------------------------------


class RowKind(enum.Enum):
    """What a row is, as the queryset's iterable class yields it."""

    MODELS = "models"
    DICTS = "dicts"  # values()
    TUPLES = "tuples"  # values_list()
    NAMED = "named"  # values_list(named=True)
    FLAT = "flat"  # values_list(flat=True)


@dataclass(frozen=True)
class OrderItem:
    expression: Any
    name: str | None  # the field or annotation name, when the item is one
    descending: bool
    nulls_first: bool = False
    nulls_last: bool = False


@dataclass(frozen=True)
class Ordering:
    """A query's effective ordering: its items, or ``random`` for ``order_by("?")``."""

    items: tuple[OrderItem, ...] = ()
    random: bool = False


@dataclass(frozen=True)
class MergeSpec:
    """What merging needs to know of the query whose per-shard answers it merges."""

    kind: RowKind
    ordering: Ordering
    columns: tuple[str, ...] = ()  # a values()/values_list() row's columns, in row order
    field_names: tuple[str, ...] = ()  # the fields of a values_list(named=True) row
    low_mark: int = 0
    high_mark: int | None = None
    distinct: bool = False
    combinator: str | None = None
    combinator_all: bool = False

    def sliced(self, rows: list[Any]) -> list[Any]:
        return rows[self.low_mark : self.high_mark]


@dataclass(frozen=True)
class Backend:
    """What merging imitates of one backend: where it sorts NULLs, and whether it is
    MySQL/MariaDB (strings compare as ``utf8mb4_general_ci`` does; ``AVG`` is rounded)."""

    nulls_largest: bool
    mysql: bool = False

    @classmethod
    def of(cls, alias: str) -> Backend:
        connection = connections[alias]
        return cls(bool(connection.features.nulls_order_largest), connection.vendor == "mysql")

    def fold(self, value: Any) -> Any:
        """``value`` as the backend's default collation compares it (tuples element-wise)."""
        if not self.mysql:
            return value
        if isinstance(value, str):
            return _mysql_text_key(value)
        if isinstance(value, tuple):
            return tuple(self.fold(v) for v in value)
        return value


def _mysql_text_key(text: str) -> str:
    """Approximates ``utf8mb4_general_ci``: compares upper-cased letters without accents,
    ignoring trailing spaces (so ``"ab" < "a_b"`` and ``"apple" == "Apple"``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).upper().rstrip(" ")


# -- ordering -------------------------------------------------------------------------------


def ordering_of(query: Any) -> Ordering:
    """The query's effective ordering (``reverse()`` applied)."""
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
                return Ordering(random=True)
            name = item.lstrip("-+")
            out.append(OrderItem(F(name), name, item.startswith("-")))
        elif isinstance(item, OrderBy):
            expr = item.expression
            out.append(
                OrderItem(
                    expr,
                    expr.name if isinstance(expr, F) else None,  # type: ignore[attr-defined]
                    item.descending,
                    bool(item.nulls_first),
                    bool(item.nulls_last),
                )
            )
        elif hasattr(item, "resolve_expression"):
            out.append(OrderItem(item, item.name if isinstance(item, F) else None, False))  # type: ignore[attr-defined]
    if not query.standard_ordering:  # reverse() / last()
        out = [
            OrderItem(i.expression, i.name, not i.descending, i.nulls_last, i.nulls_first)
            for i in out
        ]
    return Ordering(tuple(out))


@total_ordering
class _Reversed:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    def __lt__(self, other: _Reversed) -> bool:
        return other.value < self.value


class SortKey:
    """Builds comparable keys for rows as one backend orders them."""

    def __init__(self, items: Sequence[OrderItem], backend: Backend) -> None:
        self.nulls_largest = backend.nulls_largest
        self.fold_text = backend.mysql
        self.items = items

    def __call__(self, values: Iterable[Any]) -> tuple:
        key: list[tuple[int, Any]] = []
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


def order_annotations(ordering: Ordering) -> dict[str, Any]:
    """The annotations each shard selects so that its rows can be merge-sorted."""
    return {f"{ORDER_PREFIX}{i}": item.expression for i, item in enumerate(ordering.items)}


# -- rows -----------------------------------------------------------------------------------


def finish_rows(spec: MergeSpec, rows: Iterable[Any]) -> Iterator[Any]:
    """Turn merged tuples back into what the queryset's iterable class yields."""
    if spec.kind is RowKind.FLAT:
        return (row[0] for row in rows)
    if spec.kind is RowKind.NAMED:
        cls = namedtuple("Row", spec.field_names, rename=True)  # type: ignore[misc]  # names of the query
        return (tuple.__new__(cls, row) for row in rows)
    return iter(rows)


def distinct(
    keyed: Iterable[tuple[tuple, Any]], kind: RowKind, backend: Backend
) -> Iterator[tuple[tuple, Any]]:
    """``(ordering values, row)`` pairs without repeats, as the backend's DISTINCT sees them
    (it covers the ordering columns too, since Django selects them)."""
    seen: set[Any] = set()
    for values, row in keyed:
        if kind is RowKind.MODELS:
            body = row.pk
        elif kind is RowKind.DICTS:
            body = tuple(row.values())
        else:
            body = row
        marker = backend.fold((values, body if isinstance(body, tuple) else (body,)))
        if marker not in seen:
            seen.add(marker)
            yield values, row


def split_order_values(row: Any, kind: RowKind, names: Sequence[str]) -> tuple[list[Any], Any]:
    """Take the ordering annotations out of a row: (their values, the clean row)."""
    if not names:
        return [], row
    if kind is RowKind.MODELS:
        return [row.__dict__.pop(n) for n in names], row
    if kind is RowKind.DICTS:
        return [row.pop(n) for n in names], row
    k = len(names)
    return list(row[-k:]), row[:-k]


def merge_rows(
    spec: MergeSpec,
    order_names: Sequence[str],
    per_shard: Sequence[list[Any]],
    backend: Backend,
) -> list[Any]:
    """Merge per-shard row lists (each sorted by the database as ``spec`` orders, with the
    ``order_names`` annotations selected) into the final list."""
    if spec.ordering.random:
        rows = [row for shard_rows in per_shard for row in shard_rows]
        random.shuffle(rows)
    else:
        sort_key = SortKey(spec.ordering.items, backend)
        streams = []
        for shard_rows in per_shard:
            keyed = []
            for row in shard_rows:
                values, clean = split_order_values(row, spec.kind, order_names)
                keyed.append((sort_key(values) if order_names else (), tuple(values), clean))
            streams.append(keyed)
        pairs: Iterable[tuple[tuple, Any]] = (
            (values, row)
            for _, values, row in (
                heapq.merge(*streams, key=lambda t: t[0])
                if order_names
                else (t for stream in streams for t in stream)
            )
        )
        if spec.distinct and spec.kind is not RowKind.MODELS:
            pairs = distinct(pairs, spec.kind, backend)
        rows = [row for _, row in pairs]
    return list(finish_rows(spec, spec.sliced(rows)))


# -- combined (union) queries ---------------------------------------------------------------


def merge_combined(spec: MergeSpec, per_shard: Sequence[list[Any]], backend: Backend) -> list[Any]:
    """``union`` results: merged, deduplicated (unless ``all=True``), sorted, sliced."""
    if spec.combinator != "union":
        raise NotSupportedError(
            f"{spec.combinator}() cannot be computed across shards; use union() or run it "
            "per shard with on_shard()."
        )
    kind = spec.kind
    rows = [row for shard_rows in per_shard for row in shard_rows]
    if not spec.combinator_all:
        rows = [row for _, row in distinct((((), row) for row in rows), kind, backend)]
    items = spec.ordering.items
    if items:

        def value(row: Any, item: OrderItem) -> Any:
            if item.name is None:
                raise NotSupportedError("Order a merged union() by column names.")
            if kind is RowKind.MODELS:
                return getattr(row, item.name)
            if kind is RowKind.DICTS:
                return row[item.name]
            if kind is RowKind.FLAT:
                return row
            return row[spec.columns.index(item.name)]

        sort_key = SortKey(items, backend)
        rows.sort(key=lambda row: sort_key([value(row, i) for i in items]))
    return spec.sliced(rows)


# -- aggregates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """How one requested aggregate is combined from its per-shard parts.

    An ``Avg`` named ``x`` is sent as a sum named ``x`` and a count named ``x__count``; a
    ``Count(distinct=True)`` as the distinct values themselves.
    """

    function: type[Aggregate]
    default: Any = None
    distinct: bool = False
    scale: int | None = None  # decimal places MySQL/MariaDB round this Avg to


def _combine(function: type[Aggregate], values: list[Any], fold: Callable[[Any], Any]) -> Any:
    present = [v for v in values if v is not None]
    if function is Count:
        return sum(present)
    if not present:
        return None
    if function is Sum:
        total = present[0]
        for v in present[1:]:
            total = total + v
        return total
    if function is Min:
        return min(present, key=fold)
    if function is Max:
        return max(present, key=fold)
    raise AssertionError(function)


def _average(total: Any, count: int) -> Any:
    if not count or total is None:
        return None
    if isinstance(total, Decimal):
        return total / Decimal(count)
    if hasattr(total, "total_seconds"):  # a timedelta
        return total / count
    return float(total) / count


def avg_scale(field: Any) -> int | None:
    """Decimal places MySQL/MariaDB give ``AVG`` of ``field`` (``div_precision_increment``
    is 4): integers 4, decimals their places + 4; None for floats (a double, not rounded)."""
    if isinstance(field, DecimalField):
        return (field.decimal_places or 0) + 4
    if isinstance(field, IntegerField | BooleanField):
        return 4
    return None


def _avg_recipe(default: Any, field: Any) -> Recipe:
    """An ``Avg``'s recipe: ``default=`` makes it ``COALESCE(AVG(x), default)``, which
    MySQL/MariaDB compute as a double, not rounded, when the default is a float."""
    scale = None if isinstance(default, float) else avg_scale(field)
    return Recipe(Avg, default, scale=scale)


def _round_like_mysql(value: Any, scale: int | None) -> Any:
    if value is None or scale is None:
        return value
    rounded = Decimal(str(value)).quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP)
    return float(rounded) if isinstance(value, float) else rounded


def combine(name: str, recipe: Recipe, parts: Sequence[dict[str, Any]], backend: Backend) -> Any:
    """The value of aggregate ``name`` from the per-shard answers ``parts`` (not for a
    distinct count, whose values are combined by the caller)."""
    if recipe.function is Avg:
        total = _combine(Sum, [p[name] for p in parts], backend.fold)
        count = _combine(Count, [p[f"{name}__count"] for p in parts], backend.fold)
        value = _average(total, count)
        if backend.mysql:
            value = _round_like_mysql(value, recipe.scale)
    else:
        value = _combine(recipe.function, [p[name] for p in parts], backend.fold)
    return recipe.default if value is None and recipe.default is not None else value


def _function_of(agg: Any) -> type[Aggregate]:
    for function in AGGREGATES:
        if type(agg) is function:
            return function
    raise NotSupportedError(
        f"{type(agg).__name__} cannot be combined across shards; Sum, Count, Min, Max and "
        "Avg can. Run it per shard with on_shard()."
    )


def filter_of(agg: Any) -> Any:
    """The ``filter=`` condition of an aggregate (Django 6.1 wraps it in AggregateFilter)."""
    condition = agg.filter
    return getattr(condition, "condition", condition) if condition is not None else None


@dataclass
class AggregatePlan:
    """How each requested aggregate is computed from per-shard parts."""

    parts: dict[str, Any] = field(default_factory=dict)  # sent to every shard: name -> agg
    recipes: dict[str, Recipe] = field(default_factory=dict)  # requested name -> recipe
    distinct: dict[str, Any] = field(default_factory=dict)  # name -> Count(distinct=True)


def _field_of(model: type[Model] | None, expression: Any) -> Any:
    """The model field an aggregate's argument names (None for a path or an expression)."""
    name = getattr(expression, "name", None)
    if model is None or not name:
        return None
    try:
        return model._meta.get_field(name)
    except FieldDoesNotExist:  # a path through a relation: the average stays exact
        return None


def plan_aggregate(aggregates: dict[str, Any], model: type[Model] | None = None) -> AggregatePlan:
    """The per-shard parts of ``aggregate(**aggregates)`` over ``model`` and their recipes."""
    plan = AggregatePlan()
    for name, agg in aggregates.items():
        if not isinstance(agg, Aggregate):
            raise NotSupportedError(
                f"aggregate({name}=...) is an expression over aggregates; across shards "
                "only plain Sum, Count, Min, Max and Avg can be combined."
            )
        function = _function_of(agg)
        default = getattr(agg, "default", None)
        if function is Count and getattr(agg, "distinct", False):
            plan.distinct[name] = agg
            plan.recipes[name] = Recipe(Count, distinct=True)
            continue
        if getattr(agg, "distinct", False):
            raise NotSupportedError(
                f"{function.__name__}(distinct=True) cannot be combined across shards."
            )
        expressions = agg.get_source_expressions()[: agg.arity or None]
        if function is Avg:
            plan.parts[name] = Sum(expressions[0], filter=filter_of(agg))  # Avg.arity is 1
            plan.parts[f"{name}__count"] = Count(expressions[0], filter=filter_of(agg))
            plan.recipes[name] = _avg_recipe(default, _field_of(model, expressions[0]))
        else:
            plan.parts[name] = function(*expressions, filter=filter_of(agg))
            plan.recipes[name] = Recipe(function, default)
    return plan


def combine_aggregates(
    plan: AggregatePlan,
    answers: Sequence[dict[str, Any]],
    distinct_values: dict[str, set[Any]],
    backend: Backend,
) -> dict[str, Any]:
    """The whole's ``aggregate()`` answer from the shards' ``answers`` and, for distinct
    counts, the union of their ``distinct_values``."""
    return {
        name: len(distinct_values[name])
        if recipe.distinct
        else combine(name, recipe, answers, backend)
        for name, recipe in plan.recipes.items()
    }


# -- values(...).annotate(...) groups -------------------------------------------------------


@dataclass(frozen=True)
class GroupPlan:
    """How the per-shard groups combine: ``recipes`` for the aggregate annotations of
    groups that can span shards (empty when every group lives on one shard)."""

    recipes: dict[str, Recipe]


def _unwrap(annotation: Any) -> tuple[Any, Any]:
    """(aggregate, default) of a resolved annotation (``default=`` resolves to Coalesce)."""
    if isinstance(annotation, Coalesce):
        first, *rest = annotation.get_source_expressions()
        if isinstance(first, Aggregate) and len(rest) == 1:
            return first, getattr(rest[0], "value", rest[0])
    return annotation, None


def plan_groups(shard_query: Any, complete: bool) -> GroupPlan:
    """Plan the merge of groups and rewrite ``shard_query`` (the per-shard copy of the
    query) to send the parts: each ``Avg`` becomes its sum plus a ``__count``.

    ``complete``: no group can span shards (grouped by the model or by the shard key).
    """
    recipes: dict[str, Recipe] = {}
    if complete:
        return GroupPlan(recipes)
    if getattr(shard_query.where, "contains_aggregate", False):
        raise NotSupportedError(
            "Filtering on an aggregate (HAVING) across shards is not supported unless the "
            "groups include the shard key; filter after fetching, or use on_shard()."
        )
    for name, annotation in list(shard_query.annotation_select.items()):
        if not getattr(annotation, "contains_aggregate", False):
            continue
        agg, default = _unwrap(annotation)
        if not isinstance(agg, Aggregate):
            raise NotSupportedError(
                f"{name}={annotation!r} cannot be merged across shards; use plain "
                "Sum, Count, Min, Max or Avg annotations."
            )
        function = _function_of(agg)
        if getattr(agg, "distinct", False):
            raise NotSupportedError(
                f"{function.__name__}(distinct=True) per group cannot be combined across "
                "shards unless the groups include the shard key."
            )
        if function is Avg:
            total = copy.copy(agg)
            total.function, total.name = "SUM", "Sum"
            count = copy.copy(agg)
            count.function, count.name = "COUNT", "Count"
            count.output_field = IntegerField()
            source = agg.get_source_expressions()[0]
            shard_query.annotations[name] = total
            shard_query.annotations[f"{name}__count"] = count
            shard_query.append_annotation_mask([f"{name}__count"])
            if getattr(shard_query, "selected", None):
                shard_query.selected[f"{name}__count"] = f"{name}__count"
            recipes[name] = _avg_recipe(default, getattr(source, "output_field", None))
        else:
            recipes[name] = Recipe(function, default)
    return GroupPlan(recipes)


def merge_groups(
    spec: MergeSpec, plan: GroupPlan, per_shard: Sequence[list[dict]], backend: Backend
) -> list[Any]:
    """Merge per-shard group rows (dicts, unordered, unsliced) into the final rows."""
    recipes = plan.recipes
    names = spec.columns
    if recipes:
        key_names = [n for n in names if n not in recipes]
        groups: dict[tuple, list[dict]] = {}
        for rows in per_shard:
            for row in rows:
                groups.setdefault(backend.fold(tuple(row[n] for n in key_names)), []).append(row)
        merged = []
        for parts in groups.values():
            row = dict(parts[0])
            for name, recipe in recipes.items():
                row[name] = combine(name, recipe, parts, backend)
                row.pop(f"{name}__count", None)
            merged.append(row)
    else:
        merged = [row for rows in per_shard for row in rows]
    ordering = spec.ordering
    if ordering.random:
        random.shuffle(merged)
    elif ordering.items:
        for item in ordering.items:
            if item.name is None or (item.name not in merged[0] if merged else False):
                raise NotSupportedError(
                    "A merged group-by can be ordered by its values and annotation names only."
                )
        sort_key = SortKey(ordering.items, backend)
        merged.sort(key=lambda row: sort_key([row[i.name] for i in ordering.items]))
    if spec.distinct:
        merged = [row for _, row in distinct((((), row) for row in merged), RowKind.DICTS, backend)]
    merged = spec.sliced(merged)
    if spec.kind is RowKind.DICTS:
        return [{n: row[n] for n in names} for row in merged]
    return list(finish_rows(spec, [tuple(row[n] for n in names) for row in merged]))
