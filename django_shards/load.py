"""Load per shard: every routed query counts toward its shard (reads, writes, rows, time),
and a fixed-size uniform sample (a reservoir) of the points it routed is kept.

Counting is per process and costs a few dictionary updates on the routed path. A daemon
thread writes what was counted since the last flush to the catalog every
``LOAD_FLUSH_SECONDS`` (:class:`~django_shards.models.LoadReport`, one row per shard); a
flush that fails is logged and dropped, never raised into a query. :func:`window` sums
the reports of the last ``LOAD_WINDOW_SECONDS`` for ``shard_status`` and
``shard_rebalance``. The process's totals since it started (:func:`totals`) are what the
Prometheus collector exports.
"""

from __future__ import annotations

import atexit
import bisect
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.core.signals import setting_changed
from django.dispatch import receiver

from django_shards.conf import WATCHED_SETTINGS, get_config

logger = logging.getLogger("django_shards.load")

#: points kept per shard between two flushes (memory stays bounded whatever the traffic)
SAMPLE_SIZE = 256
#: upper bounds (seconds) of the query-time histogram's buckets
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: reports older than this many windows are deleted by a flush
KEEP_WINDOWS = 2


@dataclass
class Counts:
    """What was routed to one shard: since the last flush, or since the process started."""

    reads: int = 0
    writes: int = 0
    rows: int = 0
    seconds: float = 0.0
    #: reads + writes that named a point (the reservoir's population)
    sampled_from: int = 0
    sample: list[Any] = field(default_factory=list)
    #: query-time histogram: counts per LATENCY_BUCKETS bound, the last one for +Inf
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))

    def add(self, *, write: bool, rows: int, seconds: float, point: Any) -> None:
        if write:
            self.writes += 1
        else:
            self.reads += 1
        self.rows += rows
        self.seconds += seconds
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if point is not None:
            self.sampled_from += 1
            if len(self.sample) < SAMPLE_SIZE:
                self.sample.append(point)
            else:  # Algorithm R: every point so far kept with the same chance
                slot = random.randrange(self.sampled_from)
                if slot < SAMPLE_SIZE:
                    self.sample[slot] = point


