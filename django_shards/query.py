"""The sharded queryset: routes each query from the shard key found in its filters.

The key is read from the compiled WHERE tree, so it is found however the filter was
written (``pk=``, ``author=obj``, ``author_id__in=[...]``, ``Q`` objects, related
managers, ``get()``, ``in_bulk()``, the deletion collector ...). A query whose filters
pin it to one shard runs there; ``range`` predicates under the range strategy are pruned
to the overlapping shards.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple, TypeVar

from django.db import (
    DatabaseError,
    IntegrityError,
    NotSupportedError,
    models,
    transaction,
)
from django.db.models import lookups
from django.db.models.expressions import Col
from django.db.models.query import ModelIterable, prefetch_related_objects
from django.db.models.sql.where import AND, NothingNode, WhereNode

from django_shards import key_changes, merge
from django_shards.conf import Shard, get_config
from django_shards.context import validate_level
from django_shards.exceptions import (
    FanoutError,
    NoShardForKey,
    ShardingError,
    ShardKeyRequired,
    ShardMoving,
    ShardUnavailable,
)
from django_shards.fanout import FanoutResult, collect, get_executor
from django_shards.keys import ShardKey, key_for_model
from django_shards.replicas import is_connection_error, pool, primary_errors
from django_shards.routing import note_write, read_alias, write_alias, write_shard
from django_shards.shardmap import ShardMap, get_map

T = TypeVar("T")
logger = logging.getLogger("django_shards.fanout")
_UNSET: Any = object()
#: a read routed to a replica is tried on this many aliases before the error surfaces
READ_ATTEMPTS = 3


class _Options(NamedTuple):
    """How a queryset routes, besides its filters."""

    shard_name: str | None = None  # on_shard()
    pinned_key: Any = _UNSET  # for_key()
    consistency: str | None = None  # strong(), eventual(), consistency()
    fanout: bool = False  # fanout()
    allow_partial: bool = False  # allow_partial()
    keys_checked: bool = False  # bulk_update() checked its objects' keys: update() need not


_NO_OPTIONS = _Options()
_RANGE_LOOKUPS: dict[type, tuple[bool, bool, bool]] = {
    # lookup class -> (sets lower bound, inclusive, is upper)
    lookups.GreaterThan: (True, False, False),
    lookups.GreaterThanOrEqual: (True, True, False),
    lookups.LessThan: (False, False, True),
    lookups.LessThanOrEqual: (False, True, True),
}


def _is_expression(value: Any) -> bool:
    return hasattr(value, "resolve_expression")


def _locate(shard_map: ShardMap, sk: ShardKey, value: Any) -> str | None:
    """The name of the shard owning key ``value``; None when no shard holds it (the query
    then matches nothing there)."""
    try:
        return shard_map.strategy.shard_for_key(shard_map.layout, sk.normalize(value))
    except NoShardForKey:
        return None


def _shards_from_lookup(
    node: lookups.Lookup, base_alias: str | None, sk: ShardKey, shard_map: ShardMap
) -> set[str] | None:
    lhs = node.lhs
    if not (
        isinstance(lhs, Col)
        and lhs.alias == base_alias
        and getattr(lhs.target, "column", None) == sk.field.column
    ):
        return None
    rhs = node.rhs
    if hasattr(rhs, "resolve_expression"):
        return None
    if isinstance(node, lookups.Exact):
        name = _locate(shard_map, sk, rhs)
        return set() if name is None else {name}
    if isinstance(node, lookups.In):
        if any(_is_expression(v) for v in rhs):
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
        for cls, (is_lower, inclusive, _) in _RANGE_LOOKUPS.items():
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
    node: Any, base_alias: str | None, sk: ShardKey, shard_map: ShardMap
) -> set[str] | None:
    """Names of the shards a WHERE tree can match, or None when it does not constrain the key.

    Conservative: a negated branch or an unknown expression constrains nothing.
    """
    if isinstance(node, WhereNode):
        if node.negated:
            return None
        children = node.children
        if len(children) == 1 and isinstance(children[0], lookups.Lookup):  # get(pk=...)
            return _shards_from_lookup(children[0], base_alias, sk, shard_map)
        results = [shards_from_where(c, base_alias, sk, shard_map) for c in children]
        if node.connector == AND:
            known = [r for r in results if r is not None]
            return set.intersection(*known) if known else None
        if not results or any(r is None for r in results):
            return None
        return set().union(*results)
    if isinstance(node, NothingNode):
        return set()
    if isinstance(node, lookups.Lookup):
        return _shards_from_lookup(node, base_alias, sk, shard_map)
    return None


def _subqueries(node: Any) -> Iterator[Any]:
    """Every ``Query`` nested in a WHERE tree (``__in=queryset``, ``Exists``, ``Subquery``)."""
    from django.db.models.sql.query import Query

    if isinstance(node, Query):
        yield node
        yield from _subqueries(node.where)
        return
    if isinstance(node, WhereNode):
        for child in node.children:
            yield from _subqueries(child)
        return
    query = getattr(node, "query", None)
    if isinstance(query, Query):
        yield from _subqueries(query)
    if hasattr(node, "get_source_expressions"):
        for expr in node.get_source_expressions():
            if expr is not None:
                yield from _subqueries(expr)
    rhs = getattr(node, "rhs", None)
    if rhs is not None and hasattr(rhs, "resolve_expression"):
        yield from _subqueries(rhs)


def _base_alias(query: Any) -> str | None:
    """The alias of the query's own table (``Query.base_table`` would cache None on a query
    that has no table yet, e.g. ``none()``)."""
    return next(iter(query.alias_map), None)


def keys_from_where(node: Any, base_alias: str | None, sk: ShardKey) -> set[Any] | None:
    """The key values an AND-ed WHERE tree names with ``=``/``IN``, or None if it names none."""
    if isinstance(node, WhereNode):
        if node.negated or node.connector != AND:
            return None
        found = [keys_from_where(c, base_alias, sk) for c in node.children]
        known = [k for k in found if k is not None]
        return set.intersection(*known) if known else None
    if not isinstance(node, lookups.Exact | lookups.In):
        return None
    lhs = node.lhs
    if not (
        isinstance(lhs, Col)
        and lhs.alias == base_alias
        and getattr(lhs.target, "column", None) == sk.field.column
    ):
        return None
    values = [node.rhs] if isinstance(node, lookups.Exact) else node.rhs
    if _is_expression(values) or any(_is_expression(v) for v in values):
        return None
    return {sk.normalize(v) for v in values if v is not None}


class ShardedQuerySet(models.QuerySet):
    """A ``QuerySet`` that picks its database from the shard key in its filters."""

    #: routing options (for_key, on_shard, strong, fanout ...): one immutable value that
    #: every clone shares, so building a queryset costs one attribute copy
    _options: _Options = _NO_OPTIONS
    #: the alias the last routed read picked (for _read's failover)
    _routed_alias: str | None = None
    _force_primary: bool = False
    #: inside _read, which retries a failing replica: db need not pre-connect replicas
    _retries: bool = False
    #: (where, shards) found by _fanout_shards, taken by the db that follows
    _route: tuple[Any, list[Shard]] | None = None
    #: shards left out of the last fan-out of this queryset (with allow_partial())
    missing_shards: list[str] = []  # noqa: RUF012 - only ever replaced, never mutated

    def _clone(self) -> ShardedQuerySet:
        clone = super()._clone()
        clone._options = self._options
        return clone

    def _with(self, **options: Any) -> ShardedQuerySet:
        """A clone with routing ``options`` (fields of :class:`_Options`) changed."""
        clone = self._chain()
        clone._options = self._options._replace(**options)
        return clone

    # -- where a query runs ---------------------------------------------------------

    @property
    def _shard_key(self) -> ShardKey | None:
        return key_for_model(self.model)

    @property
    def _routes_itself(self) -> bool:
        """True for a sharded model unless ``using()`` named one of its group's databases.

        An alias outside the group (say ``default``, which Django's admin passes for
        deletions) cannot hold the model's rows, so it is ignored and the key routes.
        """
        sk = self._shard_key
        if sk is None:
            return False
        return self._db is None or get_map(sk.group).shard_for_alias(self._db) is None

    def _shard_map(self) -> ShardMap:
        sk = self._shard_key
        assert sk is not None
        return get_map(sk.group)

    def _target_shards(self) -> list[Shard]:
        """The shards this query will touch, in map order."""
        sk = key_for_model(self.model)
        if sk is None:
            raise ShardingError(f"{self.model._meta.label} is not sharded.")
        shard_map = get_map(sk.group)
        if self._db is not None:
            shard = shard_map.shard_for_alias(self._db)
            if shard is not None:
                return [shard]
        options = self._options
        if options is not _NO_OPTIONS:
            if options.shard_name is not None:
                return [shard_map.shard_named(options.shard_name)]
            if options.pinned_key is not _UNSET:
                return [shard_map.shard_for_key(sk.normalize(options.pinned_key))]
        query = self.query
        where = query.where
        children = where.children
        if len(children) == 1 and not where.negated and not query.combinator:
            # the common case (get(pk=k), filter(author_id=k)) inlined: one key, = value;
            # this runs on every routed query, where a call or two shows (cold caches)
            node = children[0]
            if isinstance(node, lookups.Exact):
                lhs, rhs = node.lhs, node.rhs
                if (
                    isinstance(lhs, Col)
                    and getattr(lhs.target, "column", None) == sk.column
                    and lhs.alias == next(iter(query.alias_map), None)
                    and not hasattr(rhs, "resolve_expression")
                ):
                    if rhs.__class__ is not int or not sk.int_key:
                        rhs = sk.normalize(rhs)
                    try:
                        return [
                            shard_map.shards[
                                shard_map.strategy.shard_for_key(shard_map.layout, rhs)
                            ]
                        ]
                    except NoShardForKey:
                        return []
        if query.combinator:
            found = [
                shards_from_where(q.where, _base_alias(q), sk, shard_map)
                for q in query.combined_queries
            ]
            names = None if any(n is None for n in found) else set().union(*found)
        else:
            names = shards_from_where(query.where, _base_alias(query), sk, shard_map)
        if names is None:
            return shard_map.owning_shards
        if len(names) == 1:  # the common case: a key's owner
            return [shard_map.shards[next(iter(names))]]
        return [s for s in shard_map.owning_shards if s.name in names]

    def target_shards(self) -> list[str]:
        """Names of the shards this queryset would run on (no query is run)."""
        return [s.name for s in self._target_shards()]

    def _single_shard(self, shards: list[Shard] | None = None) -> Shard:
        if shards is None:
            shards = self._target_shards()
        if len(shards) == 1:
            return shards[0]
        if not shards:  # the filters match no shard: any shard answers "nothing"
            return self._shard_map().owning_shards[0]
        return self._many_shards(shards)

    def _many_shards(self, shards: list[Shard]) -> Shard:
        sk = self._shard_key
        assert sk is not None
        names = ", ".join(s.name for s in shards)
        raise ShardKeyRequired(
            f"This {self.model._meta.label} operation runs on one database, but the query does "
            f"not name its shard key ({sk.field_name!r}) and would touch {len(shards)} shards "
            f"({names}). Filter on the key, or use for_key() or on_shard()."
        )

    # -- fan-out ----------------------------------------------------------------------

    def _fanout_shards(self) -> list[Shard] | None:
        """The shards to fan out to, or None when the query runs on a single shard.

        Applies ``FANOUT``: ``deny`` raises ``ShardKeyRequired`` unless ``.fanout()`` was
        asked, ``warn`` logs the model and the filter.
        """
        if not self._routes_itself:
            return None
        shards = self._target_shards()
        if len(shards) <= 1:
            # the evaluation that follows asks ``db`` for the same answer: keep it for that
            self._route = (self.query.where, shards)
            return None
        self._check_mergeable()
        if not self._options.fanout and not self._names_keys():
            mode = get_config().fanout
            if mode == "deny":
                sk = self._shard_key
                assert sk is not None
                raise ShardKeyRequired(
                    f"This {self.model._meta.label} query does not name its shard key "
                    f"({sk.field_name!r}) and FANOUT is 'deny'; it would run on "
                    f"{len(shards)} shards. Filter on the key, or call .fanout() to allow it."
                )
            if mode == "warn":
                logger.warning(
                    "fan-out: %s on %d shards (%s), filter: %s",
                    self.model._meta.label,
                    len(shards),
                    ", ".join(s.name for s in shards),
                    self.query.where,
                )
        return shards

    def _names_keys(self) -> bool:
        """True when the filters name shard keys (``author_id__in=[...]``): not a query
        "without a key", even when the keys live on several shards."""
        sk = self._shard_key
        assert sk is not None
        query = self.query
        return shards_from_where(query.where, _base_alias(query), sk, self._shard_map()) is not None

    def _check_mergeable(self) -> None:
        """Refuse fan-outs whose per-shard answers cannot be merged into the right one."""
        query = self.query
        if any(getattr(a, "contains_over_clause", False) for a in query.annotations.values()):
            raise NotSupportedError(
                "Window functions are computed per shard and cannot be merged across shards; "
                "name the shard key or use on_shard()."
            )
        for sub in _subqueries(query.where):
            sk = key_for_model(sub.model) if sub.model is not None else None
            if sk is not None and not sub.external_aliases:
                raise NotSupportedError(
                    f"A subquery over the sharded model {sub.model._meta.label} would run "
                    "inside each shard and see only that shard's rows; evaluate it first "
                    "(e.g. list(...values_list(...))) and filter on the values."
                )

    def _run_fanout(
        self, shards: list[Shard], task: Any, *, what: str, writes: bool = False
    ) -> list[FanoutResult]:
        """Run ``task(alias)`` on every shard in parallel (primaries for writes)."""
        for_write = writes or self._for_write
        targets = [
            (
                s,
                write_alias(s, pin=False)
                if for_write
                else read_alias(s, self._options.consistency),
            )
            for s in shards
        ]
        results = get_executor().run(targets, task, timeout=get_config().fanout_timeout_seconds)
        if writes:
            for result in results:
                if result.error is None:
                    note_write(result.alias, same_session=False)
        good, self.missing_shards = collect(
            results, allow_partial=self._options.allow_partial, what=what
        )
        return good

    def _what(self, operation: str) -> str:
        return f"{self.model._meta.label} {operation}"

    def _is_values_grouped(self) -> bool:
        return merge.is_grouped(self.query) and self.query.group_by is not True

    def _fanout_fetch(self, shards: list[Shard]) -> list[Any]:
        if self.query.combinator:
            per_shard = self._chain()  # each shard returns its first offset+limit rows
            per_shard.query.clear_limits()
            if self.query.high_mark is not None:
                per_shard.query.set_limits(0, self.query.high_mark)
            results = self._run_fanout(
                shards, lambda alias: list(per_shard.using(alias)), what=self._what("union")
            )
            return merge.merge_combined(self, [(r.alias, r.value) for r in results])
        if self._is_values_grouped():
            shard_qs, plan = merge.per_shard_groups(self)
            results = self._run_fanout(
                shards, lambda alias: list(shard_qs.using(alias)), what=self._what("group-by")
            )
            return merge.merge_groups(self, plan, [(r.alias, r.value) for r in results])
        shard_qs, plan = merge.per_shard_rows(self)
        shard_qs._prefetch_related_lookups = ()  # done once, on the merged rows
        results = self._run_fanout(
            shards, lambda alias: list(shard_qs.using(alias)), what=self._what("query")
        )
        return merge.merge_rows(self, plan, [(r.alias, r.value) for r in results])

    def _fanout_count(self, shards: list[Shard]) -> int:
        query = self.query
        if (
            query.combinator
            or self._is_values_grouped()
            or (query.distinct and self._iterable_class is not ModelIterable)
        ):
            return len(self._fanout_fetch(shards))
        base = self._chain()
        base.query.clear_limits()
        base.query.clear_ordering(force=True)
        results = self._run_fanout(
            shards, lambda alias: base.using(alias).count(), what=self._what("count")
        )
        total = sum(r.value for r in results)
        if query.high_mark is not None:
            total = min(total, query.high_mark)
        return max(0, total - query.low_mark)

    def _fanout_aggregate(
        self, shards: list[Shard], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        aggregates = dict(kwargs)
        for arg in args:
            try:
                aggregates[arg.default_alias] = arg
            except (AttributeError, TypeError):
                raise TypeError("Complex aggregates require an alias") from None
        query = self.query
        grouped = merge.is_grouped(query) and not merge.groups_are_complete(self)
        if query.is_sliced or query.combinator or query.distinct or grouped:
            raise NotSupportedError(
                "aggregate() over a sliced, distinct, grouped or combined queryset cannot be "
                "merged across shards; aggregate each shard with on_shard()."
            )
        plan = merge.plan_aggregate(aggregates)
        base = self._chain()
        base.query.clear_ordering(force=True)

        def task(alias: str) -> tuple[dict[str, Any], dict[str, set[Any]]]:
            qs = base.using(alias)
            answer = qs.aggregate(**plan.parts) if plan.parts else {}
            values = {}
            for name, agg in plan.distinct.items():
                expression = agg.get_source_expressions()[0]
                condition = merge.filter_of(agg)
                scoped = qs.filter(condition) if condition is not None else qs
                column = scoped.annotate(_shards_d=expression).values_list("_shards_d", flat=True)
                values[name] = {v for v in column.distinct() if v is not None}
            return answer, values

        results = self._run_fanout(shards, task, what=self._what("aggregate"))
        fold = merge.folder(results[0].alias) if results else (lambda v: v)
        distinct = {
            name: {fold(v) for r in results for v in r.value[1][name]} for name in plan.distinct
        }
        answer = merge.combine_aggregates(plan, [r.value[0] for r in results], distinct, fold)
        if results:
            merge.round_averages_like_backend(self, aggregates, answer, results[0].alias)
        return answer

    def _fanout_iterator(self, shards: list[Shard], chunk_size: int) -> Any:
        query = self.query
        plan_ordering = merge.ordering_of(query)
        if (
            query.combinator
            or query.is_sliced
            or self._is_values_grouped()
            or plan_ordering is merge.RANDOM
        ):
            yield from self._fanout_fetch(shards)
            return
        keyset = not plan_ordering
        # order_by() keeps reverse(): the pk tie-break (and keyset direction) follows it
        ordered = self.order_by(
            *(() if keyset else query.order_by or query.get_meta().ordering), "pk"
        )
        descending_pk = not query.standard_ordering
        shard_qs, plan = merge.per_shard_rows(ordered)
        shard_qs._prefetch_related_lookups = ()
        kind, ordering, names = plan
        targets = [
            (
                s,
                read_alias(s, self._options.consistency)
                if not self._for_write
                else write_alias(s, pin=False),
            )
            for s in shards
        ]
        missing: list[str] = []
        self.missing_shards = missing

        def pages(shard: Shard, alias: str) -> Any:
            sort_key = merge.SortKey(ordering, alias)
            offset, last_pk = 0, None
            while True:
                page_qs = shard_qs.using(alias)
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
                    if not self._options.allow_partial:
                        raise FanoutError(
                            f"{self._what('iterator')} failed on shard {shard.name!r} "
                            f"({alias}): {exc}. Use .allow_partial() to accept answers from "
                            "the other shards."
                        ) from exc
                    missing.append(shard.name)
                    return
                for row in rows:
                    values, clean = merge.split_order_values(row, kind, names)
                    last_pk = values[-1]
                    yield sort_key(values), tuple(values), clean
                if len(rows) < chunk_size:
                    return

        streams = heapq.merge(*(pages(s, a) for s, a in targets), key=lambda t: t[0])
        if query.distinct and kind != "models":
            fold = merge.folder(targets[0][1])
            seen: set[Any] = set()

            def unique() -> Any:
                for _, values, row in streams:
                    body = tuple(row.values()) if isinstance(row, dict) else row
                    marker = fold((values[:-1], body if isinstance(body, tuple) else (body,)))
                    if marker not in seen:
                        seen.add(marker)
                        yield row

            merged = unique()
        else:
            merged = (row for _, _, row in streams)
        rows = merge._finish_rows(self, kind, merged)
        if not self._prefetch_related_lookups:
            yield from rows
            return
        chunk: list[Any] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == chunk_size:
                prefetch_related_objects(chunk, *self._prefetch_related_lookups)
                yield from chunk
                chunk = []
        if chunk:
            prefetch_related_objects(chunk, *self._prefetch_related_lookups)
            yield from chunk

    @property
    def db(self) -> str:
        route = self._route
        if route is not None:
            # routed a moment ago by _fanout_shards, in this same evaluation (a change to
            # the query since makes a new where tree, and the route is not used)
            self._route = None
            shards = route[1] if route[0] is self.query.where else None
        elif not self._routes_itself:
            return super().db
        else:
            shards = None
        shard = shards[0] if shards and len(shards) == 1 else self._single_shard(shards)
        if self._for_write or self._force_primary:
            alias = write_alias(shard, pin=False)
        else:
            alias = read_alias(shard, self._options.consistency, connect=not self._retries)
        self._routed_alias = alias
        return alias

    # -- choosing shard and consistency ---------------------------------------------

    def for_key(self, key: Any) -> ShardedQuerySet:
        """A queryset pinned to the shard that owns ``key`` (no filter is added)."""
        return self._with(pinned_key=key, shard_name=None)

    def on_shard(self, name: str) -> ShardedQuerySet:
        """A queryset on one shard, by name. Raises ``UnknownShard``."""
        self._shard_map().shard_named(name)
        return self._with(shard_name=name, pinned_key=_UNSET)

    def strong(self) -> ShardedQuerySet:
        """Reads go to the primary."""
        return self._with(consistency="strong")

    def eventual(self) -> ShardedQuerySet:
        """Reads go to a usable replica (the primary when none is), pinned or not."""
        return self._with(consistency="eventual")

    def consistency(self, level: str) -> ShardedQuerySet:
        return self._with(consistency=validate_level(level))

    def fanout(self) -> ShardedQuerySet:
        """Explicitly allow this query to run on every shard it targets."""
        return self._with(fanout=True)

    def allow_partial(self) -> ShardedQuerySet:
        """In a fan-out, a failing shard is left out instead of raising ``FanoutError``."""
        return self._with(allow_partial=True)

    # -- reads that survive a replica failing ---------------------------------------

    def _read(self, run: Callable[[], T]) -> T:
        """Run a read; a replica that fails is skipped and the read retried, invisibly.

        A connection failure marks the replica down and retries on another replica or the
        primary. Any other error on a replica is retried on the primary: if the primary
        fails too, the error is the query's and is raised; if it answers, the replica was
        broken and is marked down.
        """
        if self._for_write or (self._route is None and not self._routes_itself):
            return run()
        timed = get_config().replica_selection == "fastest"
        for attempt in range(READ_ATTEMPTS):
            self._routed_alias = None
            started = time.perf_counter() if timed else 0.0
            # a replica that cannot connect fails the run and is retried below, so db need
            # not connect it first (except on the last attempt, which is not retried)
            self._retries = attempt < READ_ATTEMPTS - 1
            try:
                result = run()
            except DatabaseError as exc:
                alias = self._routed_alias
                if alias is None or not self._is_replica(alias):
                    if alias is not None and is_connection_error(exc):
                        raise ShardUnavailable(
                            f"The primary {alias!r} of a shard is unreachable: {exc}"
                        ) from exc
                    raise
                if attempt == READ_ATTEMPTS - 1:
                    raise
                if is_connection_error(exc):
                    pool.mark_down(alias, exc)
                    continue
                self._force_primary = True
                try:
                    result = run()
                finally:
                    self._force_primary = False
                pool.mark_down(alias, exc)  # the primary answered: the replica is broken
                return result
            finally:
                self._retries = False
            if timed:
                alias = self._routed_alias
                if alias is not None and self._is_replica(alias):
                    pool.observe(alias, time.perf_counter() - started)
            return result
        raise AssertionError("unreachable")

    def _is_replica(self, alias: str) -> bool:
        shard = self._shard_map().shard_for_alias(alias)
        return shard is not None and alias != shard.primary

    def _fetch_all(self) -> None:
        if self._result_cache is None:
            shards = self._fanout_shards()
            if shards is not None:
                self._result_cache = self._fanout_fetch(shards)
                if self._prefetch_related_lookups and not self._prefetch_done:
                    self._prefetch_related_objects()
                return
            self._read(super()._fetch_all)
        else:
            super()._fetch_all()

    def count(self) -> int:
        if self._result_cache is not None:
            return len(self._result_cache)
        shards = self._fanout_shards()
        if shards is not None:
            return self._fanout_count(shards)
        return self._read(super().count)

    def exists(self) -> bool:
        if self._result_cache is not None:
            return bool(self._result_cache)
        shards = self._fanout_shards()
        if shards is not None:
            if self.query.is_sliced:
                return self._fanout_count(shards) > 0
            base = self._chain()
            base.query.clear_ordering(force=True)
            results = self._run_fanout(
                shards, lambda alias: base.using(alias).exists(), what=self._what("exists")
            )
            return any(r.value for r in results)
        return self._read(super().exists)

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        shards = self._fanout_shards()
        if shards is not None:
            return self._fanout_aggregate(shards, args, kwargs)
        return self._read(lambda: super(ShardedQuerySet, self).aggregate(*args, **kwargs))

    def in_bulk(self, id_list: Any = None, *, field_name: str = "pk") -> dict[Any, Any]:
        """Like ``QuerySet.in_bulk``; ids of several shards are looked up on each of them."""
        if not self._routes_itself:
            return super().in_bulk(id_list, field_name=field_name)
        if id_list is not None:
            id_list = list(id_list)
        if self.query.is_sliced or (id_list is not None and not id_list):
            # Django's own checks and answer (no query), on any one shard
            pinned = self._with(shard_name=self._shard_map().owning_shards[0].name)
            return super(ShardedQuerySet, pinned).in_bulk(id_list, field_name=field_name)
        if id_list is not None:
            target = self.filter(**{f"{field_name}__in": id_list})
        else:
            target = self
        shards = target._target_shards()
        if len(shards) <= 1:
            if not shards:
                return {}
            pinned = self._with(shard_name=shards[0].name)
            return super(ShardedQuerySet, pinned).in_bulk(id_list, field_name=field_name)
        target._fanout_shards()  # applies FANOUT (deny / warn)
        results = self._run_fanout(
            shards,
            lambda alias: self.using(alias).in_bulk(id_list, field_name=field_name),
            what=self._what("in_bulk"),
        )
        merged: dict[Any, Any] = {}
        for r in results:
            merged.update(r.value)
        return merged

    def iterator(self, chunk_size: int | None = None) -> Any:
        """Streams rows; across shards, memory stays bounded by shards x ``chunk_size``."""
        shards = self._fanout_shards()
        if shards is None:
            return super().iterator(chunk_size)
        return self._fanout_iterator(shards, chunk_size or 2000)

    def _check_writable(self, shards: list[Shard]) -> None:
        """Refuse a write that may touch keys a split is cutting over (``ShardMoving``)."""
        sk = self._shard_key
        if sk is None:
            return
        shard_map = get_map(sk.group)
        shard_map.check_confirmed()
        frozen = {f.source for f in shard_map.freezes} & {s.name for s in shards}
        if not frozen:
            return
        keys = keys_from_where(self.query.where, _base_alias(self.query), sk)
        if keys is None:
            raise ShardMoving(
                f"Shard(s) {', '.join(sorted(frozen))} of group {sk.group!r} are cutting over "
                f"a split and this {self.model._meta.label} write does not name its keys; "
                "it was not made. It is safe to retry in a moment."
            )
        for key in keys:
            shard_map.check_writable(key)

    def _after_write(self, alias: str | None) -> None:
        """Start read-your-writes for a write that ran on ``alias`` (when it is a primary)."""
        sk = self._shard_key
        if alias is None or sk is None:
            return
        shard = get_map(sk.group).shard_for_alias(alias)
        if shard is not None and alias == shard.primary:
            note_write(alias)

    def _write_alias_single(self) -> str | None:
        """The primary a single-shard write of this queryset goes to (None: no shard)."""
        if not self._routes_itself:
            return self._db
        shards = self._target_shards()
        return shards[0].primary if len(shards) == 1 else None

    def delete(self) -> tuple[int, dict[str, int]]:
        if self._routes_itself:
            self._check_writable(self._target_shards())
        shards = self._fanout_shards()
        if shards is None:
            alias = self._write_alias_single()
            with primary_errors(alias):
                deleted = super().delete()
            self._after_write(alias)
            return deleted
        base = self._chain()
        results = self._run_fanout(
            shards,
            lambda alias: base.using(alias).delete(),
            what=self._what("delete"),
            writes=True,
        )
        counts: Counter[str] = Counter()
        for r in results:
            counts.update(r.value[1])
        return sum(r.value[0] for r in results), dict(counts)

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    # -- writes ------------------------------------------------------------------------

    def _check_key_not_updated(self, values: dict[str, Any]) -> None:
        """Refuse an ``update()`` that sets the shard key (``ShardKeyChanged``), unless the
        filters pin every row to the very key it sets."""
        sk = self._shard_key
        if sk is None or self._options.keys_checked:
            return
        named = [f for f in (sk.field_name, sk.attname) if f in values]
        if not named:
            return
        value = values[named[0]]
        new = value if _is_expression(value) else key_changes.normalized(sk, value)
        keys = keys_from_where(self.query.where, _base_alias(self.query), sk)
        if keys is not None and not _is_expression(new) and keys <= {new}:
            return  # "set the key to what it is": nothing moves
        shards = [] if keys else [s.name for s in self._target_shards()]
        raise key_changes.key_changed(sk, sorted(keys or (), key=repr), new, old_shards=shards)

    def update(self, **kwargs: Any) -> int:
        self._check_key_not_updated(kwargs)
        if self._routes_itself:
            self._check_writable(self._target_shards())
        shards = self._fanout_shards()
        if shards is None:
            alias = self._write_alias_single()
            with primary_errors(alias):
                rows = super().update(**kwargs)
            self._after_write(alias)
            return rows
        base = self._chain()
        results = self._run_fanout(
            shards,
            lambda alias: base.using(alias).update(**kwargs),
            what=self._what("update"),
            writes=True,
        )
        return sum(r.value for r in results)

    update.alters_data = True  # type: ignore[attr-defined]

    def _insert(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        """Refuse an insert of sharded rows into a database outside their group (a row
        saved without its key lands here with Django's ``default``)."""
        using = kwargs.get("using")
        sk = self._shard_key
        if (
            sk is not None
            and using is not None
            and self._shard_map().shard_for_alias(using) is None
        ):
            raise ShardKeyRequired(
                f"{self.model._meta.label} has no shard key yet ({sk.field_name!r} is unset), "
                "so it cannot be routed; set the key before saving."
            )
        with primary_errors(using):
            return super()._insert(objs, *args, **kwargs)

    _insert.alters_data = True  # type: ignore[attr-defined]
    _insert.queryset_only = False  # type: ignore[attr-defined]  (managers need it: save())

    def _update(self, values: Any, *args: Any, **kwargs: Any) -> Any:
        """``save()`` of an existing row runs this on the owner's primary (``using()``).

        Django 6.1 passes ``returning_fields`` too.
        """
        with primary_errors(self._db):
            return super()._update(values, *args, **kwargs)

    _update.alters_data = True  # type: ignore[attr-defined]
    _update.queryset_only = False  # type: ignore[attr-defined]

    def create(self, **kwargs: Any) -> models.Model:
        """Create on the primary of the shard that owns the new row's key."""
        if not self._routes_itself:
            return super().create(**kwargs)
        obj = self.model(**kwargs)
        self._for_write = True
        obj.save(force_insert=True, using=write_alias(write_shard(obj), pin=False))
        return obj

    def _by_shard(self, objs: Iterable[models.Model]) -> dict[str, list[models.Model]]:
        grouped: dict[str, list[models.Model]] = {}
        for obj in objs:
            grouped.setdefault(write_alias(write_shard(obj), pin=False), []).append(obj)
        return grouped

    def bulk_create(self, objs: Iterable[models.Model], *args: Any, **kwargs: Any) -> list:
        """Rows are grouped by shard; one batch per shard (not atomic across shards)."""
        objs = list(objs)
        if not self._routes_itself or not objs:  # nothing to route: Django checks the arguments
            created = super().bulk_create(objs, *args, **kwargs)
            self._after_write(self._db)
            return created
        for alias, rows in self._by_shard(objs).items():
            self.using(alias).bulk_create(rows, *args, **kwargs)
        sk = self._shard_key
        assert sk is not None
        for obj in objs:  # bulk_create sends no post_save: the keys stored are these
            key_changes.remember_key(type(obj), obj)
        return objs

    def bulk_update(
        self, objs: Iterable[models.Model], fields: Any, *args: Any, **kwargs: Any
    ) -> int:
        objs = list(objs)
        if not self._routes_itself or not objs:
            rows = super().bulk_update(objs, fields, *args, **kwargs)
            self._after_write(self._db)
            return rows
        sk = self._shard_key
        assert sk is not None
        key_changes.check_bulk_unchanged(sk, objs)  # before any shard is written
        return sum(
            self.using(alias)._with(keys_checked=True).bulk_update(rows, fields, *args, **kwargs)
            for alias, rows in self._by_shard(objs).items()
        )

    def _single_write_shard(self, kwargs: dict[str, Any]) -> Shard | None:
        shards = self.filter(**kwargs)._target_shards()
        if len(shards) == 1:
            return shards[0]
        return None

    def get_or_create(self, defaults: Any = None, **kwargs: Any) -> tuple[models.Model, bool]:
        if not self._routes_itself:
            return super().get_or_create(defaults, **kwargs)
        shard = self._single_write_shard(kwargs)
        if shard is not None:
            return self.using(write_alias(shard, pin=False)).get_or_create(defaults, **kwargs)
        # no key: find it wherever it is, else create where its new key belongs
        try:
            return self.strong().get(**kwargs), False
        except self.model.DoesNotExist:
            params = self._extract_model_params(defaults, **kwargs)
            try:
                return self.create(**params), True
            except IntegrityError:
                try:
                    return self.strong().get(**kwargs), False
                except self.model.DoesNotExist:
                    pass
                raise

    def update_or_create(
        self, defaults: Any = None, create_defaults: Any = None, **kwargs: Any
    ) -> tuple[models.Model, bool]:
        if not self._routes_itself:
            return super().update_or_create(defaults, create_defaults, **kwargs)
        shard = self._single_write_shard(kwargs)
        if shard is not None:
            return self.using(write_alias(shard, pin=False)).update_or_create(
                defaults, create_defaults, **kwargs
            )
        defaults = defaults or {}
        try:
            obj = self.strong().get(**kwargs)
        except self.model.DoesNotExist:
            params = self._extract_model_params(
                create_defaults if create_defaults is not None else defaults, **kwargs
            )
            return self.create(**params), True
        with transaction.atomic(using=write_alias(write_shard(obj), pin=False)):
            for name, value in (defaults or {}).items():
                setattr(obj, name, value() if callable(value) else value)
            obj.save()
        return obj, False
