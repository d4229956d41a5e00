"""Health of primaries and replicas: reachable, read-only, replication lag, GTID positions.

Probes are cheap and cached: an alias is probed at most once per :data:`HEALTH_TTL_SECONDS`
per process. A replica that is unreachable, whose replication is stopped, whose lag is
unknown, or that lags more than ``MAX_REPLICA_LAG_SECONDS`` is not used for reads until a
later probe finds it healthy.

Replica lag needs no privilege (MariaDB). A probe of a replica reads its primary's
``@@gtid_binlog_pos`` (the one query it adds), and the process keeps, per primary, a short
history of those positions with the time each was seen. A replica whose ``@@gtid_slave_pos``
covers, in every GTID domain, the position its primary had at time ``t`` lags at most
``now - t``; covering the position just read means lag 0. A replica that covers none of
them has an unknown lag and is not used (``AliasHealth.lag_error`` says why). When the
history cannot tell (the first probe, or after a quiet spell) the probe waits up to
:data:`LAG_WAIT_SECONDS` for the replica to apply the position just read
(``MASTER_GTID_WAIT``, which needs no privilege either).

When the database user may run ``SHOW SLAVE STATUS`` (``SLAVE MONITOR``), its thread states
are used too, and the lag is the larger of ``Seconds_Behind_Master`` and the GTID bound.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.db import connections
from django.dispatch import receiver

from django_shards.conf import WATCHED_SETTINGS, get_config

logger = logging.getLogger("django_shards.health")

#: how long a probe's answer is trusted
HEALTH_TTL_SECONDS = 1.0
#: how long a replica probe may wait for the replica to apply its primary's current position
#: when the history of positions cannot tell its lag (the first probe, after a quiet spell)
LAG_WAIT_SECONDS = 0.05
#: how many positions of each primary are kept, for how long at most, and how far apart: a
#: position seen sooner than that after the newest one replaces it
POSITION_SAMPLES = 256
POSITION_HISTORY_SECONDS = 600.0
POSITION_SPACING_SECONDS = 0.1
#: how long a refused ``SHOW SLAVE STATUS`` is not tried again on an alias
SLAVE_STATUS_RETRY_SECONDS = 60.0
#: which server answers: a "replica" alias on its primary's own server lags by nothing
_SERVER = "CONCAT_WS(':', @@hostname, @@port, @@server_id)"
#: MySQL/MariaDB "access denied; you need the ... privilege"
_ER_SPECIFIC_ACCESS_DENIED = 1227


#: the error of an alias that the shard map names but ``DATABASES`` lacks (check E031)
NOT_IN_DATABASES = "not in DATABASES"


def is_configured(alias: str) -> bool:
    """True when ``alias`` is a key of ``DATABASES`` (as this process's connections see it)."""
    return alias in connections.settings


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
    lag_error: str | None = None  # replicas: why the lag is unknown (None: known, or SQLite)
    configured: bool = True  # False: the shard map names the alias, DATABASES lacks it

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
            # no replication information at all (e.g. SQLite): nothing says it is stale
            return self.sql_running is None and self.lag_error is None
        return self.lag_seconds <= get_config().max_replica_lag_seconds

    @property
    def problem(self) -> str | None:
        """A short sentence saying what is wrong, or None when healthy."""
        if not self.configured:
            return f"{NOT_IN_DATABASES} (the shard map names it; add it to settings.DATABASES)"
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
        elif self.lag_error is not None:
            return f"lag unknown: {self.lag_error}"
        elif self.sql_running is not None:
            return "lag unknown"
        return None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("checked_at")
        data["healthy"] = self.healthy
        data["problem"] = self.problem
        return data


def fetch_dict(cursor: Any) -> dict[str, Any] | None:
    """The cursor's next row as a dict by column name (``SHOW SLAVE STATUS``), or None."""
    row = cursor.fetchone()
    if row is None:
        return None
    return {d[0]: v for d, v in zip(cursor.description, row, strict=True)}


def _seconds(value: float) -> float:
    """A lag bound for people: rounded up to a tenth of a second."""
    return math.ceil(round(value * 10, 6)) / 10


@dataclass
class _Sample:
    """A primary's binlog position, seen unchanged from ``first_seen`` to ``last_seen``."""

    first_seen: float
    last_seen: float
    position: str
    parsed: dict[int, int]


class PositionHistory:
    """The binlog positions one primary had, with when they were seen (monotonic time).

    Positions only grow, so a replica that applied one sample's position applied every
    older one too. Not thread-safe: :class:`HealthMonitor` holds its lock around it.
    """

    def __init__(self) -> None:
        self.samples: deque[_Sample] = deque()

    def add(self, position: str, now: float) -> _Sample:
        """Record that the primary's position was ``position`` at ``now``."""
        parsed = parse_position(position)
        last = self.samples[-1] if self.samples else None
        if last is not None and last.parsed == parsed:
            last.last_seen = now  # no commit since: covering it now proves more
            return last
        sample = _Sample(now, now, position, parsed)
        if last is not None and now - last.first_seen < POSITION_SPACING_SECONDS:
            self.samples.pop()  # a new object: a probe holding the old one must not see it change
        self.samples.append(sample)
        while len(self.samples) > POSITION_SAMPLES or (
            len(self.samples) > 1 and now - self.samples[0].last_seen > POSITION_HISTORY_SECONDS
        ):
            self.samples.popleft()
        return sample

    def newest_covered(self, applied: dict[int, int]) -> _Sample | None:
        """The newest sample whose position ``applied`` includes in every domain."""
        for sample in reversed(self.samples):
            if _covers(applied, sample.parsed):
                return sample
        return None

    def oldest_missed(self, applied: dict[int, int]) -> _Sample | None:
        """The oldest sample whose position ``applied`` lacks (in some domain)."""
        for sample in self.samples:
            if not _covers(applied, sample.parsed):
                return sample
        return None


def _covers(applied: dict[int, int], wanted: dict[int, int]) -> bool:
    return all(applied.get(domain, -1) >= seq for domain, seq in wanted.items())


def primary_of(replica: str) -> str | None:
    """The primary alias ``replica`` replicates: from the shards in settings, else from its
    ``TEST["MIRROR"]`` (which check E007 requires to be the primary, so a replica of a shard
    that a split added is found too)."""
    for group in get_config().groups.values():
        for spec in group.shards:
            if replica in spec.shard.replicas:
                return spec.shard.primary
    test = settings.DATABASES.get(replica, {}).get("TEST") or {}
    mirror = test.get("MIRROR")
    return mirror if isinstance(mirror, str) and mirror in settings.DATABASES else None


class HealthMonitor:
    """Process-wide cache of probes, refreshed when older than :data:`HEALTH_TTL_SECONDS`,
    and the history of each primary's positions that replica lag is measured against."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._health: dict[str, AliasHealth] = {}
        self._positions: dict[str, str] = {}  # replica -> last applied GTID position seen
        self._history: dict[str, PositionHistory] = {}  # primary alias -> its positions
        self._lag_fine: dict[str, bool] = {}  # replica -> its last probe found its lag in limits
        #: replica -> monotonic time until which its cached probe says it is healthy: the
        #: routed read's test, without a call (kept with the cache, cleared with it)
        self.healthy_until: dict[str, float] = {}
        self._no_slave_status: dict[str, float] = {}  # alias -> when SHOW SLAVE STATUS failed
        self._servers: dict[str, str] = {}  # alias -> the server it last answered from

    def get(
        self, alias: str, role: str = "replica", max_age: float = HEALTH_TTL_SECONDS
    ) -> AliasHealth:
        """The cached health of ``alias``, probing it if the cache is older than ``max_age``."""
        cached = self._health.get(alias)
        if cached is not None and time.monotonic() - cached.checked_at < max_age:
            return cached
        health = self.probe(alias, role)
        with self._lock:
            self._health[alias] = health
            if health.gtid_position is not None and role == "replica":
                self._positions[alias] = health.gtid_position
            if role == "replica" and health.healthy:
                self.healthy_until[alias] = health.checked_at + HEALTH_TTL_SECONDS
            else:
                self.healthy_until.pop(alias, None)
        return health

    def cached(self) -> dict[str, AliasHealth]:
        """A copy of the cached probes by alias; nothing is probed (for the metrics)."""
        with self._lock:
            return dict(self._health)

    def probe(self, alias: str, role: str, wait: float | None = None) -> AliasHealth:
        """Probe ``alias`` now, on this thread's connection. Never raises.

        ``wait``: how long a replica may take to apply its primary's current position
        before its lag is judged (default: a short wait, only when its lag is not already
        known to be fine). Deliberate checks (a split's new replicas) pass more."""
        started = time.perf_counter()
        if not is_configured(alias):
            return AliasHealth(
                alias,
                role,
                False,
                error=NOT_IN_DATABASES,
                checked_at=time.monotonic(),
                configured=False,
            )
        conn = connections[alias]
        try:
            if conn.vendor != "mysql":
                with conn.cursor() as cursor:
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
            if role == "primary":
                return self._probe_primary(alias, started)
            return self._probe_replica(alias, started, wait)
        except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
            try:
                conn.close()
            except Exception as close_exc:  # noqa: BLE001 - already broken
                logger.debug("%s: closing its broken connection failed: %r", alias, close_exc)
            return AliasHealth(
                alias,
                role,
                False,
                error=str(exc) or type(exc).__name__,
                elapsed_ms=(time.perf_counter() - started) * 1000,
                checked_at=time.monotonic(),
            )

    def _probe_primary(self, alias: str, started: float) -> AliasHealth:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT @@read_only")  # alone: combined selects misreport it
            read_only = bool(cursor.fetchone()[0])
            cursor.execute(f"SELECT @@gtid_binlog_pos, {_SERVER}")
            position, server = cursor.fetchone()
        self._record(alias, position or "", server, time.monotonic())
        return AliasHealth(
            alias,
            "primary",
            True,
            read_only=read_only,
            gtid_position=position,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            checked_at=time.monotonic(),
        )

    def _record(self, primary: str, position: str, server: str, now: float) -> _Sample:
        with self._lock:
            self._servers[primary] = server
            history = self._history.setdefault(primary, PositionHistory())
            return history.add(position, now)

    def _sample_primary(self, primary: str) -> _Sample | None:
        """The primary's position now (recorded in its history), or None if unreadable."""
        try:
            with connections[primary].cursor() as cursor:
                cursor.execute(f"SELECT @@gtid_binlog_pos, {_SERVER}")
                position, server = cursor.fetchone()
        except Exception as exc:  # noqa: BLE001 - the replica's probe must not fail for it
            logger.debug("primary %s: its GTID position could not be read: %r", primary, exc)
            return None
        return self._record(primary, position or "", server, time.monotonic())

    def _wait_budget(self, replica: str, primary: str) -> float:
        """How long this probe may wait for the replica to apply the primary's position: only
        when the last position seen of the replica does not already prove it within the
        limit, and not after a probe that found it lagging or could not tell its lag (a
        stopped replica costs one wait, not one per probe)."""
        with self._lock:
            if not self._lag_fine.get(replica, True) or self._same_server(replica, primary):
                return 0.0
            seen = self._positions.get(replica)
            history = self._history.get(primary)
            if seen is not None and history is not None:
                covered = history.newest_covered(parse_position(seen))
                limit = get_config().max_replica_lag_seconds
                if covered is not None and time.monotonic() - covered.last_seen <= limit / 2:
                    return 0.0
        return LAG_WAIT_SECONDS

    def _same_server(self, replica: str, primary: str) -> bool:
        server = self._servers.get(replica)
        return server is not None and server == self._servers.get(primary)

    def _probe_replica(self, alias: str, started: float, wait: float | None) -> AliasHealth:
        primary = primary_of(alias)
        sample = None if primary is None else self._sample_primary(primary)
        lag_error = "no primary is known for it" if primary is None else None
        conn = connections[alias]
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@read_only")  # alone: combined selects misreport it
            read_only = bool(cursor.fetchone()[0])
            reached = False
            if sample is not None and primary is not None:
                if wait is None:
                    wait = self._wait_budget(alias, primary)
                # the wait's answer counts, not the position: a variable may be read first
                cursor.execute(
                    f"SELECT MASTER_GTID_WAIT(%s, %s), @@gtid_slave_pos, {_SERVER}",
                    [sample.position, wait],
                )
                waited, position, server = cursor.fetchone()
                reached = waited == 0
            else:
                cursor.execute(f"SELECT @@gtid_slave_pos, {_SERVER}")
                position, server = cursor.fetchone()
            status = self._slave_status(alias, cursor)
        now = time.monotonic()
        io = sql = behind = None
        if status is not None:
            io = status.get("Slave_IO_Running") == "Yes"
            sql = status.get("Slave_SQL_Running") == "Yes"
            value = status.get("Seconds_Behind_Master")
            behind = None if value is None else float(value)
        lag: float | None = None
        # A primary that cannot be read cannot serve the read either: the replica, the only
        # copy left, keeps serving with its lag unknown (the primary's probe reports it).
        if sample is not None and primary is not None:
            with self._lock:
                self._servers[alias] = server
                same_server = self._same_server(alias, primary)
                history = self._history.get(primary)
                applied = parse_position(position)
                covered = history.newest_covered(applied) if history is not None else None
                missed = history.oldest_missed(applied) if history is not None else None
            if same_server or reached or (covered is not None and covered is sample):
                lag = 0.0  # it has what the primary had a moment ago (or it is the primary)
            elif covered is not None:
                lag = _seconds(now - covered.last_seen)
            elif missed is not None:
                lag_error = (
                    f"it has not applied what {primary!r} had committed "
                    f"{_seconds(now - missed.first_seen):g}s ago "
                    f"(applied {position or 'nothing'}, primary then at {missed.position})"
                )
        if behind is not None:
            lag = behind if lag is None else max(lag, behind)
        if lag is not None:
            lag_error = None
        with self._lock:
            self._lag_fine[alias] = lag is not None and lag <= get_config().max_replica_lag_seconds
        return AliasHealth(
            alias,
            "replica",
            True,
            read_only=read_only,
            lag_seconds=lag,
            io_running=io,
            sql_running=sql,
            gtid_position=position,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            checked_at=now,
            lag_error=lag_error,
        )

    def _slave_status(self, alias: str, cursor: Any) -> dict[str, Any] | None:
        """``SHOW SLAVE STATUS`` if this alias's user may run it (tried again after
        :data:`SLAVE_STATUS_RETRY_SECONDS` when refused), else None."""
        refused = self._no_slave_status.get(alias)
        if refused is not None and time.monotonic() - refused < SLAVE_STATUS_RETRY_SECONDS:
            return None
        try:
            cursor.execute("SHOW SLAVE STATUS")
            return fetch_dict(cursor)
        except Exception as exc:  # noqa: BLE001 - without it, GTID positions tell the lag
            code = getattr(exc.__cause__ or exc, "args", (None,))[:1]
            if code == (_ER_SPECIFIC_ACCESS_DENIED,):  # no SLAVE MONITOR privilege
                with self._lock:
                    self._no_slave_status[alias] = time.monotonic()
            else:
                logger.debug("%s: SHOW SLAVE STATUS failed: %r", alias, exc)
            return None

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
        except Exception as exc:  # noqa: BLE001 - the read path handles a broken replica
            logger.debug("replica %s: its GTID position could not be read: %r", replica, exc)
            return False
        self._positions[replica] = seen
        return gtid_covered(gtid, seen)

    def forget(self, alias: str | None = None) -> None:
        """Drop cached probes (all, or ``alias``'s): the next read probes again. With no
        alias, the primaries' position histories go too."""
        with self._lock:
            if alias is None:
                self._health.clear()
                self.healthy_until.clear()
                self._positions.clear()
                self._history.clear()
                self._lag_fine.clear()
                self._no_slave_status.clear()
                self._servers.clear()
            else:
                self._health.pop(alias, None)
                self.healthy_until.pop(alias, None)
                self._positions.pop(alias, None)
                self._history.pop(alias, None)
                self._lag_fine.pop(alias, None)
                self._no_slave_status.pop(alias, None)
                self._servers.pop(alias, None)


def probe(alias: str, role: str, *, wait: float | None = None) -> AliasHealth:
    """Probe ``alias`` now, on this thread's connection, bypassing the cache. Never raises.
    ``wait``: see :meth:`HealthMonitor.probe`."""
    return monitor.probe(alias, role, wait)


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
    return _covers(parse_position(applied), parse_position(wanted))


monitor = HealthMonitor()


@receiver(setting_changed, dispatch_uid="django_shards.health.monitor")
def _forget_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        monitor.forget()
