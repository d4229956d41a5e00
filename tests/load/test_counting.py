"""Every routed query counts toward its shard's load: reads, writes, rows and a sample of
the keys routed there, flushed to the catalog; counts from several processes add up; a
catalog that fails to take a flush never fails a query.

Group ``events`` (range by account): s0 holds accounts below 1000, s1 1000-1999, s2 the rest.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.db import connections

from django_shards import load
from django_shards.conf import get_config
from django_shards.models import LoadReport
from tests.support.backend import MARIADB, test_process_env, wait_for_replicas
from tests.testapp.models import Event

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_counts_before():
    """Each test counts from zero (what earlier tests and the setup did is forgotten)."""
    load.counter.reset()
    yield
    load.counter.reset()


def _reports(group: str) -> dict[str, dict[str, int]]:
    """The catalog's reports of ``group`` summed per shard: reads, writes, rows."""
    sums: dict[str, dict[str, int]] = {}
    for r in LoadReport.objects.using(get_config().catalog).filter(group=group):
        entry = sums.setdefault(r.shard, {"reads": 0, "writes": 0, "rows": 0})
        entry["reads"] += r.reads
        entry["writes"] += r.writes
        entry["rows"] += r.rows
    return sums


@pytest.mark.django_db(databases="__all__")
def test_orm_reads_and_writes_count_on_the_shard_that_ran_them():
    Event.objects.create(account=5, kind="open")  # s0: 1 write, 1 row
    Event.objects.create(account=1500, kind="open")  # s1: 1 write, 1 row
    Event.objects.bulk_create(  # s0: 1 write, 2 rows; s2: 1 write, 1 row
        [Event(account=10, kind="a"), Event(account=20, kind="b"), Event(account=2500, kind="c")]
    )
    event = Event.objects.get(account=5)  # s0: 1 read, 1 row
    assert list(Event.objects.filter(account=999)) == []  # s0: 1 read, no row
    event.amount = 7
    event.save()  # s0: 1 write (an update), 1 row
    assert Event.objects.filter(account__in=[10, 20]).update(amount=3) == 2  # s0: 1 write, 2 rows
    assert Event.objects.filter(account=1500).count() == 1  # s1: 1 read, 1 row (the answer)
    # s2: 1 write, 1 row, and the read of the rows to delete (Django's collector: 1 row)
    assert Event.objects.filter(account=2500).delete()[0] == 1

    assert load.flush() == 3  # one report per shard
    assert _reports("events") == {
        "s0": {"reads": 2, "writes": 4, "rows": 1 + 2 + 1 + 1 + 2},
        "s1": {"reads": 1, "writes": 1, "rows": 1 + 1},
        "s2": {"reads": 1, "writes": 2, "rows": 1 + 1 + 1},
    }
    window = load.window("events")
    assert (window["s0"].reads, window["s0"].writes) == (2, 4)
    assert window["s0"].share == pytest.approx(6 / 11)
    assert window["s0"].reads_per_second == pytest.approx(2 / get_config().load_window_seconds)
    # the keys named are the sample: account 5 (created, read, saved), 10/20 (one of the batch)
    s0_points = {point for point, _ in window["s0"].weighted_sample}
    assert 5 in s0_points and s0_points <= {5, 10, 20, 999}
    assert load.flush() == 0  # nothing new since


@pytest.mark.django_db(databases="__all__")
def test_a_fanout_counts_a_read_on_every_shard_with_its_rows():
    Event.objects.bulk_create(
        [Event(account=a, kind="k") for a in (1, 2, 3, 1001, 2001, 2002, 2003, 2004)]
    )
    load.counter.reset()
    rows = list(Event.objects.fanout().filter(kind="k"))  # 3 reads: 3, 1 and 4 rows
    assert len(rows) == 8
    assert Event.objects.fanout().filter(kind="k").count() == 8  # 3 reads, 1 row each
    load.flush()
    assert _reports("events") == {
        "s0": {"reads": 2, "writes": 0, "rows": 3 + 1},
        "s1": {"reads": 2, "writes": 0, "rows": 1 + 1},
        "s2": {"reads": 2, "writes": 0, "rows": 4 + 1},
    }
    assert load.counter.events[("fanout", "events")] == 2
    assert load.counter.events[("fanout_shards", "events")] == 6


