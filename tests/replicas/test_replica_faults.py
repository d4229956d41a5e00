"""Replica faults on the real MariaDB topology: a killed replica, a stopped SQL thread, a
lagging replica. Reads and views keep answering; an unhealthy replica is not used, and
its recovery is noticed. Also the exact read-your-writes of READ_YOUR_WRITES="gtid".

Every step that depends on another process (a server restarting, replication resuming, a
delayed replica applying an event) waits on a condition with a deadline, never on a sleep.
"""

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from django_shards import context, shard_for
from django_shards.health import monitor
from django_shards.replicas import pool
from tests.support.backend import wait_for_replicas
from tests.support.replication import (
    SERVER_OF_REPLICA,
    author_on,
    fresh_health,
    read_lands_on,
    topology,
    wait_until,
)
from tests.testapp.models import Author

pytestmark = [pytest.mark.mariadb, pytest.mark.django_db(transaction=True, databases="__all__")]


def test_killed_replica_is_skipped_reads_and_views_keep_answering_and_recovery_is_noticed(
    client,
):
    a = author_on("s0")
    wait_until(lambda: read_lands_on("s0_r1", a.pk), what="reads on s0_r1")
    topology("kill", SERVER_OF_REPLICA["s0_r1"])  # returns once the process is gone
    try:
        got = Author.objects.get(pk=a.pk)
        assert got.email == a.email and got._state.db == "s0"
        assert client.get(f"/t/authors/{a.pk}/").json()["alias"] == "s0"
        assert pool.is_down("s0_r1")
    finally:
        topology("start", SERVER_OF_REPLICA["s0_r1"])  # returns once replication runs
    for conn in connections.all(initialized_only=True):
        conn.close()
    fresh_health()  # the cool-down's time has passed
    wait_until(lambda: read_lands_on("s0_r1", a.pk), what="reads back on s0_r1")


def test_replica_with_stopped_sql_thread_is_not_used():
    a = author_on("s1")
    server = SERVER_OF_REPLICA["s1_r1"]
    topology("sql", server, "STOP SLAVE SQL_THREAD")
    try:
        fresh_health()
        Author.objects.filter(pk=a.pk).update(name="changed")
        context.clear_pins()
        # at the latest once its lag passes MAX_REPLICA_LAG_SECONDS, reads leave it
        got = wait_until(
            lambda: read_lands_on("s1", a.pk, name="changed"), what="reads on the primary"
        )
        assert got.name == "changed"
        assert not monitor.get("s1_r1").healthy and monitor.get("s1_r1").problem
    finally:
        topology("sql", server, "START SLAVE SQL_THREAD")
    wait_for_replicas()
    fresh_health()
    wait_until(lambda: read_lands_on("s1_r1", a.pk, name="changed"), what="reads on s1_r1")


def test_replica_lagging_past_the_limit_is_not_used():
    a = author_on("s2")
    server = SERVER_OF_REPLICA["s2_r1"]
    shards = {**settings.DJANGO_SHARDS, "MAX_REPLICA_LAG_SECONDS": 1.0}
    topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=4; START SLAVE")
    try:
        with override_settings(DJANGO_SHARDS=shards):
            Author.objects.filter(pk=a.pk).update(name="late")
            context.clear_pins()
            # the replica applies events 4 s late: past the 1 s limit
            got = wait_until(
                lambda: read_lands_on("s2", a.pk, name="late"), what="reads on the primary"
            )
            assert got.name == "late"
            health = monitor.get("s2_r1", max_age=0)
            assert not health.healthy and "lag" in health.problem, health
    finally:
        topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=0; START SLAVE")
    wait_for_replicas()


def test_gtid_mode_reads_a_replica_that_applied_the_write_and_the_primary_otherwise():
    shards = {**settings.DJANGO_SHARDS, "READ_YOUR_WRITES": "gtid", "PIN_AFTER_WRITE_SECONDS": 30}
    with override_settings(DJANGO_SHARDS=shards):
        a = Author.objects.create(email="gtid@x.org")
        shard = shard_for(Author, a.pk)
        replica = shard.replicas[0]
        pin = context.pinned(shard.primary)
        assert pin is not None and pin[1], "the write's GTID is remembered"
        wait_for_replicas()
        # pinned, but the replica has the write (once its health is known)
        got = wait_until(lambda: read_lands_on(replica, a.pk), what=f"reads on {replica}")
        assert got.email == "gtid@x.org"
        server = SERVER_OF_REPLICA[replica]
        # a healthy replica (within MAX_REPLICA_LAG_SECONDS) that applies events 2 s late
        topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=2; START SLAVE")
        try:
            fresh_health()
            # START SLAVE returns while the IO thread is still connecting: wait until a probe
            # finds the replica healthy again
            wait_until(lambda: monitor.get(replica, max_age=0).healthy, what=f"{replica} healthy")
            Author.objects.filter(pk=a.pk).update(name="fresh")
            got = Author.objects.get(pk=a.pk)  # the replica applies it 2 s from now at best
            assert got._state.db == shard.primary and got.name == "fresh"

            # once it has: the replica serves, exactly; no read in between misses the write
            def fresh_from_the_replica():
                got = Author.objects.get(pk=a.pk)
                assert got.name == "fresh", f"{got._state.db} lost the write"
                return got if got._state.db == replica else None

            wait_until(fresh_from_the_replica, what=f"{replica} to serve")
        finally:
            topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=0; START SLAVE")
        wait_for_replicas()


def test_time_mode_pins_to_the_primary_even_when_the_replica_has_the_write():
    shards = {**settings.DJANGO_SHARDS, "PIN_AFTER_WRITE_SECONDS": 60}  # outlasts any wait
    with override_settings(DJANGO_SHARDS=shards):
        a = Author.objects.create(email="time@x.org")
        shard = shard_for(Author, a.pk)
        wait_for_replicas()
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary
