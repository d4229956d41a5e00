"""The state of the cluster, gathered once for ``shard_status`` and the status page.

Per group: strategy, map version, each shard's aliases, what it owns (key ranges or ring
share), the health of every alias, rows per model (estimates from the database's
statistics by default, exact counts on request), balance (max/mean rows), hot shards with
a suggested split, and splits in progress. Never includes credentials.

Nothing here raises for a database that fails: a dead alias, a dead catalog, or an alias
that the shard map names but ``DATABASES`` lacks (a deploy that forgot it) is reported, as
a problem of that alias or of the catalog, with the rest of the report intact.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import DatabaseError, connections, models
from django.utils.connection import ConnectionDoesNotExist

from django_shards.conf import get_config
from django_shards.exceptions import ShardUnavailable, SplitError
from django_shards.health import AliasHealth, is_configured, monitor
from django_shards.keys import ShardKey, sharded_models
from django_shards.resharding.plan import default_split_point
from django_shards.shardmap import (
    CatalogUnreadable,
    ShardMap,
    get_map,
    map_from_settings,
    read_catalog,
)

#: a shard holding more than this many times the mean rows of its group is "hot"
HOT_FACTOR = 1.5
#: ... and holds at least this many rows (below it, imbalance is noise)
HOT_MIN_ROWS = 1000


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
    hot: bool = False
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
                        f"{group.name}/{shard.name}: hot shard ({shard.total_rows} rows, "
                        f"over {HOT_FACTOR:g}x the mean); suggested: {shard.suggestion}"
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


def _suggestion(group: str, shard_map: ShardMap, shard: str, exact: bool) -> str:
    """A ``shard_split`` command line for a hot shard, with ``--at`` where the split's
    default point is one (read only with exact counts: it reads the shard's keys)."""
    strategy = shard_map.strategy
    if strategy.split_refusal is not None:
        return strategy.split_refusal
    base = f"manage.py shard_split {group} {shard} --to NEW --primary ALIAS"
    if not exact:
        return base  # shard_split without --at picks the same default point itself
    try:
        at = default_split_point(shard_map, shard)
    except (SplitError, DatabaseError, ConnectionDoesNotExist):
        return base
    return base if at is None else f"{base} --at {at}"


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
        totals = [s.total_rows for s in shards if not s.pending and s.total_rows is not None]
        mean = statistics.fmean(totals) if totals else 0
        for s in shards:
            total = s.total_rows or 0
            if not s.pending and mean and total >= HOT_MIN_ROWS and total > HOT_FACTOR * mean:
                s.hot = True
                s.suggestion = _suggestion(name, shard_map, s.name, exact_counts)
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