@pytest.mark.django_db(databases="__all__")
def test_a_fanout_write_counts_the_rows_each_shard_changed():
    Event.objects.bulk_create([Event(account=a, kind="k") for a in (1, 2, 1001, 2001)])
    load.counter.reset()
    assert Event.objects.fanout().filter(kind="k").update(amount=1) == 4
    assert Event.objects.fanout().filter(kind="k").delete()[0] == 4
    load.flush()
    assert _reports("events") == {
        "s0": {"reads": 0, "writes": 2, "rows": 2 + 2},
        "s1": {"reads": 0, "writes": 2, "rows": 1 + 1},
        "s2": {"reads": 0, "writes": 2, "rows": 1 + 1},
    }


@pytest.mark.django_db(databases="__all__")
def test_totals_since_the_process_started_split_reads_and_writes():
    Event.objects.create(account=1500, kind="open")
    Event.objects.get(account=1500)
    load.flush()  # the totals are not reset by a flush
    totals = load.totals()
    assert totals[("events", "s1", "read")].reads == 1
    assert totals[("events", "s1", "write")].writes == 1
    assert sum(totals[("events", "s1", "read")].buckets) == 1  # one query time observed


def test_the_sample_stays_bounded_and_uniform_whatever_the_traffic():
    rng = random.Random(13)
    points = list(range(100_000))
    rng.shuffle(points)
    counter = load.LoadCounter()
    for n, point in enumerate(points, start=1):
        counter.record("g", "s", point=point)
        if n in (100, 10_000):  # bounded at every moment, not only at the end
            assert len(counter._local.slots["g"]["s"].reservoir.points) == min(n, load.SAMPLE_SIZE)
    _, _, pending = counter.take()
    counts = pending[("g", "s")]
    assert counts.reads == 100_000 and counts.sampled_from == 100_000
    assert len(counts.sample) == load.SAMPLE_SIZE == len(set(counts.sample))
    # a uniform sample of 256 has its median within ~1.5% of the population's (sd 3%)
    assert abs(statistics.median(counts.sample) - 50_000) < 12_000
    assert 0.15 < sum(p < 25_000 for p in counts.sample) / load.SAMPLE_SIZE < 0.35


def test_samples_of_several_threads_merge_in_proportion_to_their_traffic():
    counter = load.LoadCounter()

    def traffic(low: int, n: int) -> None:
        for point in range(low, low + n):
            counter.record("g", "s", point=point)

    busy = threading.Thread(target=traffic, args=(0, 30_000))
    quiet = threading.Thread(target=traffic, args=(1_000_000, 10_000))
    for t in (busy, quiet):
        t.start()
    for t in (busy, quiet):
        t.join()
    _, _, pending = counter.take()
    counts = pending[("g", "s")]
    assert counts.reads == 40_000 and counts.sampled_from == 40_000
    assert len(counts.sample) == load.SAMPLE_SIZE
    share_of_busy = sum(p < 1_000_000 for p in counts.sample) / load.SAMPLE_SIZE
    assert 0.62 < share_of_busy < 0.88  # 0.75 expected, sd 0.027
    # the threads ended: read a last time, then forgotten (memory stays bounded)
    assert counter._threads == []
    assert counter.totals()[("g", "s", "read")].reads == 40_000
    assert counter.take()[2] == {}


