"""Prometheus metrics (the ``metrics`` extra: ``pip install "django-shards[metrics]"``).

:class:`ShardsCollector` reads, at scrape time, what the process already keeps: the load
counters (:func:`django_shards.load.totals` and the counted events), the health
monitor's cached probes (nothing is probed for a scrape) and the catalog's splits in
progress. The routed path pays nothing for metrics. Every name starts with
``django_shards_``; labels are ``group``, ``shard``, ``alias`` (and ``kind``, ``role``,
``source``, ``target``, ``phase`` where they apply).

The app registers the collector on ``prometheus_client.REGISTRY`` when it is ready and
``prometheus_client`` is importable, so django-prometheus (or any exporter of that
registry) serves the metrics. :func:`metrics_view`, mounted at ``metrics/`` by
``django_shards.urls``, serves them to staff; without ``prometheus_client`` it answers
501. Counters are the process's own since it started (one series per process).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.contrib.admin.views.decorators import staff_member_required
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache

from django_shards import load
from django_shards.catalog_io import read_catalog
from django_shards.conf import get_config
from django_shards.exceptions import ShardUnavailable
from django_shards.health import AliasHealth, monitor
from django_shards.shardmap import ShardMap, get_map, map_from_settings

if TYPE_CHECKING:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )

logger = logging.getLogger("django_shards.metrics")

#: the load events exported as counters: event name (:func:`load.count_event`) -> metric
EVENT_METRICS = {
    "fanout": ("django_shards_fanouts", "Fan-out queries (run on several shards) of the group."),
    "fanout_shards": (
        "django_shards_fanout_shards",
        "Shards queried by the group's fan-outs (divided by fan-outs: shards per fan-out).",
    ),
    "shard_moving": (
        "django_shards_shard_moving",
        "Writes refused with ShardMoving (keys frozen by a split's cutover).",
    ),
}

_INSTALL_HINT = "Prometheus metrics need prometheus_client: pip install 'django-shards[metrics]'.\n"


def available() -> bool:
    """True when ``prometheus_client`` can be imported (the ``metrics`` extra)."""
    return importlib.util.find_spec("prometheus_client") is not None


def _cached_health() -> dict[str, AliasHealth]:
    """Each alias's last probe as the health monitor cached it; nothing is probed."""
    return monitor.cached()


def _maps() -> list[ShardMap]:
    """Every group's current map; the settings' version 1 when the catalog cannot give one
    (a scrape never fails for the catalog)."""
    maps = []
    for name, group in get_config().groups.items():
        try:
            maps.append(get_map(name))
        except ShardUnavailable as exc:
            logger.warning("metrics: map of group %r not read, settings used: %s", name, exc)
            maps.append(map_from_settings(group))
    return maps


def _active_splits() -> list[Any]:
    """The splits in progress, every group's, in one catalog query; none when it fails."""
    from django_shards.models import SplitJob

    qs = SplitJob.objects.using(get_config().catalog).filter(phase__in=SplitJob.ACTIVE_PHASES)
    qs = qs.only("group", "source", "target", "phase", "progress")
    try:
        return read_catalog(SplitJob, lambda: list(qs), [])
    except Exception as exc:  # noqa: BLE001 - a scrape never fails for the catalog
        logger.warning("metrics: splits in progress not read from the catalog: %s", exc)
        return []


def _rows_copied(progress: Any) -> int:
    copies = progress.get("copy", {}) if isinstance(progress, dict) else {}
    return sum(int(c.get("rows", 0)) for c in copies.values() if isinstance(c, dict))


@dataclass(frozen=True)
class _Families:
    """The metric families of one scrape, filled by :class:`ShardsCollector`."""

    queries: CounterMetricFamily
    rows: CounterMetricFamily
    seconds: HistogramMetricFamily
    lag: GaugeMetricFamily
    up: GaugeMetricFamily
    age: GaugeMetricFamily
    split_phase: GaugeMetricFamily
    split_rows: GaugeMetricFamily
    events: dict[str, CounterMetricFamily]

    @classmethod
    def new(cls) -> _Families:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        load_labels = ["group", "shard", "kind"]
        where = ["group", "shard", "alias"]
        split = ["group", "source", "target"]
        return cls(
            queries=CounterMetricFamily(
                "django_shards_queries",
                "Queries routed to the shard by this process (kind: read or write).",
                labels=load_labels,
            ),
            rows=CounterMetricFamily(
                "django_shards_rows",
                "Rows of the shard's routed queries: read where cheaply known, written.",
                labels=load_labels,
            ),
            seconds=HistogramMetricFamily(
                "django_shards_query_seconds",
                "Time of the shard's routed queries, in seconds.",
                labels=load_labels,
            ),
            lag=GaugeMetricFamily(
                "django_shards_replica_lag_seconds",
                "Replica lag found by the last health probe, in seconds (absent: unknown).",
                labels=where,
            ),
            up=GaugeMetricFamily(
                "django_shards_alias_up",
                "1 when the alias's last health probe found it usable, 0 otherwise.",
                labels=[*where, "role"],
            ),
            age=GaugeMetricFamily(
                "django_shards_alias_probe_age_seconds",
                "Seconds since the alias's last health probe (what up and lag are as of).",
                labels=where,
            ),
            split_phase=GaugeMetricFamily(
                "django_shards_split_phase",
                "1 for each split in progress, labelled with its phase.",
                labels=[*split, "phase"],
            ),
            split_rows=GaugeMetricFamily(
                "django_shards_split_rows_copied",
                "Rows a split in progress has copied to its target so far.",
                labels=split,
            ),
            events={
                event: CounterMetricFamily(name, documentation, labels=["group"])
                for event, (name, documentation) in EVENT_METRICS.items()
            },
        )

    def all(self) -> list[Metric]:
        return [
            self.queries,
            self.rows,
            self.seconds,
            self.lag,
            self.up,
            self.age,
            self.split_phase,
            self.split_rows,
            *self.events.values(),
        ]


