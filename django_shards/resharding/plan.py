"""Planning a split: the new map, and per model the rows that move.

Nothing here writes anything. :func:`plan_split` validates every input (group, source,
target name, aliases, split key) and raises ``SplitError`` with a clear sentence; so does
:func:`count_moving_rows`. A database that fails while planning is a ``SplitError`` too,
naming the shard and alias, chained to the database's error (``__cause__``).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connections, models

from django_shards.conf import Shard, get_config
from django_shards.exceptions import NoShardForKey, SplitError
from django_shards.health import probe
from django_shards.keys import ShardKey, sharded_models
from django_shards.shardmap import ShardMap, get_map
from django_shards.strategies.base import Layout


@dataclass(frozen=True)
class TableSpec:
    """One sharded table, as the copy reads and writes it (plain SQL, no model instances)."""

    key: ShardKey
    table: str
    columns: tuple[str, ...]
    pk_column: str
    key_index: int  # position of the shard key column in ``columns``

    @property
    def model(self) -> type[models.Model]:
        return self.key.model

    @property
    def label(self) -> str:
        return self.key.model._meta.label


def table_spec(sk: ShardKey) -> TableSpec:
    meta = sk.model._meta
    # a concrete field always has its column
    columns = tuple(cast(str, f.column) for f in meta.concrete_fields)
    return TableSpec(
        sk, meta.db_table, columns, cast(str, meta.pk.column), columns.index(sk.column)
    )


def group_tables(group: str) -> list[TableSpec]:
    """The group's tables, parents before children (the order rows are copied in)."""
    keys = [sk for sk in sharded_models() if sk.group == group and not sk.model._meta.proxy]
    by_model = {sk.model: sk for sk in keys}
    ordered: list[ShardKey] = []
    visiting: set[type[models.Model]] = set()

    def visit(model: type[models.Model]) -> None:
        if model in visiting or by_model[model] in ordered:
            return
        visiting.add(model)
        for f in model._meta.concrete_fields:
            parent = f.related_model if f.is_relation else None
            if parent in by_model and parent is not model and getattr(f, "db_constraint", False):
                visit(parent)
        ordered.append(by_model[model])

    for sk in sorted(keys, key=lambda k: k.model._meta.label):
        visit(sk.model)
    return [table_spec(sk) for sk in ordered]


@dataclass
class SplitPlan:
    """What a split will do. ``moving_rows`` is filled by :func:`count_moving_rows`."""

    group: str
    source: str
    target: Shard
    at: Any
    base: ShardMap
    new_layout: Layout
    tables: list[TableSpec]
    moving_rows: dict[str, int] = field(default_factory=dict)
    source_rows: dict[str, int] = field(default_factory=dict)

    @property
    def new_shards(self) -> list[Shard]:
        return [*self.base.shards.values(), self.target]

    def moves(self, key: Any) -> bool:
        """True when a row of the source with ``key`` belongs to the target after the split."""
        return self.base.strategy.shard_for_key(self.new_layout, key) == self.target.name

    def describe(self) -> dict[str, str]:
        return self.base.strategy.describe(self.new_layout)


def parse_at(group: str, raw: str | None) -> Any:
    """Turn ``--at`` text into a key of the group's key type (its first model's key field)."""
    if raw is None:
        return None
    tables = group_tables(group)
    if not tables:
        raise SplitError(f"Group {group!r} has no sharded models, so --at cannot be read.")
    sk = tables[0].key
    try:
        return sk.normalize(raw)
    except (ValidationError, ValueError, TypeError) as exc:
        reason = " ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
        raise SplitError(
            f"--at {raw!r} is not a valid {sk.model._meta.label}.{sk.field_name} key: "
            f"{reason.rstrip('.')}."
        ) from None


class DatabaseUnusable(SplitError):
    """A database the split needs (the source, the new primary or a new replica) failed or
    is unhealthy; nothing was changed. The input may be right: retry once it answers."""


def _reason(exc: BaseException) -> str:
    """The database's message on one line (mysqlclient's ``(code, message)`` unpacked)."""
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[1]} (error {args[0]})"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split()).rstrip(".")


@contextlib.contextmanager
def _reading(shard_map: ShardMap, shard: str, doing: str) -> Iterator[str]:
    """Yield ``shard``'s primary alias; a database error while reading it is a
    ``SplitError`` naming the shard, the alias and ``doing``."""
    alias = shard_map.shard_named(shard).primary
    try:
        yield alias
    except DatabaseError as exc:
        raise DatabaseUnusable(
            f"Cannot {doing}: shard {shard!r} of group {shard_map.group!r} (primary "
            f"{alias}) failed: {_reason(exc)}. Nothing was changed."
        ) from exc