def test_every_increment_counts_when_threads_record_at_once():
    counter = load.LoadCounter()
    taken: list[int] = []
    stop = threading.Event()

    def flusher() -> None:  # takes while the others count: nothing lost, nothing twice
        while not stop.is_set():
            taken.append(sum(c.reads for c in counter.take()[2].values()))

    def traffic() -> None:
        for n in range(20_000):
            counter.record("g", f"s{n % 3}", rows=1, seconds=0.0001, point=n)

    taker = threading.Thread(target=flusher)
    taker.start()
    workers = [threading.Thread(target=traffic) for _ in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    taker.join()
    taken.append(sum(c.reads for c in counter.take()[2].values()))
    assert sum(taken) == 80_000
    assert sum(c.rows for c in counter.totals().values()) == 80_000


def _events_worker_code(reads: int, writes: int) -> str:
    """What each process runs: ``reads`` reads of account 5 (s0), ``writes`` creates on
    s1, one fan-out count (a read on s0, s1, s2), then a flush."""
    return (
        "import django; django.setup()\n"
        "from django_shards import load\n"
        "from tests.testapp.models import Event\n"
        f"for _ in range({reads}): list(Event.objects.filter(account=5))\n"
        f"for i in range({writes}): Event.objects.create(account=1000 + i, kind='w')\n"
        "Event.objects.fanout().count()\n"
        "print('reports', load.flush())\n"
    )


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_counts_from_several_processes_add_up_in_the_window():
    LoadReport.objects.using(get_config().catalog).all().delete()
    env = test_process_env()
    wait_for_replicas()
    connections.close_all()
    plan = [(10, 2), (11, 3), (12, 4)]  # (reads of s0, writes to s1) per process
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _events_worker_code(reads, writes)],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for reads, writes in plan
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
        assert "reports 3" in out, out
    window = load.window("events")
    assert window["s0"].reads == sum(r for r, _ in plan) + 3
    assert window["s1"].writes == sum(w for _, w in plan)
    assert window["s1"].reads == window["s2"].reads == 3
    assert window["s2"].writes == window["s0"].writes == 0
    assert LoadReport.objects.using(get_config().catalog).values("process").distinct().count() == 3
    total = sum(r for r, _ in plan) + 9 + sum(w for _, w in plan)
    assert window["s0"].share == pytest.approx((sum(r for r, _ in plan) + 3) / total)
    assert {p for p, _ in window["s0"].weighted_sample} == {5}


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_catalog_not_migrated_drops_the_load_quietly(caplog):
    Event.objects.create(account=1500, kind="open")
    table = LoadReport._meta.db_table
    catalog = connections[get_config().catalog]
    with catalog.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        with caplog.at_level(logging.DEBUG, logger="django_shards.load"):
            assert load.flush() == 0
    finally:
        with catalog.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert "dropped: no LoadReport table" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_catalog_that_fails_the_flush_fails_no_query(caplog):
    Event.objects.create(account=1500, kind="open")
    table = LoadReport._meta.db_table
    catalog = connections[get_config().catalog]
    with catalog.cursor() as cursor:  # a table that refuses the reports (not a missing one:
        # a catalog not migrated yet is no failure to warn of)
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
        cursor.execute(f"CREATE TABLE {table} (id integer)")
    try:
        with caplog.at_level(logging.WARNING, logger="django_shards.load"):
            assert Event.objects.get(account=1500).kind == "open"
            assert load.flush() == 0  # logged and dropped, not raised
            assert Event.objects.filter(account=1500).update(amount=2) == 1
            assert Event.objects.get(account=1500).amount == 2
    finally:
        with catalog.cursor() as cursor:
            cursor.execute(f"DROP TABLE {table}")
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    assert "not written to the catalog" in caplog.text
    assert load.flush() == 1  # s1: what was counted after the failure (an update, a read)
    assert _reports("events") == {"s1": {"reads": 1, "writes": 1, "rows": 2}}


