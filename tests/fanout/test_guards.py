"""Guards around fan-out: the FANOUT setting (allow / warn / deny and ``.fanout()``), a shard
that is down or too slow (``FanoutError`` naming it, ``.allow_partial()`` and
``missing_shards``), a replica that fails alone (invisible), errors that are the caller's
(raised as they are), operations that cannot be merged (a clear ``NotSupportedError``) and
the worker threads' connections (closed after each task, not leaked).

Failures are made for real: a shard's aliases are pointed at a database that does not exist
(SQLite: a path in a missing directory; MariaDB: a port nothing listens on), a shard is
made slow by holding a lock on it from another connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.exceptions import FieldError
from django.db import NotSupportedError, OperationalError, connections
from django.db.models import Count, F, Max, StdDev, Sum, Variance
from django.test import override_settings

import django_shards
from django_shards import context, shard_for
from django_shards.conf import Shard
from django_shards.exceptions import FanoutError, ShardingError, ShardKeyRequired
from django_shards.replicas import pool
from tests.support import backend
from tests.support.backend import MARIADB, wait_for_replicas
from tests.testapp.models import Author, Post, PostTwin

GROUP = settings.DJANGO_SHARDS["GROUPS"]["users"]
SHARDS = [Shard(s["NAME"], s["PRIMARY"], tuple(s["REPLICAS"])) for s in GROUP["SHARDS"]]
SHARD_NAMES = [s.name for s in SHARDS]
REPLICAS = {r for s in SHARDS for r in s.replicas}

non_transactional = pytest.mark.django_db(databases="__all__")
transactional = pytest.mark.django_db(transaction=True, databases="__all__")


def fanout_setting(mode: str, **more):
    return override_settings(DJANGO_SHARDS={**settings.DJANGO_SHARDS, "FANOUT": mode, **more})


def authors_on_every_shard(posts_each: int = 3) -> dict[str, Author]:
    """One author per shard (by shard name), each with a few posts."""
    found: dict[str, Author] = {}
    while len(found) < len(SHARDS):
        a = Author(email=f"g{len(found)}@x.org", name="G")
        found.setdefault(shard_for(Author, a.pk).name, a)
    Author.objects.bulk_create(found.values())
    Post.objects.bulk_create(
        [
            Post(author=a, title=f"{name} {i}", likes=i)
            for name, a in found.items()
            for i in range(posts_each)
        ]
    )
    return found


def committed_authors() -> dict[str, Author]:
    authors = authors_on_every_shard()
    context.clear_pins()  # as if written by an earlier request
    wait_for_replicas()
    return authors


# -- FANOUT = warn -----------------------------------------------------------------------------


def fanout_records(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "django_shards.fanout"
        and r.levelno == logging.WARNING
        and "fan-out" in r.getMessage()
    ]


@non_transactional
def test_warn_logs_one_warning_per_fanout_naming_the_model_and_the_filter(caplog):
    authors = authors_on_every_shard()
    some = next(iter(authors.values()))
    operations = {
        "list": lambda: list(Post.objects.filter(likes__gte=1)),
        "count": lambda: Post.objects.filter(likes__gte=1).count(),
        "exists": lambda: Post.objects.filter(likes__gte=1).exists(),
        "aggregate": lambda: Post.objects.filter(likes__gte=1).aggregate(Sum("likes")),
        "group_by": lambda: list(
            Post.objects.filter(likes__gte=1).values("likes").annotate(n=Count("id"))
        ),
        "first": lambda: Post.objects.filter(likes__gte=1).first(),
        "get": lambda: Post.objects.filter(likes__gte=1).get(title=f"{SHARD_NAMES[0]} 1"),
        "in_bulk": lambda: Post.objects.filter(likes__gte=1).in_bulk(),
        "iterator": lambda: list(Post.objects.filter(likes__gte=1).iterator(chunk_size=2)),
        "sliced": lambda: list(Post.objects.filter(likes__gte=1).order_by("-likes", "id")[1:3]),
        "update": lambda: Post.objects.filter(likes__gte=1).update(likes=F("likes")),
    }
    with fanout_setting("warn"), django_shards.consistency("strong"):
        for name, run in operations.items():
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="django_shards.fanout"):
                run()
            records = fanout_records(caplog)
            assert len(records) == 1, (name, [r.getMessage() for r in records])
            message = records[0].getMessage()
            assert "testapp.Post" in message, message
            assert "likes" in message, message  # the filter
        # the key names one shard: nothing to warn about
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="django_shards.fanout"):
            list(Post.objects.filter(author_id=some.pk, likes__gte=1))
            Author.objects.get(pk=some.pk)
            assert Post.objects.filter(author=some).count() == 3
            # an explicit .fanout() is the caller's choice: not warned either
            assert Post.objects.fanout().filter(likes__gte=1).count() == 2 * len(SHARDS)
        assert fanout_records(caplog) == []


@non_transactional
def test_warn_names_the_model_of_an_author_fanout(caplog):
    authors_on_every_shard(posts_each=0)
    with fanout_setting("warn"), django_shards.consistency("strong"):
        with caplog.at_level(logging.WARNING, logger="django_shards.fanout"):
            assert Author.objects.filter(email__endswith="@x.org").count() == len(SHARDS)
    (record,) = fanout_records(caplog)
    assert "testapp.Author" in record.getMessage()
    assert "email" in record.getMessage()


# -- FANOUT = deny -----------------------------------------------------------------------------


@non_transactional
def test_deny_refuses_a_query_without_the_key_and_fanout_opts_in():
    authors = authors_on_every_shard()
    some = next(iter(authors.values()))
    refused = {
        "list": lambda: list(Post.objects.filter(likes=1)),
        "count": lambda: Post.objects.count(),
        "exists": lambda: Post.objects.filter(likes=1).exists(),
        "aggregate": lambda: Post.objects.aggregate(Sum("likes")),
        "group_by": lambda: list(Post.objects.values("likes").annotate(n=Count("id"))),
        "get": lambda: Post.objects.get(title="nope"),
        "first": lambda: Post.objects.first(),
        "in_bulk": lambda: Post.objects.in_bulk(),
        "iterator": lambda: list(Post.objects.iterator()),
        "update": lambda: Post.objects.filter(likes=1).update(likes=100),
        "delete": lambda: Post.objects.filter(likes=1).delete(),
        "author_list": lambda: list(Author.objects.filter(name="G")),
    }
    with fanout_setting("deny"), django_shards.consistency("strong"):
        for name, run in refused.items():
            with pytest.raises(ShardKeyRequired, match=r"fanout\(\)") as info:
                run()
            assert "testapp." in str(info.value), name
        # nothing was written by the refused update / delete
        assert Post.objects.fanout().filter(likes=100).count() == 0
        assert Post.objects.fanout().count() == 3 * len(SHARDS)
        # with the key: allowed
        assert Post.objects.filter(author_id=some.pk).count() == 3
        assert len(list(Post.objects.filter(author=some, likes=1))) == 1
        assert Author.objects.get(pk=some.pk) == some
        assert Post.objects.for_key(some.pk).filter(likes=1).count() == 1
        assert Post.objects.on_shard(SHARD_NAMES[0]).count() == 3
        assert Post.objects.filter(author_id=some.pk).update(likes=F("likes")) == 3
        # .fanout() opts in, and survives chaining
        assert Post.objects.fanout().filter(likes=1).count() == len(SHARDS)
        assert len(Post.objects.filter(likes=1).fanout().order_by("id")[:2]) == 2
        assert Post.objects.fanout().aggregate(n=Count("id")) == {"n": 3 * len(SHARDS)}
        assert len(Post.objects.fanout().values("likes").annotate(n=Count("id"))) == 3
        assert Post.objects.fanout().filter(likes=2).update(likes=2) == len(SHARDS)


@non_transactional
def test_deny_allows_a_query_naming_keys_on_several_shards():
    authors = authors_on_every_shard()
    keys = [a.pk for a in authors.values()]
    with fanout_setting("deny"), django_shards.consistency("strong"):
        assert Post.objects.filter(author_id__in=keys).count() == 3 * len(SHARDS)
        prefetched = Author.objects.fanout().prefetch_related("post_set")
        assert sum(len(a.post_set.all()) for a in prefetched) == 3 * len(SHARDS)


# -- a dead shard ------------------------------------------------------------------------------


@contextlib.contextmanager
def unreachable(*aliases: str) -> Iterator[None]:
    """``aliases`` cannot be opened while inside; replicas marked down are forgiven after."""
    try:
        with backend.unreachable(*aliases):
            yield
    finally:
        pool.reset()


@transactional
def test_a_dead_shard_fails_the_fanout_naming_it_unless_partial_answers_are_allowed():
    committed_authors()
    dead = SHARDS[1]
    alive = [s.name for s in SHARDS if s != dead]
    with unreachable(dead.primary, *dead.replicas):
        for run in (
            lambda: list(Post.objects.filter(likes__gte=0)),
            lambda: Post.objects.count(),
            lambda: Post.objects.aggregate(Sum("likes")),
            lambda: Post.objects.strong().filter(likes=1).exists(),
            lambda: list(Post.objects.values("likes").annotate(n=Count("id"))),
            lambda: Post.objects.in_bulk([1, 2]),
            lambda: Post.objects.filter(likes=2).update(likes=2),
        ):
            with pytest.raises(FanoutError) as info:
                run()
            message = str(info.value)
            assert repr(dead.name) in message, message
            assert all(repr(name) not in message for name in alive), message
            assert "allow_partial" in message
            assert isinstance(info.value.__cause__, OperationalError)

        qs = Post.objects.filter(likes__gte=0).order_by("likes", "id").allow_partial()
        rows = list(qs)
        assert qs.missing_shards == [dead.name]
        assert {shard_for(Post, p.author_id).name for p in rows} == set(alive)
        assert len(rows) == 3 * len(alive)

        counted = Post.objects.allow_partial()
        assert counted.count() == 3 * len(alive)
        assert counted.missing_shards == [dead.name]
        summed = Post.objects.allow_partial()
        assert summed.aggregate(n=Count("id"), top=Max("likes")) == {"n": 3 * len(alive), "top": 2}
        assert summed.missing_shards == [dead.name]
        ids = [p.pk for p in Post.objects.allow_partial()]
        bulk = Post.objects.allow_partial()
        assert set(bulk.in_bulk(ids)) == set(ids)
        assert bulk.missing_shards == [dead.name]
    # back up: nothing missing
    qs = Post.objects.allow_partial()
    assert len(qs) == 3 * len(SHARDS)
    assert qs.missing_shards == []


@transactional
def test_a_dead_shard_in_a_fanned_out_iterator_is_a_fanout_error():
    committed_authors()
    dead = SHARDS[1]
    with unreachable(dead.primary, *dead.replicas):
        with pytest.raises(FanoutError, match=repr(dead.name)):
            list(Post.objects.iterator(chunk_size=2))
        qs = Post.objects.allow_partial()
        assert len(list(qs.iterator(chunk_size=2))) == 3 * (len(SHARDS) - 1)


@transactional
def test_a_failing_replica_alone_is_invisible():
    committed_authors()
    shard = SHARDS[2]
    replica = shard.replicas[0]
    with unreachable(replica):
        rows = list(Post.objects.filter(likes__gte=0).allow_partial().order_by("id"))
        assert len(rows) == 3 * len(SHARDS)
        by_shard = {shard_for(Post, p.author_id).name: p._state.db for p in rows}
        assert by_shard[shard.name] == shard.primary  # the primary answered
        assert {db for name, db in by_shard.items() if name != shard.name} <= REPLICAS
        assert pool.is_down(replica)
        # and without allow_partial(): no error at all
        assert Post.objects.count() == 3 * len(SHARDS)
        assert Post.objects.aggregate(n=Count("id"))["n"] == 3 * len(SHARDS)
        qs = Post.objects.filter(likes=1)
        assert len(qs) == len(SHARDS)
        assert qs.missing_shards == []


@transactional
def test_a_replica_failing_during_a_fanned_out_iterator_is_invisible():
    committed_authors()
    shard = SHARDS[2]
    with unreachable(shard.replicas[0]):
        assert len(list(Post.objects.order_by("id").iterator(chunk_size=2))) == 3 * len(SHARDS)


# -- a slow shard: FANOUT_TIMEOUT_SECONDS ------------------------------------------------------


@contextlib.contextmanager
def locked(shard: Shard) -> Iterator[None]:
    """Hold a lock on ``shard``'s primary from another connection, so reads of it block."""
    settings_dict = connections[shard.primary].settings_dict
    if MARIADB:
        import MySQLdb

        raw = MySQLdb.connect(
            host=settings_dict["HOST"],
            port=int(settings_dict["PORT"]),
            user=settings_dict["USER"],
            passwd=settings_dict["PASSWORD"],
            db=settings_dict["NAME"],
        )
        cursor = raw.cursor()
        cursor.execute("LOCK TABLES testapp_post WRITE")
        try:
            yield
        finally:
            cursor.execute("UNLOCK TABLES")
            raw.close()
    else:
        raw = sqlite3.connect(settings_dict["NAME"], isolation_level=None)
        raw.execute("BEGIN EXCLUSIVE")  # readers of the file wait (up to OPTIONS["timeout"])
        try:
            yield
        finally:
            raw.execute("ROLLBACK")
            raw.close()


