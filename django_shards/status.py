"""The state of the cluster, gathered once for ``shard_status`` and the status page.

Per group: strategy, map version, each shard's aliases, what it owns (key ranges or ring
share), the health of every alias, rows per model (estimates from the database's
statistics by default, exact counts on request), its load over ``LOAD_WINDOW_SECONDS``
(:func:`django_shards.load.window`), balance (max/mean rows), hot shards (by rows or by
load) with a suggested split, and splits in progress. Never includes credentials.

Nothing here raises for a database that fails: a dead alias, a dead catalog, or an alias
that the shard map names but ``DATABASES`` lacks (a deploy that forgot it) is reported, as
a problem of that alias or of the catalog, with the rest of the report intact.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import DatabaseError, connections, models
from django.utils.connection import ConnectionDoesNotExist

from django_shards import load
from django_shards.catalog_io import CatalogUnreadable, read_catalog
from django_shards.conf import get_config
from django_shards.exceptions import NoShardForKey, ShardUnavailable, SplitError
from django_shards.health import AliasHealth, is_configured, monitor
from django_shards.keys import ShardKey, sharded_models
from django_shards.resharding.plan import default_split_point
from django_shards.shardmap import ShardMap, get_map, map_from_settings

#: a shard is hot by rows when it holds more than ``HOT_SHARD_FACTOR`` times the mean rows
#: of its group and at least this many rows (below it, imbalance is noise)
HOT_MIN_ROWS = 1000
#: a shard is hot by load when it serves more than ``HOT_SHARD_FACTOR`` times the mean
#: queries per second of its group and at least this many (reads + writes per second over
#: the window: below it, imbalance is noise)
HOT_MIN_QUERIES_PER_SECOND = 1.0
#: why a shard is hot, in ``ShardStatus.hot``
HOT_REASONS = ("rows", "load")


@dataclass
class ShardStatus:
    name: str
    primary: str
    replicas: list[str]
    owns: str
    share: float | None
    pending: bool  # known to the map but owning nothing yet (a split target)
    health: list[AliasHealth]
    rows: dict[str, int | None]  # model label -> rows (None: could not be read)
    rows_exact: bool
    #: why the shard is hot: "rows", "load", both, or none (empty: not hot)
    hot: list[str] = field(default_factory=list)
    #: its load over the window: reads_per_second, writes_per_second, share (of the
    #: group's queries); None when the catalog's load reports could not be read
    load: dict[str, float] | None = None
    #: a hot shard of a strategy that splits at a key: the key that halves its load
    suggested_split_at: Any = None
    suggestion: str | None = None  # a shard_split command line for a hot shard
    #: former primaries a failover replaced: in the map, never used by the application
    demoted: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int | None:
        if any(v is None for v in self.rows.values()):
            return None
        return sum(v for v in self.rows.values() if v is not None)

    @property
    def healthy(self) -> bool:
        return all(h.healthy for h in self.health)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["health"] = [h.as_dict() for h in self.health]
        data["total_rows"] = self.total_rows
        data["healthy"] = self.healthy
        return data


@dataclass
class GroupStatus:
    name: str
    strategy: str
    version: int
    models: list[str]
    shards: list[ShardStatus]
    splits: list[dict[str, Any]] = field(default_factory=list)
    #: the map this status was read from (not in ``as_dict``)
    shard_map: ShardMap | None = field(default=None, repr=False, compare=False)

    @property
    def balance(self) -> float | None:
        """max/mean of rows over the shards that own keys (1.0 is perfect)."""
        owning = [s.total_rows for s in self.shards if not s.pending]
        totals = [t for t in owning if t is not None]
        if not totals or len(totals) < len(owning):
            return None
        mean = statistics.fmean(totals)
        return None if mean == 0 else max(totals) / mean

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.shards) and not any(j["error"] for j in self.splits)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "strategy": self.strategy,
            "version": self.version,
            "models": self.models,
            "balance": self.balance,
            "healthy": self.healthy,
            "shards": [s.as_dict() for s in self.shards],
            "splits": self.splits,
        }


@dataclass
class ClusterStatus:
    catalog: str
    groups: list[GroupStatus]
    #: why the catalog could not be read (maps then shown as last known or from settings)
    catalog_error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.catalog_error is None and all(g.healthy for g in self.groups)

    @property
    def problems(self) -> list[str]:
        """One sentence per unhealthy alias, failed split, or hot shard."""
        out = []
        if self.catalog_error is not None:
            out.append(
                f"catalog {self.catalog!r} unreadable: {self.catalog_error} (maps shown may be "
                "out of date; writes to sharded models are refused)"
            )
        for group in self.groups:
            for shard in group.shards:
                for h in shard.health:
                    if h.problem:
                        out.append(f"{group.name}/{shard.name}: {h.alias} {h.problem}")
                if shard.hot:
                    out.append(
                        f"{group.name}/{shard.name}: hot shard ({hot_text(shard)}, over "
                        f"{get_config().hot_shard_factor:g}x the mean); suggested: "
                        f"{shard.suggestion}"
                    )
            for job in group.splits:
                if job["error"]:
                    out.append(
                        f"{group.name}: split {job['source']} -> {job['target']}: {job['error']}"
                    )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "catalog": self.catalog,
            "catalog_error": self.catalog_error,
            "healthy": self.healthy,
            "problems": self.problems,
            "groups": [g.as_dict() for g in self.groups],
        }


def _estimated_rows(alias: str, model: type[models.Model]) -> tuple[int | None, bool]:
    """(rows, exact): the database's statistics on MySQL/MariaDB, a count elsewhere."""
    if not is_configured(alias):
        return None, False
    conn = connections[alias]
    table = model._meta.db_table
    try:
        with conn.cursor() as cursor:
            if conn.vendor == "mysql":
                cursor.execute(
                    "SELECT TABLE_ROWS FROM information_schema.TABLES "
                    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
                    [table],
                )
                row = cursor.fetchone()
                return (None if row is None or row[0] is None else int(row[0])), False
            cursor.execute(f"SELECT COUNT(*) FROM {conn.ops.quote_name(table)}")
            return int(cursor.fetchone()[0]), True
    except DatabaseError:
        return None, False


def _exact_rows(alias: str, model: type[models.Model]) -> int | None:
    if not is_configured(alias):
        return None
    try:
        return model._base_manager.using(alias).count()
    except DatabaseError:
        return None


def hot_text(shard: ShardStatus) -> str:
    """Why ``shard`` is hot, in words: ``1200 rows; load 80.0% of the group's queries``."""
    parts = []
    if "rows" in shard.hot:
        parts.append(f"{shard.total_rows} rows")
    if "load" in shard.hot and shard.load is not None:
        rate = shard.load["reads_per_second"] + shard.load["writes_per_second"]
        parts.append(f"load {100 * shard.load['share']:.1f}% of the group's queries ({rate:.1f}/s)")
    return "; ".join(parts)


def _suggestion(group: str, shard_map: ShardMap, shard: str, at: Any) -> str:
    """A ``shard_split`` command line for a hot shard, with ``--at`` when a split key is
    known (without it, ``shard_split`` picks its own default point)."""
    strategy = shard_map.strategy
    if strategy.split_refusal is not None:
        return strategy.split_refusal
    base = f"manage.py shard_split {group} {shard} --to NEW --primary ALIAS"
    return base if at is None else f"{base} --at {at}"


def _splits_at(shard_map: ShardMap, shard: str, at: Any) -> bool:
    """True when a split of ``shard`` at ``at`` is possible (strictly inside its range)."""
    try:
        shard_map.strategy.split(shard_map.layout, shard, "\x00probe", at)
    except (SplitError, TypeError, ValueError):
        return False
    return True


def suggested_split_point(
    shard_map: ShardMap,
    shard: str,
    sample: list[tuple[Any, float]],
    key: ShardKey | None,
    *,
    read_rows: bool = True,
) -> Any:
    """The key that halves ``shard``'s load, for a strategy that splits at a key (None for
    the others): the weighted median of the keys sampled from its queries
    (:func:`django_shards.load.weighted_median`), decoded to the key type, keeping only
    keys the shard still owns; when that median is the shard's lower bound (no split
    there), the next sampled key above it. Without a usable sample: the median key stored
    (read from the shard only when ``read_rows``), else None."""
    strategy = shard_map.strategy
    if not strategy.splits_at_key or strategy.split_refusal is not None:
        return None
    owned = []
    for point, weight in sample:
        if key is None:
            break
        try:
            value = key.normalize(point)
            if strategy.shard_for_key(shard_map.layout, value) == shard:
                owned.append((value, weight))
        except (NoShardForKey, TypeError, ValueError, DjangoValidationError):
            continue  # sampled under an older map, or not a key of this type
    at = load.weighted_median(owned)
    if at is not None and not _splits_at(shard_map, shard, at):
        above = sorted({v for v, _ in owned if v > at})
        at = next((v for v in above if _splits_at(shard_map, shard, v)), None)
    if at is not None or not read_rows:
        return at
    try:
        return default_split_point(shard_map, shard)
    except (SplitError, DatabaseError, ConnectionDoesNotExist):
        return None


