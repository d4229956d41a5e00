"""Load per shard: every routed query counts toward its shard (reads, writes, rows, time),
and a fixed-size uniform sample (a reservoir) of the points it routed is kept.

Counting is per process and per thread, and costs a few attribute updates on the routed
path (:func:`record`: no lock, no system call). A daemon thread writes what was counted
since the last flush to the catalog every ``LOAD_FLUSH_SECONDS``
(:class:`~django_shards.models.LoadReport`, one row per shard); a flush that fails is
logged and dropped, never raised into a query. :func:`window` sums the reports of the last
``LOAD_WINDOW_SECONDS`` for ``shard_status`` and ``shard_rebalance``. The process's totals
since it started (:func:`totals`) are what the Prometheus collector exports.

Why no increment is lost without a lock: each thread counts into slots of its own
(``threading.local``), which only that thread ever writes. The slots hold totals since the
thread started, so they only grow; a flush reads them and writes the difference from what it
read the time before (its own field of the slot). A flush that reads a slot while its
thread is half-way through an update sees some of the fields before the update and some
after; the rest shows up in the next flush, so every query is counted exactly once. The one
thing a flush replaces is the slot's reservoir (a new one, for the next flush period): a
point that its thread adds to the old reservoir at that very instant may be left out of
the sample, which stays a sample. A thread that ended is read one last time and forgotten;
a fork starts the child with no counts (its parent flushes its own) and a new flusher.
"""

from __future__ import annotations

import atexit
import logging
import math
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

from django_shards.catalog_io import read_catalog
from django_shards.conf import WATCHED_SETTINGS, get_config

logger = logging.getLogger("django_shards.load")

#: points kept per shard between two flushes (memory stays bounded whatever the traffic)
SAMPLE_SIZE = 256
#: once a shard's sample is full, about one read in this many (at random) is timed into the
#: histogram (standing for the reads since the one before) and offered to the sample
EVENT_EVERY = 32
#: replacements of a full reservoir planned at a time (:meth:`Reservoir.planned`)
PLAN_STEPS = 32
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


def _next_gap(w: float) -> int:
    """Algorithm L's gap: the points that pass before the next one replaces a kept one."""
    if w >= 1.0:  # only if random() drew 0.0 for every shrink so far
        return 1
    gap = _log(1.0 - _random()) / _log1p(-w) if w > 0.0 else _NEVER
    return int(gap) + 1 if gap < _NEVER else int(_NEVER)  # (w underflows after ~1e300 points)


_NEVER = 2.0**62


_log, _log1p, _exp, _random = math.log, math.log1p, math.exp, random.random

#: the reads between two events once a shard's sample is full (after the one before): random,
#: mean EVENT_EVERY, drawn once; each slot goes round them from a random place
_GAPS = tuple(1 + int(_random() * (2 * EVENT_EVERY - 1)) for _ in range(1024))


class Reservoir:
    """A uniform sample of at most ``SAMPLE_SIZE`` of the points seen (Li's Algorithm L:
    once full, random numbers are drawn only for the points that replace a kept one, about
    ``SAMPLE_SIZE * ln(seen / SAMPLE_SIZE)`` of them, not for every point).

    Which kept point each replacement takes and the gap to the next one do not depend on
    the points: they are planned :data:`PLAN_STEPS` at a time, in one loop (the routed path
    then pays a list pop per replacement, not the random and math functions, which are
    slow there: their code is cold; see :meth:`_Slot.event`)."""

    __slots__ = ("next", "plan", "points", "seen", "start", "w")

    def __init__(self) -> None:
        self.seen = 0  # points offered (the sample's population)
        self.points: list[Any] = []
        #: the slot's count of points named before this reservoir's first (see _Slot.event)
        self.start = -1
        self.w = _exp(_log(1.0 - _random()) / SAMPLE_SIZE)
        #: the number of the next point (1-based) that goes into the sample once it is full
        self.next = SAMPLE_SIZE + _next_gap(self.w)
        #: the replacements planned, the next one last: (index of the kept point, gap after)
        self.plan: list[tuple[int, int]] = []

    def planned(self) -> list[tuple[int, int]]:
        """The plan, :data:`PLAN_STEPS` more replacements drawn if it ran out."""
        steps = []
        w = self.w
        for _ in range(PLAN_STEPS):
            index = int(_random() * SAMPLE_SIZE)
            w *= _exp(_log(1.0 - _random()) / SAMPLE_SIZE)
            steps.append((index, _next_gap(w)))
        self.w = w
        self.plan[:] = steps[::-1]
        return self.plan