class ShardsCollector:
    """Builds the ``django_shards_*`` metrics from the process's state at each scrape."""

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples: registering reads nothing."""
        yield from _Families.new().all()

    def collect(self) -> Iterator[Metric]:
        families = _Families.new()
        catalog = get_config().catalog
        opened = connections[catalog].connection is None
        try:
            maps = _maps()
            self._load(families, maps)
            self._health(families, maps)
            self._splits(families)
        finally:
            # a scrape on a thread of its own (an exporter's HTTP server) must not leave a
            # connection behind on every thread it ran on
            if opened and threading.current_thread() is not threading.main_thread():
                connections[catalog].close()
        yield from families.all()

    @staticmethod
    def _load(families: _Families, maps: list[ShardMap]) -> None:
        totals = load.totals()
        for shard_map in maps:  # every shard of every map, zero before its first query
            for shard in shard_map.shards:
                for kind in ("read", "write"):
                    totals.setdefault((shard_map.group, shard, kind), load.Counts())
        for (group, shard, kind), counts in sorted(totals.items()):
            labels = [group, shard, kind]
            queries = counts.reads if kind == "read" else counts.writes
            families.queries.add_metric(labels, queries)
            families.rows.add_metric(labels, counts.rows)
            buckets, running = [], 0
            for bound, count in zip(
                [*map(str, load.LATENCY_BUCKETS), "+Inf"], counts.buckets, strict=True
            ):
                running += count
                buckets.append((bound, running))
            families.seconds.add_metric(labels, buckets, counts.seconds)
        events = dict(load.counter.events)
        groups = {m.group for m in maps} | {group for _, group in events}
        for event in EVENT_METRICS:
            for group in sorted(groups):
                families.events[event].add_metric([group], events.get((event, group), 0))

    @staticmethod
    def _health(families: _Families, maps: list[ShardMap]) -> None:
        cached = _cached_health()
        now = time.monotonic()
        for shard_map in maps:
            for shard in shard_map.shards.values():
                roles = [(shard.primary, "primary"), *((r, "replica") for r in shard.replicas)]
                for alias, role in roles:
                    health = cached.get(alias)
                    if health is None or health.role != role:
                        continue  # not probed by this process (as that role) yet
                    where = [shard_map.group, shard.name, alias]
                    families.up.add_metric([*where, role], 1 if health.healthy else 0)
                    families.age.add_metric(where, max(0.0, now - health.checked_at))
                    if role == "replica" and health.lag_seconds is not None:
                        families.lag.add_metric(where, health.lag_seconds)

    @staticmethod
    def _splits(families: _Families) -> None:
        for job in _active_splits():
            where = [job.group, job.source, job.target]
            families.split_phase.add_metric([*where, job.phase], 1)
            families.split_rows.add_metric(where, _rows_copied(job.progress))


_collector: ShardsCollector | None = None
_register_lock = threading.Lock()


def register() -> ShardsCollector | None:
    """Register :class:`ShardsCollector` on ``prometheus_client.REGISTRY`` (once; the app's
    ``ready()`` calls it). None, and nothing done, without ``prometheus_client``."""
    global _collector
    if not available():
        return None
    from prometheus_client import REGISTRY

    with _register_lock:
        if _collector is None:
            collector = ShardsCollector()
            REGISTRY.register(collector)
            _collector = collector
        return _collector


@staff_member_required
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``prometheus_client.REGISTRY`` in Prometheus's text format (every collector on it,
    this app's included). Staff only; never cached; 501 without ``prometheus_client``."""
    if not available():
        return HttpResponse(_INSTALL_HINT, status=501, content_type="text/plain; charset=utf-8")
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    register()
    return HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_LATEST)