@pytest.mark.django_db(databases="__all__", transaction=True)
def test_a_flush_stuck_on_the_catalog_slows_no_query(caplog):
    """A flush waiting on a catalog lock (another session holds it) holds nothing that a
    routed query needs: reads and writes carry on at their usual speed meanwhile."""
    Event.objects.create(account=5, kind="open")
    blocker = _lock_load_reports()
    flushing = threading.Thread(target=load.flush)
    try:
        with caplog.at_level(logging.WARNING, logger="django_shards.load"):
            flushing.start()
            for n in range(50):
                assert Event.objects.get(account=5).kind == "open"
                Event.objects.create(account=10 + n, kind="more")
            assert flushing.is_alive()  # still waiting on the lock all along
    finally:
        blocker()
    flushing.join(timeout=60)
    assert not flushing.is_alive()
    assert load.flush() >= 1  # what was counted meanwhile is flushed next time


def _lock_load_reports():
    """Hold a write lock on the load reports from a session of our own; returns its
    release."""
    table = LoadReport._meta.db_table
    if MARIADB:
        import MySQLdb

        s = connections[get_config().catalog].settings_dict
        conn = MySQLdb.connect(
            host=s["HOST"], port=int(s["PORT"]), user=s["USER"], passwd=s["PASSWORD"], db=s["NAME"]
        )
        cur = conn.cursor()
        cur.execute(f"LOCK TABLES {table} WRITE")
        return conn.close
    import sqlite3

    conn = sqlite3.connect(connections[get_config().catalog].settings_dict["NAME"])
    conn.isolation_level = None
    conn.execute("BEGIN IMMEDIATE")  # readers go on, writers (the flush) wait
    conn.execute(f"DELETE FROM {table} WHERE 0")

    def release() -> None:
        conn.execute("ROLLBACK")
        conn.close()

    return release


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_starts_with_no_counts_and_its_own_flusher():
    load.record("events", "s0", rows=1, point=5)  # the parent's, flushed by the parent
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if it starts clean and counts on its own
        ok = load.totals() == {} and load.counter._flusher is None
        load.record("events", "s1", write=True, rows=2)
        ok = ok and load.counter._flusher is not None and load.counter._flusher.is_alive()
        ok = ok and set(load.totals()) == {("events", "s1", "write")}
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert set(load.totals()) == {("events", "s0", "read")}  # the parent's, untouched


def test_the_histogram_sums_to_the_count_and_the_points_named_are_exact():
    """Most reads only count (the histogram and the sample take about one in
    EVENT_EVERY once the sample is full): the histogram still sums to every read, by the
    time each took, and the population of the sample is every query that named a point."""
    counter = load.LoadCounter()
    for n in range(50_000):
        slow = n % 10 == 0  # a tenth of the reads take 30 ms, the rest 0.2 ms
        point = None if n % 5 == 4 else n
        counter.record("g", "s", rows=1, seconds=0.03 if slow else 0.0002, point=point)
        if n in (1, 300, 12_345):
            assert sum(counter.totals()[("g", "s", "read")].buckets) == n + 1
    counter.record("g", "s", write=True, rows=1, seconds=0.002, point=7)
    totals = counter.totals()
    read, write = totals[("g", "s", "read")], totals[("g", "s", "write")]
    assert read.reads == sum(read.buckets) == 50_000
    assert write.writes == sum(write.buckets) == 1 and write.buckets[1] == 1
    slow_bucket = bisect.bisect_left(load.LATENCY_BUCKETS, 0.03)
    assert 0.08 < read.buckets[slow_bucket] / 50_000 < 0.12  # a tenth, estimated
    assert read.buckets[0] + read.buckets[slow_bucket] == 50_000
    _, _, pending = counter.take()
    counts = pending[("g", "s")]
    assert counts.reads == 50_000 and counts.writes == 1
    assert counts.sampled_from == 40_001  # every query but the fifth of the reads
    assert len(counts.sample) == load.SAMPLE_SIZE and None not in counts.sample
    assert 0.35 < sum(p < 25_000 for p in counts.sample) / load.SAMPLE_SIZE < 0.65