class _Slot:
    """One thread's counts for one shard since the thread started counting: written only
    by that thread (the flusher writes only ``flushed``, swaps ``reservoir`` and sets
    ``due`` to 0, which at worst makes an event come early or a little late).

    Reads, writes, rows, seconds and the queries that named no point are exact. The
    histogram and the reservoir are updated at *events* (:meth:`event`): every write, and
    the read that reaches ``due``: each read the reservoir takes (all while it fills, then
    Algorithm L's), else one in about :data:`EVENT_EVERY`, at random. A read event adds
    the reads since the last one to its bucket; :meth:`buckets` gives the reads since to
    the last event's bucket, so that the histogram sums to the exact count."""

    __slots__ = (
        "due",
        "flushed",
        "read_buckets",
        "read_last",
        "read_rows",
        "read_seconds",
        "read_timed",
        "reads",
        "reservoir",
        "turn",
        "unpointed",
        "write_buckets",
        "write_rows",
        "write_seconds",
        "writes",
    )

    def __init__(self) -> None:
        self.reads = self.writes = self.read_rows = self.write_rows = self.unpointed = 0
        self.read_seconds = self.write_seconds = 0.0
        self.read_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.write_buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        #: reads the read buckets hold (up to the last read event), and its bucket
        self.read_timed = self.read_last = 0
        self.reservoir = Reservoir()
        #: the count of reads at which the next read event is (the first read is one), and
        #: where this slot is in the gaps between events once the sample is full
        self.due = 1
        self.turn = int(_random() * len(_GAPS))
        #: (reads, writes, rows, seconds, unpointed) when the last flush read them
        self.flushed: tuple[int, int, int, float, int] = (0, 0, 0, 0.0, 0)

    def event(self, write: bool, seconds: float, point: Any) -> None:
        """The query just counted goes into the histogram (a read with the reads since the
        last event) and the reservoir, and the next event is chosen; no call into a C
        module: their code is cold on the routed path (bisect, random cost microseconds)."""
        bucket = 0
        for bound in LATENCY_BUCKETS:  # bisect_left(LATENCY_BUCKETS, seconds)
            if seconds <= bound:
                break
            bucket += 1
        if write:
            self.write_buckets[bucket] += 1
        else:
            reads = self.reads
            self.read_buckets[bucket] += reads - self.read_timed
            self.read_timed, self.read_last = reads, bucket
        # the reservoir's population: the points named since its first event (a new one,
        # after a flush, starts at the first event it sees: the points between are left out)
        position = self.reads + self.writes - self.unpointed
        reservoir = self.reservoir
        if reservoir.start < 0:
            reservoir.start = position - (point is not None)
        seen = reservoir.seen = position - reservoir.start
        points = reservoir.points
        if point is not None:
            if len(points) < SAMPLE_SIZE:
                points.append(point)
            elif seen >= reservoir.next:  # it takes the place of a kept point, as planned
                index, gap = (reservoir.plan or reservoir.planned()).pop()
                points[index] = point
                reservoir.next += gap
        if len(points) < SAMPLE_SIZE:  # every read is an event while the sample fills
            self.due = self.reads + 1
            return
        # the next event is on the next point the reservoir takes, or before it
        turn = self.turn = (self.turn + 1) & (len(_GAPS) - 1)
        gap, left = _GAPS[turn], reservoir.next - seen
        self.due = self.reads + (gap if gap < left else left)

    def buckets(self, write: bool) -> tuple[int, list[int]]:
        """(queries, histogram) of reads or writes: the histogram sums to the queries."""
        if write:  # every write is an event: its bucket is counted after the write
            buckets = list(self.write_buckets)
            return sum(buckets), buckets
        buckets = list(self.read_buckets)  # before the count: then it holds no more reads
        last, reads = self.read_last, self.reads
        buckets[last] += reads - sum(buckets)
        return reads, buckets

    def add_to(self, totals: dict[tuple[str, str, str], Counts], group: str, shard: str) -> None:
        """Add this slot's counts since it started to ``totals`` (by read|write)."""
        for kind, rows, seconds in (
            ("read", self.read_rows, self.read_seconds),
            ("write", self.write_rows, self.write_seconds),
        ):
            queries, buckets = self.buckets(kind == "write")
            if not queries:
                continue
            total = totals.get((group, shard, kind))
            if total is None:
                total = totals[(group, shard, kind)] = Counts()
            if kind == "read":
                total.reads += queries
            else:
                total.writes += queries
            total.rows += rows
            total.seconds += seconds
            total.buckets = [a + b for a, b in zip(total.buckets, buckets, strict=True)]