class LoadCounter:
    """The process's counts, per ``(group, shard)``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], Counts] = {}
        self._totals: dict[tuple[str, str, str], Counts] = {}  # (group, shard, kind)
        self._since = time.time()
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()
        #: other events exported as metrics: (name, group) -> count
        self.events: dict[tuple[str, str], int] = {}

    def record(
        self,
        group: str,
        shard: str,
        *,
        write: bool = False,
        rows: int = 0,
        seconds: float = 0.0,
        point: Any = None,
    ) -> None:
        """Count one query routed to ``shard`` of ``group``."""
        encoded = None if point is None else encode_point(point)
        kind = "write" if write else "read"
        with self._lock:
            if self._flusher is None or self._pid != os.getpid():
                self._start_flusher()
            pending = self._pending.get((group, shard))
            if pending is None:
                pending = self._pending[(group, shard)] = Counts()
            pending.add(write=write, rows=rows, seconds=seconds, point=encoded)
            total = self._totals.get((group, shard, kind))
            if total is None:
                total = self._totals[(group, shard, kind)] = Counts()
            total.add(write=write, rows=rows, seconds=seconds, point=None)

    def count_event(self, name: str, group: str, amount: int = 1) -> None:
        """Count an event for the metrics (``fanout``, ``shard_moving`` ...)."""
        with self._lock:
            self.events[(name, group)] = self.events.get((name, group), 0) + amount

    def totals(self) -> dict[tuple[str, str, str], Counts]:
        """A copy of the totals since the process started, by (group, shard, read|write)."""
        with self._lock:
            return {
                key: Counts(c.reads, c.writes, c.rows, c.seconds, buckets=list(c.buckets))
                for key, c in self._totals.items()
            }

    def take(self) -> tuple[float, float, dict[tuple[str, str], Counts]]:
        """What was counted since the last take: (from, to, counts), and start again."""
        with self._lock:
            pending, self._pending = self._pending, {}
            since, self._since = self._since, time.time()
            return since, self._since, pending

    def flush(self) -> int:
        """Write what was counted since the last flush to the catalog now; the number of
        reports written. A failure is logged and the counts dropped (never raised)."""
        from django.db import connections

        from django_shards.models import LoadReport

        since, until, pending = self.take()
        if not pending:
            return 0
        config = get_config()
        started, ended = _datetime(since), _datetime(until)
        process = f"{socket.gethostname()}:{os.getpid()}"
        reports = [
            LoadReport(
                group=group,
                shard=shard,
                process=process[:255],
                started=started,
                ended=ended,
                reads=c.reads,
                writes=c.writes,
                rows=c.rows,
                seconds=c.seconds,
                sample=c.sample,
                sampled_from=c.sampled_from,
            )
            for (group, shard), c in pending.items()
        ]
        try:
            LoadReport.objects.using(config.catalog).bulk_create(reports)
            old = ended - timedelta(seconds=KEEP_WINDOWS * config.load_window_seconds)
            LoadReport.objects.using(config.catalog).filter(ended__lt=old).delete()
        except Exception as exc:  # noqa: BLE001 - a flush never fails anything: logged, dropped
            logger.warning("load of %d shard(s) not written to the catalog: %s", len(reports), exc)
            return 0
        finally:
            if threading.current_thread() is not threading.main_thread():
                connections[config.catalog].close()
        return len(reports)

    def _start_flusher(self) -> None:
        """Start the flushing thread (called under the lock; again after a fork)."""
        self._pid = os.getpid()
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_forever, name="django-shards-load", daemon=True
        )
        self._flusher.start()

    def _flush_forever(self) -> None:
        stop = self._stop
        while not stop.wait(get_config().load_flush_seconds):
            self.flush()

    def reset(self) -> None:
        """Forget every count (settings changed, tests)."""
        with self._lock:
            self._pending.clear()
            self._totals.clear()
            self.events.clear()
            self._since = time.time()


def _datetime(timestamp: float) -> Any:
    from datetime import UTC, datetime

    from django.conf import settings

    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment if settings.USE_TZ else moment.replace(tzinfo=None)


def encode_point(point: Any) -> Any:
    """A routed key as JSON can store it: ints and strings as they are, others as text."""
    if isinstance(point, bool) or not isinstance(point, int | str):
        return str(point)
    return point


counter = LoadCounter()
record = counter.record
flush = counter.flush
totals = counter.totals
count_event = counter.count_event
atexit.register(counter.flush)


@receiver(setting_changed, dispatch_uid="django_shards.load.counter")
def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in WATCHED_SETTINGS:
        counter.reset()


@dataclass
class ShardLoad:
    """A shard's load over a window, from every process's reports."""

    reads_per_second: float
    writes_per_second: float
    share: float  # of the group's reads + writes, 0..1
    reads: int
    writes: int
    #: routed points, each with the number of queries it stands for (for load medians)
    weighted_sample: list[tuple[Any, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        return {
            "reads_per_second": self.reads_per_second,
            "writes_per_second": self.writes_per_second,
            "share": self.share,
        }


def window(group: str, seconds: float | None = None) -> dict[str, ShardLoad]:
    """Each shard's load over the last ``seconds`` (default ``LOAD_WINDOW_SECONDS``), from
    the catalog's reports (shards with no report are left out). Raises ``DatabaseError``
    when the catalog cannot be read."""
    from django.utils import timezone

    from django_shards.models import LoadReport

    config = get_config()
    seconds = config.load_window_seconds if seconds is None else seconds
    since = timezone.now() - timedelta(seconds=seconds)
    reports = LoadReport.objects.using(config.catalog).filter(group=group, ended__gte=since)
    sums: dict[str, list[Any]] = {}
    for r in reports:
        entry = sums.setdefault(r.shard, [0, 0, []])
        entry[0] += r.reads
        entry[1] += r.writes
        if r.sample:
            weight = r.sampled_from / len(r.sample)
            entry[2].extend((point, weight) for point in r.sample)
    total = sum(e[0] + e[1] for e in sums.values())
    return {
        shard: ShardLoad(
            reads_per_second=reads / seconds,
            writes_per_second=writes / seconds,
            share=(reads + writes) / total if total else 0.0,
            reads=reads,
            writes=writes,
            weighted_sample=sample,
        )
        for shard, (reads, writes, sample) in sums.items()
    }


def weighted_median(sample: list[tuple[Any, float]], decode: Any = None) -> Any:
    """The point below which half the sample's weight lies (None for an empty sample);
    ``decode`` turns stored points back into keys before they are ordered."""
    points = sorted(((decode(p) if decode else p, w) for p, w in sample), key=lambda item: item[0])
    half = sum(w for _, w in points) / 2
    running = 0.0
    for point, weight in points:
        running += weight
        if running >= half:
            return point
    return None