@transactional
def test_a_shard_slower_than_the_fanout_timeout_fails_naming_it():
    committed_authors()
    slow = SHARDS[3]
    # strong: MariaDB's LOCK TABLES holds the primary only (on SQLite the replica alias
    # reads the same locked file anyway)
    with fanout_setting("allow", FANOUT_TIMEOUT_SECONDS=1.0), locked(slow):
        started = time.monotonic()
        with pytest.raises(FanoutError) as info:
            list(Post.objects.strong().filter(likes__gte=0))
        elapsed = time.monotonic() - started
        assert repr(slow.name) in str(info.value)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert 0.9 <= elapsed < 5, elapsed
        qs = Post.objects.strong().allow_partial()
        assert qs.count() == 3 * (len(SHARDS) - 1)
        assert qs.missing_shards == [slow.name]
    # the lock is gone: the shard answers again (its stuck worker finishes too)
    assert Post.objects.strong().count() == 3 * len(SHARDS)


# -- the caller's errors are raised as they are ------------------------------------------------


@transactional
def test_a_bad_field_in_a_fanout_raises_the_normal_error_not_fanout_error():
    committed_authors()

    def raised(run):
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - compared below
            return exc
        raise AssertionError("nothing was raised")

    def same_error(run_sharded, run_twin, kind):
        twin, sharded = raised(run_twin), raised(run_sharded)
        assert isinstance(twin, kind), repr(twin)
        assert type(sharded) is type(twin), repr(sharded)
        assert not isinstance(sharded, ShardingError)
        rename = lambda text: text.replace("PostTwin", "Post").replace("posttwin", "post")  # noqa: E731
        assert rename(str(sharded)) == rename(str(twin))

    same_error(
        lambda: Post.objects.filter(nope=1), lambda: PostTwin.objects.filter(nope=1), FieldError
    )
    same_error(
        lambda: list(Post.objects.filter(likes__nope=1)),
        lambda: list(PostTwin.objects.filter(likes__nope=1)),
        FieldError,
    )
    same_error(
        lambda: Post.objects.order_by("nope"), lambda: PostTwin.objects.order_by("nope"), FieldError
    )
    # raised on the shards, in the worker threads
    same_error(
        lambda: Post.objects.aggregate(Sum("nope")),
        lambda: PostTwin.objects.aggregate(Sum("nope")),
        FieldError,
    )
    same_error(
        lambda: list(Post.objects.values("likes").annotate(n=Count("id")).order_by("nope")),
        lambda: list(PostTwin.objects.values("likes").annotate(n=Count("id")).order_by("nope")),
        FieldError,
    )
    same_error(
        lambda: Post.objects.filter(likes=1).update(nope=1),
        lambda: PostTwin.objects.filter(likes=1).update(nope=1),
        Exception,
    )
    same_error(
        lambda: Post.objects.in_bulk(["x"], field_name="title"),
        lambda: PostTwin.objects.in_bulk(["x"], field_name="title"),
        ValueError,
    )
    same_error(
        lambda: Post.objects.order_by("id")[:2].delete(),
        lambda: PostTwin.objects.order_by("id")[:2].delete(),
        TypeError,
    )
    assert Post.objects.count() == 3 * len(SHARDS)  # nothing was changed


