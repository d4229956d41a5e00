"""A replica whose replication stopped is seen, and not read from, whatever the grants.

Production gives the app's database user only schema grants: it cannot run
``SHOW SLAVE STATUS``. The lag is then measured from GTID positions (the replica's
``@@gtid_slave_pos`` against its primary's ``@@gtid_binlog_pos`` over time). A user that may
run it (the topology's operator account) also gets the replication threads' states.
"""

from __future__ import annotations

import io
import re

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import override_settings

from django_shards import context
from django_shards.health import AliasHealth, PositionHistory, monitor, parse_position
from django_shards.status import collect_status
from tests.support.backend import MARIADB, wait_for_replicas
from tests.support.replication import (
    SERVER_OF_REPLICA,
    author_on,
    can_show_slave_status,
    connecting_as,
    operator_credentials,
    read_lands_on,
    topology,
    wait_until,
)
from tests.testapp.models import Author

REPLICA, PRIMARY = "s1_r1", "s1"


def replica_health(alias: str) -> AliasHealth:
    """``alias``'s health as ``shard_status`` reports it (a fresh probe)."""
    status = collect_status(["users"])
    return next(h for s in status.groups[0].shards for h in s.health if h.alias == alias)


def unhealthy(alias: str) -> AliasHealth | None:
    health = replica_health(alias)
    return None if health.healthy else health


def healthy(alias: str) -> AliasHealth | None:
    health = replica_health(alias)
    return health if health.healthy else None


def shard_status_check() -> tuple[int, str]:
    """``shard_status users --check``: its exit code and report."""
    out = io.StringIO()
    try:
        call_command("shard_status", "users", "--check", stdout=out)
    except CommandError as exc:
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def name_on_replica(pk: int) -> str:
    with connections[REPLICA].cursor() as cursor:
        cursor.execute(f"SELECT name FROM {Author._meta.db_table} WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def stopped_replica_is_left_for_the_primary(problem: str) -> AliasHealth:
    """Stop the SQL thread of REPLICA's server, write on its primary, and wait (bounded)
    until ``shard_status --check`` reports it with a ``problem`` (a regex) and eventual reads
    get the new row from the primary. Returns the unhealthy health."""
    a = author_on(PRIMARY)
    server = SERVER_OF_REPLICA[REPLICA]
    limit = {**settings.DJANGO_SHARDS, "MAX_REPLICA_LAG_SECONDS": 1.0}
    with override_settings(DJANGO_SHARDS=limit):
        wait_until(lambda: read_lands_on(REPLICA, a.pk), what=f"reads on {REPLICA} before")
        topology("sql", server, "STOP SLAVE SQL_THREAD")
        try:
            Author.objects.filter(pk=a.pk).update(name="after the stop")
            context.clear_pins()
            health = wait_until(
                lambda: unhealthy(REPLICA),
                what=f"shard_status to call {REPLICA} unhealthy",
            )
            code, report = shard_status_check()
            assert code == 1, report
            assert re.search(rf"users/{PRIMARY}: {REPLICA} ({problem})", report), report
            assert re.match(problem, health.problem), health.problem
            got = wait_until(
                lambda: read_lands_on(PRIMARY, a.pk, name="after the stop"),
                what="eventual reads to come from the primary",
            )
            assert got.name == "after the stop"
            assert Author.objects.eventual().get(pk=a.pk).name == "after the stop"
            assert name_on_replica(a.pk) != "after the stop", "the replica is really stale"
        finally:
            topology("sql", server, "START SLAVE SQL_THREAD")
    wait_for_replicas()
    return health


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_app_user_with_only_schema_grants_sees_a_stopped_replica_and_reads_the_primary():
    assert not can_show_slave_status(REPLICA), "the app's database user has only schema grants"
    health = stopped_replica_is_left_for_the_primary(r"lag unknown: .+|lagging \S+s \(limit 1s\)")
    assert health.sql_running is None, "threads are unknown without SLAVE MONITOR"


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_user_that_may_show_slave_status_sees_the_stopped_sql_thread():
    user, password = operator_credentials()
    with connecting_as(REPLICA, user, password):
        assert can_show_slave_status(REPLICA)
        health = stopped_replica_is_left_for_the_primary(r"replication stopped \(SQL thread\)")
    assert health.sql_running is False


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_replica_that_caught_up_reports_lag_zero_without_privileges():
    wait_for_replicas()
    health = wait_until(
        lambda: healthy(REPLICA),
        what=f"{REPLICA} to be healthy",
    )
    assert health.lag_seconds is not None and health.lag_error is None
    assert health.lag_seconds <= 1.0


@pytest.mark.skipif(MARIADB, reason="SQLite replicas")
@pytest.mark.django_db(databases="__all__")
def test_sqlite_replicas_have_no_replication_to_measure_and_stay_healthy():
    health = monitor.get(REPLICA, "replica", max_age=0)
    assert health.healthy and health.problem is None
    code, report = shard_status_check()
    assert code == 0, report


def test_a_replica_is_covered_only_when_every_gtid_domain_is():
    history = PositionHistory()
    history.add("0-1-10,1-2-5", now=100.0)
    history.add("0-1-12,1-2-5", now=101.0)
    history.add("0-1-12,1-2-7", now=102.0)
    # applied domain 0 up to 12 but domain 1 only to 5: has the second position, not the third
    covered = history.newest_covered(parse_position("0-1-12,1-2-5"))
    assert covered is not None and covered.position == "0-1-12,1-2-5"
    missed = history.oldest_missed(parse_position("0-1-12,1-2-5"))
    assert missed is not None and missed.position == "0-1-12,1-2-7"
    # a domain the primary never wrote to is no obstacle; a missing domain is
    assert history.newest_covered(parse_position("0-1-12,1-2-7,5-3-1")) is not None
    assert history.newest_covered(parse_position("0-1-99")) is None
    # an unchanged position is the same sample, seen later: covering it proves more
    again = history.add("0-1-12,1-2-7", now=110.0)
    assert (again.first_seen, again.last_seen) == (102.0, 110.0)
