"""Replica faults on the real MariaDB topology: a killed replica, a stopped SQL thread, a
lagging replica. Reads and views keep answering; an unhealthy replica is not used, and
its recovery is noticed. Also the exact read-your-writes of READ_YOUR_WRITES="gtid"."""

import subprocess
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from django.test import override_settings

from django_shards import context, shard_for
from django_shards.health import monitor
from django_shards.replicas import pool
from tests.conftest import wait_for_replicas
from tests.testapp.models import Author

pytestmark = [pytest.mark.mariadb, pytest.mark.django_db(transaction=True, databases="__all__")]

TOPOLOGY = Path(__file__).resolve().parents[1] / "scripts" / "mariadb-topology"
# which server each alias lives on (scripts/mariadb-topology: s<i> -> p<i % 3>)
SERVER_OF_REPLICA = {f"s{i}_r1": f"r{i % 3}" for i in range(6)}


def topology(*args):
    subprocess.run([str(TOPOLOGY), *args], check=True, capture_output=True, timeout=60)


def author_on(shard_name):
    while True:
        a = Author(email=f"{shard_name}@x.org")
        if shard_for(Author, a.pk).name == shard_name:
            a.save()
            context.clear_pins()
            wait_for_replicas()
            return a


def fresh_health():
    """Forget cached probes and cool-downs, as if their time had passed."""
    pool.reset()
    monitor.forget()


def test_killed_replica_is_skipped_reads_and_views_keep_answering_and_recovery_is_noticed(
    client,
):
    a = author_on("s0")
    assert Author.objects.get(pk=a.pk)._state.db == "s0_r1"
    topology("kill", SERVER_OF_REPLICA["s0_r1"])
    try:
        got = Author.objects.get(pk=a.pk)
        assert got.email == a.email and got._state.db == "s0"
        assert client.get(f"/t/authors/{a.pk}/").json()["alias"] == "s0"
        assert pool.is_down("s0_r1")
    finally:
        topology("start", SERVER_OF_REPLICA["s0_r1"])
    for conn in connections.all(initialized_only=True):
        conn.close()
    fresh_health()
    assert Author.objects.get(pk=a.pk)._state.db == "s0_r1"


def test_replica_with_stopped_sql_thread_is_not_used():
    a = author_on("s1")
    server = SERVER_OF_REPLICA["s1_r1"]
    topology("sql", server, "STOP SLAVE SQL_THREAD")
    try:
        fresh_health()
        Author.objects.filter(pk=a.pk).update(name="changed")
        context.clear_pins()
        got = Author.objects.get(pk=a.pk)
        assert got._state.db == "s1" and got.name == "changed"
        assert "replication stopped" in monitor.get("s1_r1").problem
    finally:
        topology("sql", server, "START SLAVE SQL_THREAD")
    wait_for_replicas()
    fresh_health()
    assert Author.objects.get(pk=a.pk)._state.db == "s1_r1"


def test_replica_lagging_past_the_limit_is_not_used():
    a = author_on("s2")
    server = SERVER_OF_REPLICA["s2_r1"]
    shards = {**settings.DJANGO_SHARDS, "MAX_REPLICA_LAG_SECONDS": 1.0}
    topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=4; START SLAVE")
    try:
        with override_settings(DJANGO_SHARDS=shards):
            Author.objects.filter(pk=a.pk).update(name="late")
            context.clear_pins()
            time.sleep(2.5)  # the replica now applies events 4 s late: it lags ~2.5 s
            fresh_health()
            health = monitor.get("s2_r1")
            assert health.lag_seconds is not None and health.lag_seconds > 1.0, health
            got = Author.objects.get(pk=a.pk)
            assert got._state.db == "s2" and got.name == "late"
    finally:
        topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=0; START SLAVE")
    wait_for_replicas()


def test_gtid_mode_reads_a_replica_that_applied_the_write_and_the_primary_otherwise():
    shards = {**settings.DJANGO_SHARDS, "READ_YOUR_WRITES": "gtid", "PIN_AFTER_WRITE_SECONDS": 30}
    with override_settings(DJANGO_SHARDS=shards):
        a = Author.objects.create(email="gtid@x.org")
        shard = shard_for(Author, a.pk)
        pin = context.pinned(shard.primary)
        assert pin is not None and pin[1], "the write's GTID is remembered"
        wait_for_replicas()
        got = Author.objects.get(pk=a.pk)  # pinned, but the replica has the write
        assert got._state.db == shard.replicas[0] and got.email == "gtid@x.org"
        server = SERVER_OF_REPLICA[shard.replicas[0]]
        # a healthy replica (within MAX_REPLICA_LAG_SECONDS) that applies events 2 s late
        topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=2; START SLAVE")
        try:
            fresh_health()
            Author.objects.filter(pk=a.pk).update(name="fresh")
            assert monitor.get(shard.replicas[0]).healthy
            got = Author.objects.get(pk=a.pk)  # the replica has not applied it yet
            assert got._state.db == shard.primary and got.name == "fresh"
            time.sleep(2.5)
            got = Author.objects.get(pk=a.pk)  # now it has: the replica serves, exactly
            assert got._state.db == shard.replicas[0] and got.name == "fresh"
        finally:
            topology("sql", server, "STOP SLAVE; CHANGE MASTER TO MASTER_DELAY=0; START SLAVE")
        wait_for_replicas()


def test_time_mode_pins_to_the_primary_even_when_the_replica_has_the_write():
    a = Author.objects.create(email="time@x.org")
    shard = shard_for(Author, a.pk)
    wait_for_replicas()
    assert Author.objects.get(pk=a.pk)._state.db == shard.primary
