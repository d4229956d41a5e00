"""How a sharded queryset's reads run: on its one shard (a failing replica retried
invisibly), or across shards and merged as one database would have answered.

Rows come back through the queryset's iterable class, the hook Django's ``values()`` and
django-model-utils' ``InheritanceIterable`` use: the class Django or the application
assigns to a sharded queryset's ``_iterable_class`` is wrapped (:func:`sharded_iterable`)
in a :class:`ShardedIterable` subclass of it, which routes, then yields the wrapped
class's rows (one shard) or the merged rows (a fan-out). The queryset wraps it where a
class is assigned: the manager's ``get_queryset()``, ``_clone()``, ``values()``,
``values_list()``, the ``query`` setter, unpickling. ``count()``, ``exists()``,
``aggregate()`` and ``in_bulk()`` fan out through the functions here. What to merge is
handed to :mod:`django_shards.merge` as a :class:`~django_shards.merge.MergeSpec`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from django.db import DatabaseError, NotSupportedError
from django.db.models.query import (
    BaseIterable,
    ModelIterable,
    ValuesIterable,
    prefetch_related_objects,
)

from django_shards import load, lookup_index, merge
from django_shards.conf import Shard, get_config
from django_shards.exceptions import FanoutError, ShardUnavailable
from django_shards.fanout import FanoutResult, collect, get_executor
from django_shards.keys import key_for_model
from django_shards.merge import Backend, RowKind
from django_shards.replicas import is_connection_error, pool
from django_shards.routing import note_write, read_alias, write_alias
from django_shards.shapes import (
    groups_are_complete,
    is_grouped,
    is_values_grouped,
    merge_spec,
    per_shard_rows,
)
from django_shards.where import subqueries

if TYPE_CHECKING:
    from django.db.models.sql import Query

    from django_shards.query import ShardedQuerySet
    from django_shards.shardmap import ShardMap

T = TypeVar("T")
_perf_counter = time.perf_counter  # bound once: read() runs on every routed read
#: a read routed to a replica is tried on this many aliases before the error surfaces
READ_ATTEMPTS = 3
_END = object()


# -- the iterable class -------------------------------------------------------------------


class ShardedIterable(BaseIterable):
    """Yields a sharded queryset's rows: those of ``row_iterable`` (the class Django or the
    application chose) run on the query's one shard, or merged from every shard it targets.
    """

    row_iterable: type[BaseIterable] = ModelIterable
    queryset: ShardedQuerySet

    def __iter__(self) -> Iterator[Any]:
        qs = self.queryset
        shards = qs._route()
        if shards is None:  # using() chose the database
            return super().__iter__()  # type: ignore[misc]  # row_iterable's, next in the MRO
        if len(shards) > 1:
            return iter(fetch(qs, shards))
        first, rows = read(qs, shards, self._first_row, first_row=True)
        return rows if first is _END else itertools.chain((first,), rows)

    def _first_row(self) -> tuple[Any, Iterator[Any]]:
        """Run the query (it runs when the first row is asked for): (first row, the rest)."""
        rows = super().__iter__()  # type: ignore[misc]  # row_iterable's, next in the MRO
        return next(rows, _END), rows


_wrapped: dict[type, type[ShardedIterable]] = {}


def sharded_iterable(cls: type[BaseIterable]) -> type[ShardedIterable]:
    """``cls`` wrapped in a :class:`ShardedIterable` (a subclass of both, so that Django's
    ``issubclass(qs._iterable_class, ModelIterable)`` checks keep their answer)."""
    try:
        return _wrapped[cls]
    except KeyError:
        pass
    if issubclass(cls, ShardedIterable):
        wrapped = cls
    else:
        name = f"Sharded{cls.__name__}"
        wrapped = type(name, (ShardedIterable, cls), {"row_iterable": cls})
    _wrapped[cls] = wrapped
    return wrapped


#: what the manager's querysets start with (Django's ModelIterable, wrapped)
ShardedModelIterable = sharded_iterable(ModelIterable)


# -- one shard: a failing replica is retried -----------------------------------------------


def read(
    qs: ShardedQuerySet,
    shards: list[Shard] | None,
    run: Callable[[], T],
    *,
    first_row: bool = False,
) -> T:
    """Run the read ``run()`` of ``qs`` on its shard (``shards`` has one, or none: then
    any shard answers "nothing"); None: where ``using()`` put it (not counted).

    The read is counted toward its shard's load (:func:`django_shards.load.record`) with
    the time ``run()`` took, the key it named, and as rows what is known without touching
    the rows: with ``first_row`` (``run()`` returns the first row and an iterator of the
    rest) 1 when a row came back, else 0; otherwise 1 (a count, an aggregate, an answer).

    While ``run()`` runs, ``qs._running_on`` holds the alias chosen, so that ``qs.db``
    answers it. A replica that fails is skipped and the read retried, invisibly:
    a connection failure marks it down and retries on another replica or the primary; any
    other error is retried on the primary, and if the primary answers the replica was
    broken and is marked down (if the primary fails too, the error is the query's).
    """
    if shards is None:
        return run()
    if shards:
        shard, point = shards[0], qs._routed_point
    elif qs._lookup_routed:  # the lookup index holds no row: answer as Django does for none()
        return lookup_index.matching_nothing(qs, run)
    else:
        shard, point = qs._shard_map().owning_shards[0], None
    if qs._for_write:
        started = time.perf_counter()
        result = _on_alias(qs, write_alias(shard, pin=False), run)
        _count_read(qs, shard, result, first_row, time.perf_counter() - started, point)
        return result
    consistency = qs._options.consistency
    for attempt in range(READ_ATTEMPTS):
        # a replica that cannot connect fails the run and is retried below, so it need
        # not be connected first (except on the last attempt, which is not retried)
        alias = read_alias(shard, consistency, connect=attempt == READ_ATTEMPTS - 1)
        qs._running_on = alias  # _on_alias, inlined: this runs on every routed read
        started = _perf_counter()
        try:
            result = run()
        except DatabaseError as exc:
            if alias == shard.primary:
                if is_connection_error(exc):
                    raise ShardUnavailable(
                        f"The primary {alias!r} of a shard is unreachable: {exc}"
                    ) from exc
                raise
            if attempt == READ_ATTEMPTS - 1:
                raise
            if is_connection_error(exc):
                pool.mark_down(alias, exc)
                continue
            result = _on_alias(qs, write_alias(shard, pin=False), run)
            pool.mark_down(alias, exc)  # the primary answered: the replica is broken
            _count_read(qs, shard, result, first_row, time.perf_counter() - started, point)
            return result
        finally:
            qs._running_on = None
        elapsed = _perf_counter() - started
        # a replica's latency is kept only for REPLICA_SELECTION "fastest", and the
        # settings are read only when a replica served
        if alias != shard.primary and get_config().replica_selection == "fastest":
            pool.observe(alias, elapsed)
        load.record(  # _count_read, inlined: this runs on every routed read
            key_for_model(qs.model).group,  # type: ignore[union-attr]  # routed: sharded
            shard.name,
            rows=(result[0] is not _END) if first_row else 1,  # type: ignore[index]
            seconds=elapsed,
            point=point,
        )
        return result
    raise AssertionError("unreachable")


def _count_read(
    qs: ShardedQuerySet, shard: Shard, result: Any, first_row: bool, seconds: float, point: Any
) -> None:
    sk = key_for_model(qs.model)
    assert sk is not None
    rows = (result[0] is not _END) if first_row else 1
    load.record(sk.group, shard.name, rows=rows, seconds=seconds, point=point)


def _on_alias(qs: ShardedQuerySet, alias: str, run: Callable[[], T]) -> T:
    qs._running_on = alias
    try:
        return run()
    finally:
        qs._running_on = None


# -- several shards ------------------------------------------------------------------------


def check_mergeable(qs: ShardedQuerySet) -> None:
    """Refuse fan-outs whose per-shard answers cannot be merged into the right one."""
    query = qs.query
    if any(getattr(a, "contains_over_clause", False) for a in query.annotations.values()):
        raise NotSupportedError(
            "Window functions are computed per shard and cannot be merged across shards; "
            "name the shard key or use on_shard()."
        )
    for sub in subqueries(query.where):
        sk = key_for_model(sub.model) if sub.model is not None else None
        if sk is not None and not sub.external_aliases:
            raise NotSupportedError(
                f"A subquery over the sharded model {sub.model._meta.label} would run "
                "inside each shard and see only that shard's rows; evaluate it first "
                "(e.g. list(...values_list(...))) and filter on the values."
            )


#: a fan-out re-routes this many times when the map changed after it was routed
ROUTE_ATTEMPTS = 3


class ShardParts:
    """What each shard of one fan-out reads: the query as it is, except on a shard that
    still holds rows it no longer owns (a split's source from its cutover until its
    clean-up ends), where it reads only the rows it owns, so every row comes back once.

    Built by :func:`shard_parts` from the map the fan-out was routed by.
    """

    __slots__ = ("_holding", "shard_map", "shards")

    def __init__(self, shard_map: ShardMap, shards: list[Shard]) -> None:
        self.shard_map = shard_map
        #: the shards the fan-out runs on, routed by ``shard_map``
        self.shards = shards
        held = shard_map.holding_unowned
        #: alias -> name of its shard, for the shards to restrict
        self._holding = {
            alias: shard.name for shard in shards if shard.name in held for alias in shard.aliases
        }

    def on(self, shard_qs: ShardedQuerySet, alias: str) -> ShardedQuerySet:
        """``shard_qs.using(alias)``, restricted to the rows that alias's shard owns when
        it holds others (counts, aggregates, values, slices and ordering then all agree)."""
        part = shard_qs.using(alias)
        shard = self._holding.get(alias)
        if shard is not None:
            self._restrict(part.query, shard)
        return part

    def _restrict(self, query: Query, shard: str) -> None:
        if query.combinator:
            for combined in query.combined_queries:
                self._restrict(combined, shard)
            return
        sk = key_for_model(query.model) if query.model is not None else None
        if sk is None or sk.group != self.shard_map.group:
            return
        q = self.shard_map.ownership_q(shard, sk.attname)
        if q is not None:
            query.add_q(q)


def shard_parts(qs: ShardedQuerySet, shards: list[Shard]) -> ShardParts:
    """The parts of a fan-out of ``qs`` over ``shards`` (what ``qs._route()`` answered).

    The ownership filters come from the same map version as the routing: if the map
    changed since (a cutover), ``qs`` is routed again, so a fan-out never pairs the old
    owners with the new filters (rows lost) or the new owners with none (rows twice).
    """
    for _ in range(ROUTE_ATTEMPTS):
        shard_map = qs._shard_map()
        known = shard_map.shards
        if all(known.get(s.name) is s for s in shards):
            return ShardParts(shard_map, shards)
        shards = qs._route() or [shard_map.owning_shards[0]]
    return ShardParts(qs._shard_map(), shards)


def _what(qs: ShardedQuerySet, operation: str) -> str:
    return f"{qs.model._meta.label} {operation}"


def _targets(qs: ShardedQuerySet, shards: list[Shard], writes: bool) -> list[tuple[Shard, str]]:
    if writes or qs._for_write:
        return [(s, write_alias(s, pin=False)) for s in shards]
    return [(s, read_alias(s, qs._options.consistency)) for s in shards]


def _one(value: Any) -> int:
    return 1


def run_fanout(
    qs: ShardedQuerySet,
    shards: list[Shard],
    task: Callable[[str], Any],
    operation: str,
    *,
    writes: bool = False,
    rows: Callable[[Any], int] = _one,
) -> list[FanoutResult]:
    """Run ``task(alias)`` on every shard in parallel (primaries for writes); sets
    ``qs.missing_shards``.

    Each shard's read is counted toward its load, with ``rows(value)`` rows (what the
    shard answered: 1 by default, a count or a row) and the time it took; a shard that
    failed counts no rows. Writes count themselves (each shard's ``update()`` or
    ``delete()`` on its primary). The fan-out and its number of shards are events."""
    targets = _targets(qs, shards, writes)
    results = get_executor().run(targets, task, timeout=get_config().fanout_timeout_seconds)
    _count_fanout(qs, results, writes, rows)
    if writes:
        for result in results:
            if result.error is None:
                note_write(result.alias, same_session=False)
    good, qs.missing_shards = collect(
        results, allow_partial=qs._options.allow_partial, what=_what(qs, operation)
    )
    return good


def _count_fanout(
    qs: ShardedQuerySet, results: list[FanoutResult], writes: bool, rows: Callable[[Any], int]
) -> None:
    sk = key_for_model(qs.model)
    assert sk is not None
    group = sk.group
    load.count_event("fanout", group)
    load.count_event("fanout_shards", group, len(results))
    if writes:  # each shard's write counted itself (ShardedQuerySet.update/delete)
        return
    for r in results:
        load.record(
            group,
            r.shard.name,
            rows=0 if r.error is not None else rows(r.value),
            seconds=r.elapsed,
        )


def _backend(results: list[FanoutResult], shards: list[Shard]) -> Backend:
    return Backend.of(results[0].alias if results else shards[0].primary)


def fetch(qs: ShardedQuerySet, shards: list[Shard]) -> list[Any]:
    """Every row of ``qs`` from ``shards``, merged."""
    parts = shard_parts(qs, shards)
    shards = parts.shards
    spec = merge_spec(qs)
    if spec.combinator:
        per_shard = qs._chain()  # each shard returns its first offset+limit rows
        per_shard.query.clear_limits()
        if spec.high_mark is not None:
            per_shard.query.set_limits(0, spec.high_mark)
        results = run_fanout(
            qs, shards, lambda alias: list(parts.on(per_shard, alias)), "union", rows=len
        )
        return merge.merge_combined(spec, [r.value for r in results], _backend(results, shards))
    if is_values_grouped(qs):
        shard_qs = qs._chain()
        shard_qs.query.clear_limits()
        shard_qs.query.clear_ordering(force=True)
        plan = merge.plan_groups(shard_qs.query, groups_are_complete(qs))
        shard_qs._iterable_class = ValuesIterable
        results = run_fanout(
            qs, shards, lambda alias: list(parts.on(shard_qs, alias)), "group-by", rows=len
        )
        return merge.merge_groups(spec, plan, [r.value for r in results], _backend(results, shards))
    shard_qs, order_names = per_shard_rows(qs, spec)
    results = run_fanout(
        qs, shards, lambda alias: list(parts.on(shard_qs, alias)), "query", rows=len
    )
    return merge.merge_rows(
        spec, order_names, [r.value for r in results], _backend(results, shards)
    )


def count(qs: ShardedQuerySet, shards: list[Shard]) -> int:
    query = qs.query
    if (
        query.combinator
        or is_values_grouped(qs)
        or (
            query.distinct
            and cast("type[ShardedIterable]", qs._iterable_class).row_iterable is not ModelIterable
        )
    ):
        return len(fetch(qs, shards))
    parts = shard_parts(qs, shards)
    base = qs._chain()
    base.query.clear_limits()
    base.query.clear_ordering(force=True)
    results = run_fanout(qs, parts.shards, lambda alias: parts.on(base, alias).count(), "count")
    total = sum(r.value for r in results)
    if query.high_mark is not None:
        total = min(total, query.high_mark)
    return max(0, total - query.low_mark)


def exists(qs: ShardedQuerySet, shards: list[Shard]) -> bool:
    if qs.query.is_sliced:
        return count(qs, shards) > 0
    parts = shard_parts(qs, shards)
    base = qs._chain()
    base.query.clear_ordering(force=True)
    results = run_fanout(qs, parts.shards, lambda alias: parts.on(base, alias).exists(), "exists")
    return any(r.value for r in results)


def aggregate(qs: ShardedQuerySet, shards: list[Shard], aggregates: dict[str, Any]) -> dict:
    """``aggregate(**aggregates)`` of ``qs`` over ``shards``, combined."""
    query = qs.query
    grouped = is_grouped(query) and not groups_are_complete(qs)
    if query.is_sliced or query.combinator or query.distinct or grouped:
        raise NotSupportedError(
            "aggregate() over a sliced, distinct, grouped or combined queryset cannot be "
            "merged across shards; aggregate each shard with on_shard()."
        )
    plan = merge.plan_aggregate(aggregates, qs.model)
    parts = shard_parts(qs, shards)
    shards = parts.shards
    base = qs._chain()
    base.query.clear_ordering(force=True)

    def task(alias: str) -> tuple[dict[str, Any], dict[str, set[Any]]]:
        shard_qs = parts.on(base, alias)
        answer = shard_qs.aggregate(**plan.parts) if plan.parts else {}
        values = {}
        for name, agg in plan.distinct.items():
            expression = agg.get_source_expressions()[0]
            condition = merge.filter_of(agg)
            scoped = shard_qs.filter(condition) if condition is not None else shard_qs
            column = scoped.annotate(_shards_d=expression).values_list("_shards_d", flat=True)
            values[name] = {v for v in column.distinct() if v is not None}
        return answer, values

    results = run_fanout(qs, shards, task, "aggregate")
    backend = _backend(results, shards)
    distinct = {
        name: {backend.fold(v) for r in results for v in r.value[1][name]} for name in plan.distinct
    }
    return merge.combine_aggregates(plan, [r.value[0] for r in results], distinct, backend)


def in_bulk(
    qs: ShardedQuerySet, shards: list[Shard], id_list: Any, field_name: str
) -> dict[Any, Any]:
    parts = shard_parts(qs, shards)
    results = run_fanout(
        qs,
        parts.shards,
        lambda alias: parts.on(qs, alias).in_bulk(id_list, field_name=field_name),
        "in_bulk",
        rows=len,
    )
    merged: dict[Any, Any] = {}
    for r in results:
        merged.update(r.value)
    return merged


def stream(qs: ShardedQuerySet, shards: list[Shard], chunk_size: int) -> Iterator[Any]:
    """``qs.iterator()`` across ``shards``: each shard is read in pages of ``chunk_size``
    (by primary key when the query has no ordering), the pages merged as they come, so
    memory stays bounded by shards x ``chunk_size``."""
    query = qs.query
    ordering = merge.ordering_of(query)
    if query.combinator or query.is_sliced or is_values_grouped(qs) or ordering.random:
        yield from fetch(qs, shards)
        return
    parts = shard_parts(qs, shards)
    shards = parts.shards
    keyset = not ordering.items
    # order_by() keeps reverse(): the pk tie-break (and keyset direction) follows it
    ordered = qs.order_by(*(() if keyset else query.order_by or query.get_meta().ordering), "pk")
    descending_pk = not query.standard_ordering
    spec = merge_spec(ordered)
    shard_qs, names = per_shard_rows(ordered, spec)
    targets = _targets(qs, shards, writes=False)
    backend = Backend.of(targets[0][1])
    missing: list[str] = []
    qs.missing_shards = missing
    what = _what(qs, "iterator")
    sk = key_for_model(qs.model)
    assert sk is not None
    load.count_event("fanout", sk.group)
    load.count_event("fanout_shards", sk.group, len(targets))

    def pages(shard: Shard, alias: str) -> Iterator[tuple[tuple, tuple, Any]]:
        """The shard's rows, page by page; counted as one read (its rows, the time its
        pages took) when it ends or the caller stops."""
        counted: list[Any] = [0, 0.0]  # rows, seconds
        try:
            yield from _pages(shard, alias, counted)
        finally:
            load.record(sk.group, shard.name, rows=counted[0], seconds=counted[1])

    def _pages(shard: Shard, alias: str, counted: list[Any]) -> Iterator[tuple[tuple, tuple, Any]]:
        sort_key = merge.SortKey(spec.ordering.items, backend)
        offset, last_pk = 0, None
        while True:
            page_qs = parts.on(shard_qs, alias)
            started = time.perf_counter()
            try:
                if keyset:
                    if last_pk is not None:
                        lookup = "pk__lt" if descending_pk else "pk__gt"
                        page_qs = page_qs.filter(**{lookup: last_pk})
                    rows = list(page_qs[:chunk_size])
                else:
                    rows = list(page_qs[offset : offset + chunk_size])
                    offset += chunk_size
            except DatabaseError as exc:
                if not qs._options.allow_partial:
                    raise FanoutError(
                        f"{what} failed on shard {shard.name!r} ({alias}): {exc}. Use "
                        ".allow_partial() to accept answers from the other shards."
                    ) from exc
                missing.append(shard.name)
                return
            finally:
                counted[1] += time.perf_counter() - started
            counted[0] += len(rows)
            for row in rows:
                values, clean = merge.split_order_values(row, spec.kind, names)
                last_pk = values[-1]
                yield sort_key(values), tuple(values), clean
            if len(rows) < chunk_size:
                return

    streams = heapq.merge(*(pages(s, a) for s, a in targets), key=lambda t: t[0])
    if query.distinct and spec.kind is not RowKind.MODELS:
        # the pk tie-break is not part of the DISTINCT the caller asked for
        pairs = merge.distinct(((v[:-1], row) for _, v, row in streams), spec.kind, backend)
        rows: Iterator[Any] = (row for _, row in pairs)
    else:
        rows = (row for _, _, row in streams)
    rows = merge.finish_rows(spec, rows)
    lookups = qs._prefetch_related_lookups
    if not lookups:
        yield from rows
        return
    while chunk := list(itertools.islice(rows, chunk_size)):
        prefetch_related_objects(chunk, *lookups)
        yield from chunk


def delete(qs: ShardedQuerySet, shards: list[Shard]) -> tuple[int, dict[str, int]]:
    """``qs.delete()`` on each of ``shards``' primaries. A split's source, which keeps the
    moved rows until its clean-up, deletes only the rows it owns: a write to the others
    would reach the new shard's live rows through the binlog the split still reads."""
    base = qs._chain()
    parts = shard_parts(qs, shards)
    results = run_fanout(
        qs,
        parts.shards,
        lambda alias: parts.on(base, alias).delete(),
        "delete",
        writes=True,
    )
    counts: Counter[str] = Counter()
    for r in results:
        counts.update(r.value[1])
    return sum(r.value[0] for r in results), dict(counts)


def update(qs: ShardedQuerySet, shards: list[Shard], values: dict[str, Any]) -> int:
    """``qs.update(**values)`` on each of ``shards``' primaries (owned rows only, as in
    :func:`delete`)."""
    base = qs._chain()
    parts = shard_parts(qs, shards)
    results = run_fanout(
        qs,
        parts.shards,
        lambda alias: parts.on(base, alias).update(**values),
        "update",
        writes=True,
    )
    return sum(r.value for r in results)