def _read_load(group: str) -> dict[str, load.ShardLoad]:
    """``load.window(group)`` (empty before the catalog is migrated); raises
    ``CatalogUnreadable`` when the catalog fails."""
    from django_shards.models import LoadReport

    return read_catalog(LoadReport, lambda: load.window(group), {})


def _mark_hot(
    group: str,
    shard_map: ShardMap,
    shards: list[ShardStatus],
    loads: dict[str, load.ShardLoad] | None,
    *,
    key: ShardKey | None,
    read_rows: bool,
) -> None:
    """Set ``hot``, ``suggested_split_at`` and ``suggestion`` of ``shards`` (of one group):
    hot by rows over ``HOT_SHARD_FACTOR`` x the mean rows (and at least ``HOT_MIN_ROWS``),
    by load over ``HOT_SHARD_FACTOR`` x the mean queries per second (and at least
    ``HOT_MIN_QUERIES_PER_SECOND``), over the shards that own keys."""
    factor = get_config().hot_shard_factor
    owning = [s for s in shards if not s.pending]
    totals = [s.total_rows for s in owning if s.total_rows is not None]
    mean_rows = statistics.fmean(totals) if totals else 0.0
    rates = {s.name: _rate(s.load) for s in owning}
    mean_rate = statistics.fmean(rates.values()) if rates else 0.0
    for s in owning:
        total = s.total_rows or 0
        if mean_rows and total >= HOT_MIN_ROWS and total > factor * mean_rows:
            s.hot.append("rows")
        rate = rates[s.name]
        if mean_rate and rate >= HOT_MIN_QUERIES_PER_SECOND and rate > factor * mean_rate:
            s.hot.append("load")
        if s.hot:
            sample = loads[s.name].weighted_sample if loads and s.name in loads else []
            s.suggested_split_at = suggested_split_point(
                shard_map, s.name, sample, key, read_rows=read_rows
            )
            s.suggestion = _suggestion(group, shard_map, s.name, s.suggested_split_at)


def _rate(shard_load: dict[str, float] | None) -> float:
    if not shard_load:
        return 0.0
    return shard_load["reads_per_second"] + shard_load["writes_per_second"]