@transactional
def test_raw_sql_that_every_shard_rejects_is_a_fanout_error_chained_to_the_database_error():
    # not a field Django can check: the databases reject it, which looks like shards failing
    committed_authors()
    with pytest.raises(FanoutError) as info:
        list(Post.objects.extra(where=["nope = 1"]))
    assert isinstance(info.value.__cause__, OperationalError)
    assert "nope" in str(info.value)


# -- operations that cannot be merged ----------------------------------------------------------


@non_transactional
@pytest.mark.parametrize(
    "name",
    [
        "stddev",
        "variance",
        "sum_distinct",
        "expression_over_aggregates",
        "sliced_aggregate",
        "distinct_aggregate",
        "aggregate_over_groups",
        "group_stddev",
        "group_count_distinct",
        "group_having",
        "intersection",
        "difference",
        "extra_order_by",
        "group_ordered_by_an_expression",
    ],
)
def test_operations_that_cannot_merge_raise_a_clear_not_supported_error(name):
    authors_on_every_shard()
    run, words = {
        "stddev": (
            lambda: Post.objects.aggregate(StdDev("likes")),
            ["StdDev", "Sum, Count, Min, Max", "Avg", "on_shard"],
        ),
        "variance": (
            lambda: Post.objects.aggregate(v=Variance("likes")),
            ["Variance", "Sum, Count, Min, Max", "Avg"],
        ),
        "sum_distinct": (
            lambda: Post.objects.aggregate(Sum("likes", distinct=True)),
            ["Sum(distinct=True)"],
        ),
        "expression_over_aggregates": (
            lambda: Post.objects.aggregate(x=Sum("likes") * 2),
            ["x", "Sum, Count, Min, Max"],
        ),
        "sliced_aggregate": (
            lambda: Post.objects.order_by("id")[:3].aggregate(Sum("likes")),
            ["sliced", "on_shard"],
        ),
        "distinct_aggregate": (
            lambda: Post.objects.distinct().aggregate(Sum("likes")),
            ["distinct", "on_shard"],
        ),
        "aggregate_over_groups": (
            lambda: Post.objects.values("likes").annotate(n=Count("id")).aggregate(Max("n")),
            ["grouped"],
        ),
        "group_stddev": (
            lambda: list(Post.objects.values("likes").annotate(s=StdDev("id"))),
            ["Sum, Count, Min, Max"],
        ),
        "group_count_distinct": (
            lambda: list(Post.objects.values("likes").annotate(n=Count("title", distinct=True))),
            ["Count(distinct=True)", "shard key"],
        ),
        "group_having": (
            lambda: list(Post.objects.values("likes").annotate(n=Count("id")).filter(n__gt=1)),
            ["HAVING", "shard key"],
        ),
        "intersection": (
            lambda: list(Post.objects.filter(likes=1).intersection(Post.objects.all())),
            ["intersection()", "union()"],
        ),
        "difference": (
            lambda: list(Post.objects.filter(likes=1).difference(Post.objects.filter(likes=2))),
            ["difference()", "on_shard"],
        ),
        "extra_order_by": (
            lambda: list(Post.objects.extra(order_by=["likes"])),
            ["extra(order_by"],
        ),
        "group_ordered_by_an_expression": (
            lambda: list(Post.objects.values("likes").annotate(n=Count("id")).order_by(F("n") * 2)),
            ["ordered by its values and annotation names"],
        ),
    }[name]
    with django_shards.consistency("strong"), pytest.raises(NotSupportedError) as info:
        run()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@non_transactional