def merge_samples(samples: list[tuple[int, list[Any]]]) -> tuple[int, list[Any]]:
    """One uniform sample of at most ``SAMPLE_SIZE`` points from several uniform samples,
    each ``(population, points)``: the number taken from each is drawn as sampling without
    replacement from the union of the populations would (a multivariate hypergeometric
    draw), then that many of its points at random. Returns (population, points)."""
    samples = [(n, points) for n, points in samples if n and points]
    population = sum(n for n, _ in samples)
    if len(samples) <= 1:
        return population, list(samples[0][1]) if samples else []
    left = [n for n, _ in samples]
    taken = [0] * len(samples)
    remaining = population
    for _ in range(min(SAMPLE_SIZE, population)):
        pick, i = random.randrange(remaining), 0
        while pick >= left[i]:
            pick -= left[i]
            i += 1
        taken[i] += 1
        left[i] -= 1
        remaining -= 1
    merged: list[Any] = []
    for (_, points), k in zip(samples, taken, strict=True):
        merged.extend(random.sample(points, min(k, len(points))))
    return population, merged


class LoadCounter:
    """The process's counts, per ``(group, shard)``, kept per thread (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the list of threads' slots, the events; never record()
        self._flush_lock = threading.Lock()  # one flush at a time
        self._local = threading.local()
        #: every counting thread, with its slots: {group: {shard: _Slot}}
        self._threads: list[tuple[threading.Thread, dict[str, dict[str, _Slot]]]] = []
        #: the totals of threads that ended
        self._retired: dict[tuple[str, str, str], Counts] = {}
        self._since = time.time()
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
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
        """Count one query routed to ``shard`` of ``group``: a read (or a ``write``) of
        ``rows`` rows that took ``seconds``; ``point``, the shard key it named (None when it
        named none), goes into the shard's sample. No lock, no system call; once the
        shard's sample is full, most reads only add to four counts (see :class:`_Slot`)."""
        try:
            slot = self._local.slots[group][shard]
        except (AttributeError, KeyError):
            slot = self._new_slot(group, shard)
        if point is None:
            slot.unpointed += 1
        if write:
            slot.writes += 1
            slot.write_rows += rows
            slot.write_seconds += seconds
            slot.event(True, seconds, point)
            return
        reads = slot.reads = slot.reads + 1
        slot.read_rows += rows
        slot.read_seconds += seconds
        if reads >= slot.due:
            slot.event(False, seconds, point)

    def _new_slot(self, group: str, shard: str) -> _Slot:
        """This thread's slot for a shard it had not counted yet (and on its first count,
        its slots registered and the flusher started if it is not running)."""
        local = self._local
        slots: dict[str, dict[str, _Slot]] | None = getattr(local, "slots", None)
        if slots is None:
            slots = local.slots = {}
            with self._lock:
                self._threads.append((threading.current_thread(), slots))
                if self._flusher is None:
                    self._start_flusher()
        by_shard = slots.get(group)
        if by_shard is None:
            by_shard = slots[group] = {}
        slot = by_shard.get(shard)
        if slot is None:
            slot = by_shard[shard] = _Slot()
        return slot

    def count_event(self, name: str, group: str, amount: int = 1) -> None:
        """Count an event for the metrics (``fanout``, ``fanout_shards``, ``shard_moving``)."""
        with self._lock:
            self.events[(name, group)] = self.events.get((name, group), 0) + amount

    def totals(self) -> dict[tuple[str, str, str], Counts]:
        """The counts since the process started, by (group, shard, read|write): a new dict."""
        with self._lock:
            threads = list(self._threads)
            totals = {
                key: Counts(c.reads, c.writes, c.rows, c.seconds, buckets=list(c.buckets))
                for key, c in self._retired.items()
            }
        for _, slots in threads:
            for group, by_shard in slots.copy().items():
                for shard, slot in by_shard.copy().items():
                    slot.add_to(totals, group, shard)
        return totals

    def take(self) -> tuple[float, float, dict[tuple[str, str], Counts]]:
        """What was counted since the last take: (from, to, counts with their sample), and
        start again. Threads that ended are read a last time and forgotten."""
        with self._flush_lock:
            with self._lock:
                threads = list(self._threads)
                since, self._since = self._since, time.time()
                until = self._since
            pending: dict[tuple[str, str], Counts] = {}
            samples: dict[tuple[str, str], list[tuple[int, list[Any]]]] = {}
            ended = []
            for thread, slots in threads:
                alive = thread.is_alive()  # read before the slots: then a dead one is final
                for group, by_shard in slots.copy().items():
                    for shard, slot in by_shard.copy().items():
                        reservoir, slot.reservoir = slot.reservoir, Reservoir()
                        slot.due = 0  # the new one starts at the next read (or soon)
                        reads, writes = slot.reads, slot.writes
                        rows = slot.read_rows + slot.write_rows
                        seconds = slot.read_seconds + slot.write_seconds
                        unpointed = slot.unpointed
                        before = slot.flushed
                        slot.flushed = (reads, writes, rows, seconds, unpointed)
                        if reads == before[0] and writes == before[1] and not reservoir.seen:
                            continue
                        counts = pending.get((group, shard))
                        if counts is None:
                            counts = pending[(group, shard)] = Counts()
                        counts.reads += reads - before[0]
                        counts.writes += writes - before[1]
                        counts.rows += rows - before[2]
                        counts.seconds += seconds - before[3]
                        # the points named: exact (the reservoir sees them from its start)
                        counts.sampled_from += (
                            reads + writes - unpointed - (before[0] + before[1] - before[4])
                        )
                        if reservoir.seen:
                            samples.setdefault((group, shard), []).append(
                                (reservoir.seen, reservoir.points)
                            )
                if not alive:
                    ended.append((thread, slots))
            for key, parts in samples.items():
                pending[key].sample = merge_samples(parts)[1]
            for counts in pending.values():
                if not counts.sample:
                    counts.sampled_from = 0  # as before: no sample, no population
            if ended:
                with self._lock:
                    for entry in ended:
                        _, slots = entry
                        for group, by_shard in slots.items():
                            for shard, slot in by_shard.items():
                                slot.add_to(self._retired, group, shard)
                        self._threads = [t for t in self._threads if t[1] is not slots]
            return since, until, pending

    def flush(self) -> int:
        """Write what was counted since the last flush to the catalog now; the number of
        reports written. A failure is logged (a warning) and the counts dropped (never
        raised)."""
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
                sample=[encode_point(p) for p in c.sample],
                sampled_from=c.sampled_from,
            )
            for (group, shard), c in pending.items()
        ]

        def write() -> bool:
            LoadReport.objects.using(config.catalog).bulk_create(reports)
            old = ended - timedelta(seconds=KEEP_WINDOWS * config.load_window_seconds)
            LoadReport.objects.using(config.catalog).filter(ended__lt=old).delete()
            return True

        try:
            # no table: not migrated yet, or no more (a test run's databases at exit)
            if not read_catalog(LoadReport, write, False):
                logger.debug("load of %d shard(s) dropped: no LoadReport table", len(pending))
                return 0
        except Exception as exc:  # noqa: BLE001 - a flush never fails anything: logged, dropped
            logger.warning("load of %d shard(s) not written to the catalog: %s", len(pending), exc)
            return 0
        finally:
            if threading.current_thread() is not threading.main_thread():
                connections[config.catalog].close()
        return len(reports)

    def _start_flusher(self) -> None:
        """Start the flushing thread (under the lock, on the process's first count)."""
        self._stop = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_forever, name="django-shards-load", daemon=True
        )
        self._flusher.start()

    def _flush_forever(self) -> None:
        stop = self._stop
        while not stop.wait(get_config().load_flush_seconds):
            self.flush()

    def _after_fork(self) -> None:
        """In a forked child: no counts (the parent flushes its own), new locks (a lock
        held by another thread at the fork stays held), the flusher started again on the
        first count (threads do not survive a fork)."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._local = threading.local()
        self._threads = []
        self._retired = {}
        self.events = {}
        self._since = time.time()
        self._flusher = None

    def reset(self) -> None:
        """Forget every count (settings changed, tests)."""
        with self._flush_lock, self._lock:
            self._local = threading.local()  # every thread starts new slots on its next count
            self._threads = []
            self._retired = {}
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
os.register_at_fork(after_in_child=counter._after_fork)


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
