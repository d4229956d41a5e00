"""Replica choice and health.

A replica that fails to connect or errors is skipped for a cool-down and retried later;
when no replica is usable the primary serves. ``REPLICA_SELECTION`` picks among usable
replicas: ``round_robin``, ``random`` or ``fastest`` (lowest observed latency).

A replica alias that is its primary's in-memory SQLite database (``TEST={"MIRROR": ...}``
with Django's default test databases) reads without table locks, so a user's test suite
works with the settings the quickstart gives (see :func:`read_mirror_without_locks`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from django.core.signals import setting_changed
from django.db import InterfaceError, OperationalError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from django_shards.conf import WATCHED_SETTINGS, Shard, get_config
from django_shards.exceptions import ShardUnavailable
from django_shards.health import monitor

if TYPE_CHECKING:
    from django.db.backends.sqlite3.base import DatabaseWrapper as SQLiteDatabaseWrapper

logger = logging.getLogger("django_shards.replicas")

#: seconds a failed replica is skipped before it is tried again
COOL_DOWN_SECONDS = 5.0
#: weight of a new latency sample in the moving average used by ``fastest``
LATENCY_ALPHA = 0.2


#: kinds of alias (ReplicaPool._kind): no health to read, health to read, not in DATABASES
_PLAIN, _MYSQL, _UNCONFIGURED = "plain", "mysql", "unconfigured"
PLAIN_KIND = _PLAIN  # for routing.read_alias, which inlines choose()'s first case

#: MySQL/MariaDB client and server errors that mean "this server is not answering"
_CONNECTION_ERRORS = {
    1040,
    1053,
    1077,
    1152,
    1158,
    1159,
    1160,
    1161,
    1927,
    2001,
    2002,
    2003,
    2004,
    2005,
    2006,
    2011,
    2012,
    2013,
    2026,
    2047,
    2048,
    2055,
}


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` says the database is unreachable or the connection broke, as
    opposed to a problem with the query (a bad column is an OperationalError too)."""
    if isinstance(exc, InterfaceError):
        return True
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__ or exc
    code = cause.args[0] if cause.args else None
    if isinstance(code, int):
        return code in _CONNECTION_ERRORS
    text = str(cause).lower()
    return any(
        marker in text
        for marker in ("unable to open", "disk i/o", "connection", "not a database", "timed out")
    )


def is_in_memory_mirror(connection: BaseDatabaseWrapper) -> bool:
    """True when ``connection`` is a test mirror that is its primary's in-memory SQLite
    database: Django's test runner gives a ``TEST={"MIRROR": primary}`` alias the primary's
    NAME, by default one shared-cache in-memory database."""
    if connection.vendor != "sqlite":
        return False
    settings = connection.settings_dict
    mirror = (settings.get("TEST") or {}).get("MIRROR")
    if (
        not mirror
        or mirror not in connections
        or not cast("SQLiteDatabaseWrapper", connection).is_in_memory_db()
    ):
        return False
    return settings["NAME"] == connections[mirror].settings_dict["NAME"]


@receiver(connection_created, dispatch_uid="django_shards.read_mirror_without_locks")
def read_mirror_without_locks(
    sender: type[BaseDatabaseWrapper], connection: BaseDatabaseWrapper, **kwargs: object
) -> None:
    """Open an in-memory test mirror in read-uncommitted mode.

    A shared-cache SQLite database locks tables, and a second connection that reads a table
    the first one has written in an open transaction fails at once with "database table is
    locked". Django's ``TestCase`` holds such a transaction on the primary for every test,
    opens one on each mirror too, and checks constraints through the mirror at teardown;
    replica reads run on the mirror's connection. In read-uncommitted mode the mirror takes
    no table locks, and so reads what the primary's connection sees: the test's rows.
    Runs once per new connection, never on the routed path.
    """
    if is_in_memory_mirror(connection):
        # on the driver's connection: not a query of the test (assertNumQueries)
        connection.connection.execute("PRAGMA read_uncommitted = 1")


#: MySQL's "the --read-only option prevents this statement": a primary being switched over
READ_ONLY_ERROR = 1290


def is_read_only_error(exc: BaseException) -> bool:
    """True when ``exc`` is a write refused because the server is read-only."""
    cause = exc.__cause__ or exc
    return bool(cause.args) and cause.args[0] == READ_ONLY_ERROR


