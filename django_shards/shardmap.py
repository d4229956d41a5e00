"""The versioned shard map of each group, its lease, and catalog access.

Every version of a group's map lives in the catalog table
:class:`~django_shards.models.ShardMapVersion`: version 1 is recorded from settings by the
first ``migrate`` (see :mod:`django_shards.catalog`), splits write the later ones, and each
decodes with the strategy and options it stored. Only a group with nothing recorded yet
routes by its settings. A process holds each map under a lease: a map older than
``MAP_LEASE_SECONDS`` is re-read from the catalog before it routes anything, so a cutover
that waits one full lease is seen by everyone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from django.core.signals import setting_changed
from django.db import DatabaseError, connections, transaction
from django.dispatch import receiver

from django_shards.conf import WATCHED_SETTINGS, GroupSettings, Shard, get_config
from django_shards.exceptions import ShardingError, ShardMoving, ShardUnavailable, UnknownShard
from django_shards.strategies.base import Layout, Strategy, load_strategy

logger = logging.getLogger("django_shards")


@dataclass(frozen=True)
class Freeze:
    """Keys moving from ``source`` to ``target`` (a split's cutover): writes are refused."""

    source: str
    target: str
    layout: Layout  # the layout after the split


@dataclass(frozen=True, eq=False)
class ShardMap:
    """One version of a group's assignment of points to shards."""

    group: str
    version: int
    strategy: Strategy
    layout: Layout
    shards: Mapping[str, Shard]  # every shard the map knows, by name, in layout order
    freezes: tuple[Freeze, ...] = ()
    #: why this map could not be confirmed within its lease (the catalog failed), or None;
    #: a stale map still routes reads, and refuses writes (ShardUnavailable)
    stale: str | None = None

    def check_confirmed(self) -> None:
        """Raise ``ShardUnavailable`` if the map is stale: a split may have moved keys since
        it was read, so a write routed by it could land on a shard that no longer owns them."""
        if self.stale is not None:
            raise ShardUnavailable(
                f"The map of group {self.group!r} could not be re-read from the catalog "
                f"({self.stale}); writes are refused until it answers, since a split may have "
                "moved keys meanwhile. Reads carry on with the last map. Retry in a moment."
            )

    def moving(self, key: Any) -> Freeze | None:
        """The freeze ``key`` is under (a write to it must wait), or None."""
        for freeze in self.freezes:
            if self.strategy.shard_for_key(freeze.layout, key) == freeze.target and (
                self.strategy.shard_for_key(self.layout, key) == freeze.source
            ):
                return freeze
        return None

    def check_writable(self, key: Any) -> None:
        """Raise ``ShardMoving`` if ``key`` is frozen by a split's cutover
        (``ShardUnavailable`` if the map itself is stale)."""
        if self.stale is not None:
            self.check_confirmed()
        if self.freezes and (freeze := self.moving(key)) is not None:
            raise ShardMoving(
                f"Key {key!r} of group {self.group!r} is moving from shard {freeze.source!r} "
                f"to {freeze.target!r} (a split is cutting over); the write was not made. "
                "It is safe to retry in a moment."
            )

    def shard_for_key(self, key: Any) -> Shard:
        """The shard owning ``key``. Raises ``NoShardForKey``."""
        return self.shards[self.strategy.shard_for_key(self.layout, key)]

    def shards_for_range(
        self, lo: Any, hi: Any, lo_inclusive: bool = True, hi_inclusive: bool = False
    ) -> list[Shard] | None:
        """Shards that may hold keys in the interval, or None if the strategy can't tell."""
        names = self.strategy.shards_for_range(self.layout, lo, hi, lo_inclusive, hi_inclusive)
        if names is None:
            return None
        wanted = set(names)
        return [s for n, s in self.shards.items() if n in wanted]

    @cached_property
    def owning_shards(self) -> list[Shard]:
        """The shards that own part of the key space (what a fan-out visits)."""
        owners = set(self.layout.shard_names())
        return [s for n, s in self.shards.items() if n in owners]

    def shard_named(self, name: str) -> Shard:
        try:
            return self.shards[name]
        except KeyError:
            known = ", ".join(self.shards) or "none"
            raise UnknownShard(
                f"Group {self.group!r} has no shard named {name!r} (shards: {known})."
            ) from None

    @cached_property
    def _by_alias(self) -> dict[str, Shard]:
        return {alias: s for s in self.shards.values() for alias in s.aliases}

    def shard_for_alias(self, alias: str | None) -> Shard | None:
        """The shard whose primary or replica is ``alias``, if any."""
        return self._by_alias.get(alias)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        return {
            "shards": [s.as_dict() for s in self.shards.values()],
            "layout": self.layout.to_json(),
        }


def strategy_path_of(strategy: Strategy) -> str:
    """The dotted path a stored version names its strategy by."""
    cls = type(strategy)
    return f"{cls.__module__}.{cls.__qualname__}"


def map_from_settings(group: GroupSettings) -> ShardMap:
    """Version 1 as the settings describe it (what the first ``migrate`` records)."""
    strategy = load_strategy(group.strategy, group.options)
    return ShardMap(
        group=group.name,
        version=1,
        strategy=strategy,
        layout=strategy.initial_layout(group.shards),
        shards={spec.name: spec.shard for spec in group.shards},
    )


def map_from_row(row: Any) -> ShardMap:
    """A stored version, decoded with the strategy and options it was stored with (never
    the settings': they may have changed since). Raises ``ShardingError`` when it cannot."""
    try:
        strategy = load_strategy(row.strategy, row.options or {})
        layout = strategy.load_layout(row.layout)
    except Exception as exc:  # any failure: say which version and why
        raise ShardingError(
            f"Version {row.version} of the map of group {row.group!r} in the catalog cannot "
            f"be decoded with its strategy {row.strategy!r}: {exc!r}."
        ) from exc
    shards = [Shard.from_dict(d) for d in row.shards]
    return ShardMap(
        group=row.group,
        version=row.version,
        strategy=strategy,
        layout=layout,
        shards={s.name: s for s in shards},
    )


def version_fields(shard_map: ShardMap) -> dict[str, Any]:
    """The catalog row fields that store ``shard_map`` (``ShardMapVersion``)."""
    return {
        "group": shard_map.group,
        "version": shard_map.version,
        "strategy": strategy_path_of(shard_map.strategy),
        "options": dict(shard_map.strategy.options),
        "shards": [s.as_dict() for s in shard_map.shards.values()],
        "layout": shard_map.layout.to_json(),
    }


class CatalogUnreadable(Exception):
    """The catalog failed (unreachable, or an error other than its tables being absent)."""


def read_catalog(model: Any, read: Any, empty: Any) -> Any:
    """``read()`` on the catalog; ``empty`` when the catalog has no such table yet (not
    migrated: version 1 from settings is then the map). Raises ``CatalogUnreadable`` on
    any other failure: the caller must not mistake a dead catalog for an empty one."""
    catalog = get_config().catalog
    conn = connections[catalog]
    try:
        if conn.in_atomic_block:
            with transaction.atomic(using=catalog):  # a savepoint: a failure stays local
                return read()
        return read()
    except DatabaseError as exc:
        error = exc
    try:
        with conn.cursor() as cursor:
            tables = conn.introspection.table_names(cursor)
    except DatabaseError:
        tables = None
    if tables is not None and model._meta.db_table not in tables:
        return empty
    raise CatalogUnreadable(f"catalog {catalog!r}: {error}") from error


def _frozen_jobs(group: str) -> list[Any]:
    """The split jobs of ``group`` whose moving keys are frozen (empty without a catalog)."""
    from django_shards.models import SplitJob

    qs = SplitJob.objects.using(get_config().catalog).filter(group=group, frozen=True)
    return read_catalog(SplitJob, lambda: list(qs), [])


def _latest_row(group: str) -> Any:
    """The newest stored version of ``group``, or None (also when the catalog has no tables)."""
    from django_shards.models import ShardMapVersion

    catalog = get_config().catalog
    qs = ShardMapVersion.objects.using(catalog).filter(group=group).order_by("-version")
    return read_catalog(ShardMapVersion, qs.first, None)


class MapRegistry:
    """The process's maps, each re-read from the catalog when its lease runs out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refreshing: dict[str, threading.Lock] = {}
        #: group -> (map, monotonic time its lease runs out)
        self._maps: dict[str, tuple[ShardMap, float]] = {}

    def get(self, group: str) -> ShardMap:
        """The current map of ``group`` (re-read from the catalog once the lease is over).

        One thread re-reads an expired map; the others keep using it for the few
        milliseconds that takes (the split's lease waits include a margin for this).
        """
        entry = self._maps.get(group)
        if entry is not None and time.monotonic() < entry[1]:
            return entry[0]
        refreshing = self._refreshing.setdefault(group, threading.Lock())
        if entry is not None and not refreshing.acquire(blocking=False):
            return entry[0]
        try:
            return self._reload(group)
        except CatalogUnreadable as exc:
            if entry is None:  # nothing to route by: a dead catalog is an error
                raise self._unavailable(group, exc) from exc
            # keep routing reads by the last map; it refuses writes until the catalog
            # answers (tried again after another lease)
            with self._lock:
                shard_map = entry[0]
                if shard_map.stale is None:
                    logger.warning(
                        "map of group %r not re-read (%s): writes refused until the catalog "
                        "answers",
                        group,
                        exc,
                    )
                    shard_map = replace(shard_map, stale=str(exc))
                self._maps[group] = (shard_map, time.monotonic() + get_config().map_lease_seconds)
                return shard_map
        finally:
            if entry is not None:
                refreshing.release()

    @staticmethod
    def _unavailable(group: str, exc: CatalogUnreadable) -> ShardUnavailable:
        return ShardUnavailable(
            f"The map of group {group!r} cannot be read from the catalog ({exc}); nothing "
            "is routed by a map that may be out of date."
        )

    def refresh(self, group: str) -> ShardMap:
        """Re-read ``group``'s map now and restart its lease.

        Raises ``ShardUnavailable`` when the catalog fails (its tables missing is not a
        failure: version 1 from settings is then the map).
        """
        try:
            return self._reload(group)
        except CatalogUnreadable as exc:
            raise self._unavailable(group, exc) from exc

    def _reload(self, group: str) -> ShardMap:
        config = get_config()
        settings_group = config.groups.get(group)
        # freezes first: a cutover committing between the two reads then leaves a stale
        # freeze on the new map (writes wait a lease), never the old map without its freeze
        jobs = _frozen_jobs(group)
        row = _latest_row(group)
        if row is None and settings_group is None:
            known = ", ".join(config.groups) or "none"
            raise ShardingError(f"Unknown shard group {group!r} (DJANGO_SHARDS GROUPS: {known}).")
        with self._lock:
            current = self._maps.get(group)
            if row is None:
                # nothing recorded yet (before the first migrate): the settings are the map
                assert settings_group is not None
                shard_map = current[0] if current and current[0].version == 1 else None
                shard_map = shard_map or map_from_settings(settings_group)
            elif current is not None and current[0].version == row.version:
                shard_map = current[0]
            else:
                shard_map = map_from_row(row)
            freezes = tuple(
                Freeze(j.source, j.target, shard_map.strategy.load_layout(j.new_layout))
                for j in jobs
            )
            if freezes != shard_map.freezes or shard_map.stale is not None:
                shard_map = replace(shard_map, freezes=freezes, stale=None)
            self._maps[group] = (shard_map, time.monotonic() + get_config().map_lease_seconds)
            return shard_map

    def reset_group(self, group: str) -> None:
        """Drop ``group``'s map so the next use reads the catalog."""
        with self._lock:
            self._maps.pop(group, None)

    def reset(self) -> None:
        with self._lock:
            self._maps.clear()


registry = MapRegistry()


@receiver(setting_changed, dispatch_uid="django_shards.shardmap.registry")
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        registry.reset()


def get_map(group: str) -> ShardMap:
    """The current map of ``group``."""
    return registry.get(group)


def write_version(group: str, shards: Iterable[Shard], layout: Layout, note: str = "") -> ShardMap:
    """Store the next version of ``group``'s map in the catalog and return it.

    Runs in one transaction on the catalog; a concurrent writer of the same version
    fails on the unique constraint rather than overwriting.
    """
    from django_shards.models import ShardMapVersion

    config = get_config()
    current = registry.refresh(group)
    new = ShardMap(
        group=group,
        version=current.version + 1,
        strategy=current.strategy,
        layout=layout,
        shards={s.name: s for s in shards},
    )
    with transaction.atomic(using=config.catalog):
        row = ShardMapVersion.objects.using(config.catalog).create(
            **version_fields(new), note=note[:255]
        )
    registry.reset_group(group)
    return map_from_row(row)
