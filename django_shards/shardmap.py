"""The versioned shard map of each group, its lease, and catalog access.

Every version of a group's map lives in the catalog table
:class:`~django_shards.models.ShardMapVersion`: version 1 is recorded from settings by the
first ``migrate`` (see :mod:`django_shards.catalog`), splits write the later ones, and each
decodes with the strategy and options it stored. Only a group with nothing recorded yet
routes by its settings. A process holds each map under a lease: a map older than
``MAP_LEASE_SECONDS`` is re-read from the catalog before it routes anything, so a cutover
that waits one full lease is seen by everyone. While a split of the group is in one of its
fence phases (``catching_up``, ``frozen``, ``verified``) the lease is
:data:`FENCE_POLL_SECONDS` instead, so a freeze or a cutover is seen within ~0.1 s; the
same catalog read that gives the freezes tells, so other times cost nothing more.

The same read also gives the shards that still hold rows they no longer own (a split's
source from its cutover until its clean-up is done, or a split crashed in between): a
fan-out restricts what it reads from them to the rows they own
(:meth:`ShardMap.ownership_q`), so every row is returned once.
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
from django.db import transaction
from django.db.models import Q
from django.dispatch import receiver

from django_shards import load
from django_shards.catalog_io import CatalogUnreadable, read_catalog
from django_shards.conf import WATCHED_SETTINGS, GroupSettings, Shard, get_config
from django_shards.exceptions import ShardingError, ShardMoving, ShardUnavailable, UnknownShard
from django_shards.strategies.base import Layout, Strategy, load_strategy

logger = logging.getLogger("django_shards")

#: the lease, in seconds, of a group's map while one of its splits is in a fence phase
#: (``FENCE_PHASES``): a freeze or cutover is then seen within this, not a whole lease
FENCE_POLL_SECONDS = 0.1
#: the split phases during which processes re-read the map every ``FENCE_POLL_SECONDS``
FENCE_PHASES = frozenset({"catching_up", "frozen", "verified"})
#: phases in which a split's source still holds the moved rows (after the cutover)
_HOLDING_PHASES = frozenset({"cut_over", "cleaned"})


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
    #: names of the shards whose tables still hold rows they no longer own: the source of
    #: a split from its cutover until its clean-up is done (also while such a split lies
    #: crashed); fan-outs read only the rows these shards own (:meth:`ownership_q`)
    holding_unowned: frozenset[str] = frozenset()
    #: True while a split of the group is in a fence phase (``FENCE_PHASES``), or a
    #: failover or switchover of one of its shards is unfinished: the map is then re-read
    #: every ``FENCE_POLL_SECONDS``
    fencing: bool = False

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
            load.count_event("shard_moving", self.group)
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

    def ownership_q(self, shard: str, field: str) -> Q | None:
        """The filter a fan-out adds to what it reads from ``shard``: the rows whose key
        (the model's key attname ``field``) the shard owns, when it holds rows it no longer
        owns (:attr:`holding_unowned`); None when it holds only its own rows, or when the
        strategy cannot say in SQL (:meth:`Strategy.ownership_q`)."""
        if shard not in self.holding_unowned:
            return None
        cache = self._ownership_filters
        try:
            return cache[shard, field]
        except KeyError:
            pass
        q = self.strategy.ownership_q(self.layout, shard, field)
        if q is None:
            logger.warning(
                "strategy %s of group %r cannot select a shard's own rows in SQL: fan-outs "
                "may return the rows shard %r still holds after a split twice until its "
                "clean-up ends",
                self.strategy.name,
                self.group,
                shard,
            )
        cache[shard, field] = q
        return q

    @cached_property
    def _ownership_filters(self) -> dict[tuple[str, str], Q | None]:
        return {}

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


def _active_jobs(group: str) -> list[Any]:
    """The split jobs of ``group`` in progress or frozen, in one query (empty without a
    catalog): the freezes, the fence and the shards holding moved rows all come from them."""
    from django_shards.models import SplitJob

    qs = (
        SplitJob.objects.using(get_config().catalog)
        .filter(Q(frozen=True) | Q(phase__in=SplitJob.ACTIVE_PHASES), group=group)
        .only("id", "source", "target", "phase", "frozen", "new_layout")
    )
    return read_catalog(SplitJob, lambda: list(qs), [])


def _latest_row(group: str) -> Any:
    """The newest stored version of ``group``, or None (also when the catalog has no tables).
    Its ``failing_over`` says, in the same query, whether a failover or switchover of one
    of the group's shards is unfinished: processes then re-read the map every
    ``FENCE_POLL_SECONDS``, so a new primary is used within that."""
    from django.db.models import Exists, OuterRef

    from django_shards.models import FailoverJob, ShardMapVersion

    catalog = get_config().catalog
    unfinished = FailoverJob.objects.filter(
        group=OuterRef("group"), phase__in=FailoverJob.ACTIVE_PHASES
    )
    qs = (
        ShardMapVersion.objects.using(catalog)
        .filter(group=group)
        .annotate(failing_over=Exists(unfinished))
        .order_by("-version")
    )
    return read_catalog(ShardMapVersion, qs.first, None)


class MapRegistry:
    """The process's maps, each re-read from the catalog when its lease runs out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refreshing: dict[str, threading.Lock] = {}
        #: group -> (map, monotonic time its lease runs out)
        self._maps: dict[str, tuple[ShardMap, float]] = {}
        #: split job id -> (its stored new layout, that layout decoded): a ring of many
        #: tokens takes milliseconds to build, and fences re-read the jobs ten times a second
        self._job_layouts: dict[int, tuple[Any, Layout]] = {}

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
        # jobs first: a cutover committing between the two reads then leaves a stale freeze
        # on the new map (writes wait a lease), never the old map without its freeze; and
        # the new map's layout being the job's new layout still says its source holds the
        # moved rows (the job read may show it before cut_over)
        jobs = _active_jobs(group)
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
            freezes, holding, fencing = self._split_state(shard_map, jobs)
            fencing = fencing or bool(getattr(row, "failing_over", False))
            if (
                freezes != shard_map.freezes
                or holding != shard_map.holding_unowned
                or fencing != shard_map.fencing
                or shard_map.stale is not None
            ):
                shard_map = replace(
                    shard_map,
                    freezes=freezes,
                    holding_unowned=holding,
                    fencing=fencing,
                    stale=None,
                )
            lease = config.map_lease_seconds
            if fencing:
                lease = min(lease, FENCE_POLL_SECONDS)
            self._maps[group] = (shard_map, time.monotonic() + lease)
            return shard_map

    def _split_state(
        self, shard_map: ShardMap, jobs: list[Any]
    ) -> tuple[tuple[Freeze, ...], frozenset[str], bool]:
        """From ``group``'s active jobs: the freezes, the shards holding rows they no
        longer own, and whether a split is in a fence phase. Called under the lock."""
        freezes: list[Freeze] = []
        holding: set[str] = set()
        fencing = False
        for job in jobs:
            fencing = fencing or job.phase in FENCE_PHASES
            if job.phase in _HOLDING_PHASES:
                holding.add(job.source)
                if not job.frozen:
                    continue
            new_layout = self._job_layout(shard_map.strategy, job)
            if job.frozen:
                freezes.append(Freeze(job.source, job.target, new_layout))
            if job.phase not in _HOLDING_PHASES and shard_map.layout == new_layout:
                # the cutover committed between the job read and the map read (however
                # late the job read was: a busy process may pause between the two): the
                # new map says the keys moved, so the source holds them still
                holding.add(job.source)
        return tuple(freezes), frozenset(holding), fencing

    def _job_layout(self, strategy: Strategy, job: Any) -> Layout:
        cached = self._job_layouts.get(job.pk)
        if cached is not None and cached[0] == job.new_layout:
            return cached[1]
        layout = strategy.load_layout(job.new_layout)
        self._job_layouts[job.pk] = (job.new_layout, layout)
        return layout

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