def _aliases_in_use() -> dict[str, str]:
    """alias -> "group/shard" for every alias some shard of some group uses."""
    used: dict[str, str] = {}
    for group in get_config().groups:
        for shard in get_map(group).shards.values():
            for alias in shard.aliases:
                used.setdefault(alias, f"{group}/{shard.name}")
    for settings_group in get_config().groups.values():
        for spec in settings_group.shards:
            for alias in spec.shard.aliases:
                used.setdefault(alias, f"{settings_group.name}/{spec.name}")
    return used


def pk_range_sql(
    quote: Callable[[str], str], spec: TableSpec, after: Any = None, upto: Any = None
) -> tuple[str, list[Any]]:
    """``SELECT`` of every column of ``spec``'s rows with a primary key after ``after``
    (exclusive) and up to ``upto`` (inclusive; None: no bound), in primary-key order."""
    pk = quote(spec.pk_column)
    where, params = [], []
    if after is not None:
        where.append(f"{pk} > %s")
        params.append(after)
    if upto is not None:
        where.append(f"{pk} <= %s")
        params.append(upto)
    sql = f"SELECT {', '.join(quote(c) for c in spec.columns)} FROM {quote(spec.table)}"
    return sql + (f" WHERE {' AND '.join(where)}" if where else "") + f" ORDER BY {pk}", params


def iter_rows(
    alias: str, spec: TableSpec, batch_size: int, after: Any = None, upto: Any = None
) -> Iterator[list[tuple[Any, ...]]]:
    """Batches of rows of ``spec``'s table on ``alias``, in primary-key order, after ``after``
    (exclusive) and up to ``upto`` (inclusive)."""
    conn = connections[alias]
    pk_index = spec.columns.index(spec.pk_column)
    while True:
        sql, params = pk_range_sql(conn.ops.quote_name, spec, after, upto)
        sql += f" LIMIT {int(batch_size)}"
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            rows = [tuple(r) for r in cursor.fetchall()]
        if not rows:
            return
        yield rows
        if len(rows) < batch_size:
            return
        after = rows[-1][pk_index]


