"""Health of primaries and replicas: reachable, read-only, replication lag, GTID positions.

Checks are cheap and cached: a replica is probed at most once per :data:`HEALTH_TTL_SECONDS`
per process (``SHOW SLAVE STATUS`` and two variables on MariaDB/MySQL). A replica that is
unreachable, whose SQL thread is stopped, or that lags more than
``MAX_REPLICA_LAG_SECONDS`` is not used for reads until a later probe finds it healthy.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from django.db import connections

from django_shards.conf import get_config

#: how long a probe's answer is trusted
HEALTH_TTL_SECONDS = 1.0


@dataclass(frozen=True)
class AliasHealth:
    """What one probe of one database alias found."""

    alias: str
    role: str  # "primary" or "replica"
    reachable: bool
    read_only: bool | None = None
    lag_seconds: float | None = None  # replicas: seconds behind the primary; None = unknown
    io_running: bool | None = None
    sql_running: bool | None = None
    gtid_position: str | None = None  # primary: binlog position; replica: applied position
    error: str | None = None
    elapsed_ms: float = 0.0
    checked_at: float = 0.0  # time.monotonic()

    @property
    def healthy(self) -> bool:
        """Reachable, and for a replica: replicating within ``MAX_REPLICA_LAG_SECONDS``."""
        if not self.reachable:
            return False
        if self.role == "primary":
            return not self.read_only
        if self.sql_running is False or self.io_running is False:
            return False
        if self.lag_seconds is None:
            return self.sql_running is None  # no replication information (e.g. SQLite)
        return self.lag_seconds <= get_config().max_replica_lag_seconds

    @property
    def problem(self) -> str | None:
        """A short sentence saying what is wrong, or None when healthy."""
        if not self.reachable:
            return f"unreachable: {self.error}"
        if self.role == "primary":
            return "primary is read-only" if self.read_only else None
        if self.sql_running is False or self.io_running is False:
            threads = []
            if self.io_running is False:
                threads.append("IO")
            if self.sql_running is False:
                threads.append("SQL")
            return f"replication stopped ({' and '.join(threads)} thread)"
        if self.lag_seconds is not None:
            limit = get_config().max_replica_lag_seconds
            if self.lag_seconds > limit:
                return f"lagging {self.lag_seconds:g}s (limit {limit:g}s)"
        elif self.sql_running is not None:
            return "lag unknown"
        return None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("checked_at")
        data["healthy"] = self.healthy
        data["problem"] = self.problem
        return data


def _fetch_dict(cursor: Any) -> dict[str, Any] | None:
    row = cursor.fetchone()
    if row is None:
        return None
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def probe(alias: str, role: str) -> AliasHealth:
    """Probe ``alias`` now, on this thread's connection. Never raises."""
    started = time.perf_counter()
    conn = connections[alias]
    try:
        with conn.cursor() as cursor:
            if conn.vendor != "mysql":
                cursor.execute("SELECT 1")
                cursor.fetchone()
                return AliasHealth(
                    alias,
                    role,
                    True,
                    read_only=False,
                    lag_seconds=0.0 if role == "replica" else None,
                    elapsed_ms=(time.perf_counter() - started) * 1000,
                    checked_at=time.monotonic(),
                )
            cursor.execute("SELECT @@read_only")  # alone: combined selects misreport it
            read_only = bool(cursor.fetchone()[0])
            if role == "primary":
                cursor.execute("SELECT @@gtid_binlog_pos")
                return AliasHealth(
                    alias,
                    role,
                    True,
                    read_only=read_only,
                    gtid_position=cursor.fetchone()[0],
                    elapsed_ms=(time.perf_counter() - started) * 1000,
                    checked_at=time.monotonic(),
                )
            cursor.execute("SELECT @@gtid_slave_pos")
            position = cursor.fetchone()[0]
            io = sql = lag = None
            try:
                cursor.execute("SHOW SLAVE STATUS")
                status = _fetch_dict(cursor)
            except Exception:  # noqa: BLE001 - no SLAVE MONITOR privilege: lag stays unknown
                status = None
            if status is not None:
                io = status.get("Slave_IO_Running") == "Yes"
                sql = status.get("Slave_SQL_Running") == "Yes"
                behind = status.get("Seconds_Behind_Master")
                lag = None if behind is None else float(behind)
            return AliasHealth(
                alias,
                role,
                True,
                read_only=read_only,
                lag_seconds=lag,
                io_running=io,
                sql_running=sql,
                gtid_position=position,
                elapsed_ms=(time.perf_counter() - started) * 1000,
                checked_at=time.monotonic(),
            )
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        try:
            conn.close()
        except Exception:  # noqa: BLE001
            pass
        return AliasHealth(
            alias,
            role,
            False,
            error=str(exc) or type(exc).__name__,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            checked_at=time.monotonic(),
        )


class HealthMonitor:
    """Process-wide cache of probes, refreshed when older than :data:`HEALTH_TTL_SECONDS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._health: dict[str, AliasHealth] = {}
        self._positions: dict[str, str] = {}  # replica -> last applied GTID position seen

    def get(
        self, alias: str, role: str = "replica", max_age: float = HEALTH_TTL_SECONDS
    ) -> AliasHealth:
        """The cached health of ``alias``, probing it if the cache is older than ``max_age``."""
        cached = self._health.get(alias)
        if cached is not None and time.monotonic() - cached.checked_at < max_age:
            return cached
        health = probe(alias, role)
        with self._lock:
            self._health[alias] = health
            if health.gtid_position is not None and role == "replica":
                self._positions[alias] = health.gtid_position
        return health

    def has_applied(self, replica: str, gtid: str) -> bool:
        """True if ``replica`` has applied ``gtid`` (a GTID or position), checked without
        waiting: first against the position last seen, then by reading it once now."""
        seen = self._positions.get(replica)
        if seen is not None and gtid_covered(gtid, seen):
            return True
        try:
            with connections[replica].cursor() as cursor:
                cursor.execute("SELECT @@gtid_slave_pos")
                seen = cursor.fetchone()[0]
        except Exception:  # noqa: BLE001 - the read path handles a broken replica
            return False
        self._positions[replica] = seen
        return gtid_covered(gtid, seen)

    def forget(self, alias: str | None = None) -> None:
        with self._lock:
            if alias is None:
                self._health.clear()
                self._positions.clear()
            else:
                self._health.pop(alias, None)
                self._positions.pop(alias, None)


def parse_position(position: str | None) -> dict[int, int]:
    """``"0-1-5,1-2-9"`` -> ``{0: 5, 1: 9}``: the highest sequence number per domain."""
    out: dict[int, int] = {}
    for part in (position or "").split(","):
        part = part.strip()
        if not part:
            continue
        domain, _server, seq = part.split("-")
        out[int(domain)] = max(out.get(int(domain), 0), int(seq))
    return out


def gtid_covered(wanted: str, applied: str | None) -> bool:
    """True when position ``applied`` includes every domain's sequence of ``wanted``."""
    have = parse_position(applied)
    return all(have.get(domain, -1) >= seq for domain, seq in parse_position(wanted).items())


monitor = HealthMonitor()