@contextlib.contextmanager
def primary_errors(alias: str | None) -> Iterator[None]:
    """Turn "cannot reach the server" on a shard primary, and "the server is read-only"
    (a switchover or failover under way), into the retryable ``ShardUnavailable``."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        if alias is None or isinstance(exc, ShardUnavailable):
            raise
        if is_read_only_error(exc):
            raise ShardUnavailable(
                f"The primary {alias!r} of a shard is read-only (a switchover or failover "
                "of the shard is under way); the write was not made. Retry in a moment."
            ) from exc
        if not is_connection_error(exc):
            raise
        raise ShardUnavailable(f"The primary {alias!r} of a shard is unreachable: {exc}") from exc


class ReplicaPool:
    """Process-wide replica state: which are down, how fast each answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down_until: dict[str, float] = {}
        self._latency: dict[str, float] = {}
        self._turns: dict[str, itertools.count[int]] = {}
        self._kinds: dict[str, str] = {}  # alias -> _PLAIN, _MYSQL or _UNCONFIGURED

    def is_down(self, alias: str) -> bool:
        until = self._down_until.get(alias)
        if until is None:
            return False
        if time.monotonic() >= until:
            with self._lock:
                self._down_until.pop(alias, None)
            return False
        return True

    def mark_down(self, alias: str, error: BaseException | str | None = None) -> None:
        """Skip ``alias`` for :data:`COOL_DOWN_SECONDS` and drop its broken connection."""
        with self._lock:
            self._down_until[alias] = time.monotonic() + COOL_DOWN_SECONDS
        logger.warning("replica %s skipped for %.0fs: %s", alias, COOL_DOWN_SECONDS, error)
        try:
            connections[alias].close()
        except Exception as exc:  # noqa: BLE001 - the connection is already broken
            logger.debug("replica %s: closing its broken connection failed: %r", alias, exc)

    def observe(self, alias: str, seconds: float) -> None:
        """Record how long a read on ``alias`` took (for ``fastest``)."""
        old = self._latency.get(alias)
        self._latency[alias] = seconds if old is None else old + LATENCY_ALPHA * (seconds - old)

    def usable(self, alias: str) -> bool:
        """Not cooling down and (MariaDB/MySQL) healthy: reachable, replicating, within
        ``MAX_REPLICA_LAG_SECONDS`` (probed at most once a second). An alias missing from
        DATABASES (check E031) is never usable."""
        if self._down_until and self.is_down(alias):
            return False
        if time.monotonic() < monitor.healthy_until.get(alias, 0.0):
            return True  # probed healthy within HEALTH_TTL_SECONDS: no call needed
        kind = self._kinds.get(alias)
        if kind is None:
            kind = self._kind(alias)
        if kind is not _MYSQL:
            return kind is _PLAIN
        health = monitor.get(alias, "replica")
        if not health.reachable:
            self.mark_down(alias, health.error)
            return False
        return health.healthy

    def _kind(self, alias: str) -> str:
        """Whether ``alias`` is missing from DATABASES, MariaDB/MySQL (whose replication
        the health checks read) or another database; remembered until the settings
        change (:meth:`reset`)."""
        if alias not in connections.settings:
            kind = _UNCONFIGURED
        else:
            kind = _MYSQL if connections[alias].vendor == "mysql" else _PLAIN
        self._kinds[alias] = kind
        return kind

    def ordered(self, shard: Shard) -> list[str]:
        """The shard's usable replicas, best first under ``REPLICA_SELECTION``."""
        candidates = [a for a in shard.replicas if self.usable(a)]
        if len(candidates) < 2:
            return candidates
        mode = get_config().replica_selection
        if mode == "random":
            random.shuffle(candidates)
        elif mode == "fastest":
            # unmeasured replicas first, so each gets measured
            candidates.sort(key=lambda a: self._latency.get(a, -1.0))
        else:
            turn = self._turns.get(shard.primary)
            if turn is None:
                turn = self._turns.setdefault(shard.primary, itertools.count())
            start = next(turn) % len(candidates)
            candidates = candidates[start:] + candidates[:start]
        return candidates

    def choose(
        self, shard: Shard, accept: Callable[[str], bool] | None = None, *, connect: bool = True
    ) -> str | None:
        """A usable, connected replica of ``shard`` (that ``accept`` accepts), or None: then
        the primary serves. A replica that cannot connect is marked down here, so the caller
        never sees it. With ``connect=False`` the first usable replica is returned as it is
        (for callers that retry a read that fails on it).
        """
        replicas = shard.replicas
        candidates: Sequence[str]
        if len(replicas) == 1:  # the common case: nothing to order
            alias = replicas[0]
            if (
                not connect
                and accept is None
                and not self._down_until
                and (
                    self._kinds.get(alias) is _PLAIN
                    or time.monotonic() < monitor.healthy_until.get(alias, 0.0)
                )
            ):
                return alias  # usable(alias), decided without a call
            candidates = replicas if self.usable(alias) else ()
        else:
            candidates = self.ordered(shard)
        for alias in candidates:
            if accept is not None and not accept(alias):
                continue
            if not connect:
                return alias
            conn = connections[alias]
            if conn.connection is None:
                try:
                    conn.ensure_connection()
                except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
                    self.mark_down(alias, exc)
                    continue
            return alias
        return None

    def reset(self) -> None:
        """Forget every replica's state, and the health monitor's probes."""
        with self._lock:
            self._down_until.clear()
            self._latency.clear()
            self._turns.clear()
            self._kinds.clear()
        monitor.forget()


pool = ReplicaPool()


@receiver(setting_changed, dispatch_uid="django_shards.replicas.pool")
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        pool.reset()