def test_what_cannot_merge_across_shards_still_works_when_groups_include_the_key():
    authors = authors_on_every_shard()
    with django_shards.consistency("strong"):
        # groups by the key are complete on their shard: any aggregate is fine
        rows = list(
            Post.objects.values("author")
            .annotate(n=Count("title", distinct=True), s=StdDev("likes"))
            .order_by("author")
        )
        assert [r["author"] for r in rows] == sorted(a.pk for a in authors.values())
        assert all(r["n"] == 3 for r in rows)
        assert all(
            r["s"] == pytest.approx((2 / 3) ** 0.5, abs=1e-4) for r in rows
        )  # MariaDB: 4 places
        # and on one shard, everything is Django's
        one = next(iter(authors.values()))
        assert Post.objects.filter(author=one).aggregate(StdDev("likes"))[
            "likes__stddev"
        ] == pytest.approx((2 / 3) ** 0.5, abs=1e-4)


# -- worker connections do not leak ------------------------------------------------------------


def _open_sqlite_files() -> dict[str, int]:
    """Open file descriptors of this process per SQLite database file."""
    counts: dict[str, int] = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".sqlite3"):
            counts[target] = counts.get(target, 0) + 1
    return counts


def _open_tcp_connections_by_port() -> dict[int, int]:
    """Established TCP connections of this process, per remote port."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    counts: dict[int, int] = {}
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                remote, state, inode = parts[2], parts[3], parts[9]
                if inode in inodes and state == "01":  # ESTABLISHED
                    port = int(remote.rsplit(":", 1)[1], 16)
                    counts[port] = counts.get(port, 0) + 1
    return counts


def _threads_connected() -> dict[int, int]:
    """MariaDB: Threads_connected per server (all clients, not only this process)."""
    out = {}
    for shard in SHARDS:
        for alias in shard.aliases:
            port = int(connections[alias].settings_dict["PORT"])
            if port in out:
                continue
            with connections[alias].cursor() as cursor:
                cursor.execute("SHOW STATUS LIKE 'Threads_connected'")
                out[port] = int(cursor.fetchone()[1])
    return out


def _open_connections() -> dict:
    return _open_tcp_connections_by_port() if MARIADB else _open_sqlite_files()


@transactional
def test_worker_connections_do_not_leak():
    committed_authors()

    def fanouts():
        assert len(Post.objects.filter(likes__gte=0)) == 3 * len(SHARDS)
        assert Post.objects.count() == 3 * len(SHARDS)
        assert Post.objects.aggregate(n=Count("id"))["n"] == 3 * len(SHARDS)
        assert Post.objects.strong().filter(likes=1).exists()

    fanouts()  # warm up: the calling thread's own connections open here
    status_before = _threads_connected() if MARIADB else {}
    before = _open_connections()
    for _ in range(5):  # 20 fan-outs
        fanouts()
    time.sleep(0.2)
    after = _open_connections()
    # the workers close their connections after every task: nothing accumulates
    for key, n in after.items():
        assert n <= before.get(key, 0), (key, before, after)
    workers = [t for t in threading.enumerate() if t.name.startswith("django_shards_fanout")]
    assert len(workers) <= settings.DJANGO_SHARDS.get("FANOUT_WORKERS", 8)
    if MARIADB:
        # server-wide (other clients too): a leak would add at least 20 per server
        status_after = _threads_connected()
        for port, n in status_after.items():
            assert n < status_before[port] + 20, (port, status_before, status_after)