def batch_checksum(rows: list[tuple[Any, ...]]) -> str:
    """MD5 of the rows' reprs, one per line: equal rows in equal order, equal checksums."""
    digest = hashlib.md5(usedforsecurity=False)
    for row in rows:
        digest.update(repr(row).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def count_moving_rows(plan: SplitPlan, batch_size: int = 5000) -> None:
    """Fill ``plan.moving_rows``/``source_rows`` by reading every key on the source.

    Raises ``SplitError`` naming the source and its alias when the source fails.
    """
    with _reading(plan.base, plan.source, "count the rows that move") as alias:
        for spec in plan.tables:
            moving = total = 0
            for rows in iter_rows(alias, spec, batch_size):
                total += len(rows)
                moving += sum(
                    1 for row in rows if plan.moves(spec.key.normalize(row[spec.key_index]))
                )
            plan.moving_rows[spec.label] = moving
            plan.source_rows[spec.label] = total


def median_key(shard_map: ShardMap, source: str, tables: list[TableSpec]) -> Any:
    """The median key stored on ``source``, over the group's table with the most rows
    (None when it holds no rows).

    Raises ``SplitError`` naming the source and its alias when the source fails.
    """
    with _reading(shard_map, source, "find the median key to split at") as alias:
        best = None
        for spec in tables:
            qs = spec.model._base_manager.using(alias)
            count = qs.count()
            if count and (best is None or count > best[0]):
                best = (count, spec)
        if best is None:
            return None
        count, spec = best
        attname = spec.key.attname
        values = (
            spec.model._base_manager.using(alias).order_by(attname).values_list(attname, flat=True)
        )
        return values[count // 2]


@dataclass(frozen=True)
class StoredKeys:
    """The keys stored on one shard, read from its primary only when a strategy asks
    (:class:`django_shards.strategies.base.StoredKeys`)."""

    shard_map: ShardMap
    shard: str
    tables: list[TableSpec]

    def median(self) -> Any:
        return median_key(self.shard_map, self.shard, self.tables)


def default_split_point(
    shard_map: ShardMap, source: str, tables: list[TableSpec] | None = None
) -> Any:
    """The ``at`` a split of ``source`` uses when ``--at`` is not given (the strategy's
    choice: range, the median key stored; None for strategies whose split needs none).

    ``shard_status`` suggests the same point. Raises ``SplitError`` when there is none
    (an empty range shard) or the source fails.
    """
    if tables is None:
        tables = group_tables(shard_map.group)
    stored = StoredKeys(shard_map, source, tables)
    return shard_map.strategy.default_split_point(shard_map.layout, source, stored)


def _check_target_empty(alias: str, tables: list[TableSpec]) -> None:
    """The new primary must not hold rows of the group already (a split never overwrites)."""
    conn = connections[alias]
    try:
        with conn.cursor() as cursor:
            existing = set(conn.introspection.table_names(cursor))
            for spec in tables:
                if spec.table in existing:
                    cursor.execute(f"SELECT 1 FROM {conn.ops.quote_name(spec.table)} LIMIT 1")
                    if cursor.fetchone():
                        raise SplitError(
                            f"Alias {alias!r} already holds rows in {spec.table}; a split's "
                            "new primary must be empty."
                        )
    except SplitError:
        raise
    except Exception as exc:  # an unreachable database is a clear error too
        raise DatabaseUnusable(
            f"Cannot reach the new primary {alias!r}: {_reason(exc)}. Nothing was changed."
        ) from exc


def _check_new_aliases(primary: str, replicas: Sequence[str], catalog: str) -> None:
    """The new shard's aliases are configured, distinct, unused and not the catalog."""
    for alias in (primary, *replicas):
        if alias not in settings.DATABASES:
            raise SplitError(f"Alias {alias!r} is not in DATABASES.")
    if primary in replicas:
        raise SplitError(f"Alias {primary!r} cannot be the new shard's primary and a replica.")
    used = _aliases_in_use()
    for alias in (primary, *replicas):
        if alias in used:
            raise SplitError(f"Alias {alias!r} is already in use by shard {used[alias]}.")
    if primary == catalog:
        raise SplitError(f"Alias {primary!r} is the catalog; use a database of its own.")


def _check_new_replicas(primary: str, replicas: Sequence[str]) -> None:
    """Each replica of the new shard mirrors its primary and answers (``probe``)."""
    for replica in replicas:
        mirror = (settings.DATABASES[replica].get("TEST") or {}).get("MIRROR")
        if mirror != primary:
            raise SplitError(
                f"Replica {replica!r} does not replicate {primary!r}: its TEST['MIRROR'] is "
                f"{mirror!r} (check django_shards.E007)."
            )
        health = probe(replica, "replica", wait=get_config().max_replica_lag_seconds)
        if not health.healthy:
            raise DatabaseUnusable(
                f"Replica {replica!r} of the new shard is not usable: {health.problem}. "
                "Nothing was changed."
            )


def plan_split(
    group: str,
    source: str,
    target: str,
    primary: str,
    replicas: list[str] | tuple[str, ...] = (),
    at: Any = None,
) -> SplitPlan:
    """Validate a split of ``source`` into a new shard ``target`` and compute the new map."""
    config = get_config()
    if group not in config.groups:
        known = ", ".join(config.groups) or "none"
        raise SplitError(f"Unknown group {group!r} (groups: {known}).")
    base = get_map(group)
    owners = set(base.layout.shard_names())
    if source not in base.shards or source not in owners:
        raise SplitError(
            f"Group {group!r} has no shard {source!r} that owns keys "
            f"(shards: {', '.join(sorted(owners))})."
        )
    if target in base.shards:
        raise SplitError(f"Group {group!r} already has a shard named {target!r}.")
    _check_new_aliases(primary, replicas, config.catalog)
    _check_new_replicas(primary, replicas)
    tables = group_tables(group)
    _check_target_empty(primary, tables)
    strategy = base.strategy
    if at is not None and not strategy.splits_at_key:
        raise SplitError(
            f"--at only applies to range groups; group {group!r} uses {strategy.name!r}, "
            "whose split halves the source shard."
        )
    if at is None:
        at = default_split_point(base, source, tables)
    if at is not None:
        try:
            if strategy.shard_for_key(base.layout, at) != source:
                raise SplitError(f"--at {at!r} is not a key of shard {source!r}.")
        except NoShardForKey:
            raise SplitError(f"--at {at!r} is outside every shard's range.") from None
    # the strategy validates the rest (e.g. at strictly inside the interval; modulo refuses)
    new_layout = strategy.split(base.layout, source, target, at)
    return SplitPlan(
        group=group,
        source=source,
        target=Shard(target, primary, tuple(replicas)),
        at=at,
        base=base,
        new_layout=new_layout,
        tables=tables,
    )