def collect_status(groups: list[str] | None = None, *, exact_counts: bool = False) -> ClusterStatus:
    """Probe every alias of the named groups (all when None) and count their rows."""
    config = get_config()
    from django_shards.models import SplitJob

    names = list(config.groups) if not groups else groups
    probes: dict[tuple[str, str], AliasHealth] = {}

    def _probe(alias: str, role: str) -> AliasHealth:
        """Each alias is probed once per status, however many groups it serves."""
        if (alias, role) not in probes:
            probes[alias, role] = monitor.get(alias, role, max_age=0)
        return probes[alias, role]

    by_group: dict[str, list[ShardKey]] = {}
    for sk in sharded_models():
        if sk.model._meta.proxy:
            continue
        by_group.setdefault(sk.group, []).append(sk)
    out = []
    catalog_error = None
    for name in names:
        try:
            shard_map = get_map(name)
        except ShardUnavailable as exc:  # no map read yet and the catalog is down
            catalog_error = str(exc.__cause__ or exc)
            shard_map = map_from_settings(config.groups[name])
        if shard_map.stale is not None:
            catalog_error = shard_map.stale
        keys = sorted(by_group.get(name, []), key=lambda k: k.model._meta.label)
        owners = set(shard_map.layout.shard_names())
        describe = shard_map.strategy.describe(shard_map.layout)
        share = shard_map.strategy.share(shard_map.layout)
        shards = []
        for shard in shard_map.shards.values():
            health = [_probe(shard.primary, "primary")]
            health += [_probe(r, "replica") for r in shard.replicas]
            rows: dict[str, int | None] = {}
            exact = True
            for sk in keys:
                if exact_counts:
                    rows[sk.model._meta.label] = _exact_rows(shard.primary, sk.model)
                else:
                    value, is_exact = _estimated_rows(shard.primary, sk.model)
                    rows[sk.model._meta.label] = value
                    exact = exact and is_exact
            shards.append(
                ShardStatus(
                    name=shard.name,
                    primary=shard.primary,
                    replicas=list(shard.replicas),
                    demoted=list(shard.demoted),
                    owns=describe.get(shard.name, "nothing yet"),
                    share=share.get(shard.name),
                    pending=shard.name not in owners,
                    health=health,
                    rows=rows,
                    rows_exact=exact,
                )
            )
        try:
            loads = _read_load(name)
        except CatalogUnreadable as exc:
            loads = None
            catalog_error = catalog_error or str(exc)
        idle = load.ShardLoad(0.0, 0.0, 0.0, 0, 0)
        for s in shards:
            s.load = None if loads is None else loads.get(s.name, idle).as_dict()
        _mark_hot(
            name,
            shard_map,
            shards,
            loads,
            key=keys[0] if keys else None,
            read_rows=exact_counts,
        )
        active = SplitJob.objects.using(config.catalog).filter(
            group=name, phase__in=SplitJob.ACTIVE_PHASES
        )
        try:
            found = read_catalog(SplitJob, lambda qs=active: list(qs), [])
        except CatalogUnreadable as exc:
            found = []
            catalog_error = catalog_error or str(exc)
        jobs = [split_status(j, shard_map) for j in found]
        out.append(
            GroupStatus(
                name=name,
                strategy=shard_map.strategy.name,
                version=shard_map.version,
                models=[k.model._meta.label for k in keys],
                shards=shards,
                splits=jobs,
                shard_map=shard_map,
            )
        )
    return ClusterStatus(catalog=config.catalog, groups=out, catalog_error=catalog_error)


def split_status(job: Any, shard_map: ShardMap) -> dict[str, Any]:
    """A split in progress as ``shard_status --json`` shows it: its phase, mode, copy
    progress and, online, its catch-up lag in transactions (``lag_events``, read live
    against the source's ``@@gtid_binlog_pos``) and seconds (None when unknown)."""
    progress = job.progress or {}
    copies = progress.get("copy", {})
    catch_up = progress.get("catch_up", {})
    out = {
        "id": job.pk,
        "source": job.source,
        "target": job.target,
        "phase": job.phase,
        "mode": progress.get("mode") or "frozen",
        "frozen": job.frozen,
        "copy": {
            "rows": sum(c.get("rows", 0) for c in copies.values()),
            "tables_done": sum(1 for c in copies.values() if c.get("complete")),
            "tables": len(copies),
        },
        "gtid": progress.get("gtid"),
        "lag_events": None,
        "lag_seconds": None,
        "error": job.error,
        "updated": job.updated.isoformat(),
    }
    if out["mode"] == "online" and progress.get("gtid") and job.phase in _STREAMING:
        out["lag_events"], out["lag_seconds"] = _catch_up_lag(job, shard_map, catch_up)
    return out


#: the phases in which an online split reads the source's binlog
_STREAMING = ("copying", "catching_up", "frozen", "verified", "cut_over")


def _catch_up_lag(job: Any, shard_map: ShardMap, catch_up: dict[str, Any]) -> tuple[Any, Any]:
    """(transactions, seconds) the new shard is behind the source; (None, None) when the
    source does not answer."""
    from django_shards.resharding.stream import transactions_behind

    source = shard_map.shards.get(job.source)
    if source is None or not is_configured(source.primary):
        return None, None
    try:
        with connections[source.primary].cursor() as cursor:
            cursor.execute("SELECT @@gtid_binlog_pos")
            (current,) = cursor.fetchone()
    except DatabaseError:
        return None, None
    behind = transactions_behind(str(job.progress["gtid"]), current or "")
    if not behind:
        return 0, 0.0
    recorded_at = catch_up.get("at")
    since = max(0.0, time.time() - recorded_at) if recorded_at else None
    lag = catch_up.get("lag_seconds") or 0.0
    return behind, None if since is None else round(lag + since, 3)
