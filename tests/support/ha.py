"""The HA trio of the MariaDB topology, put back in shape around a failover test.

``scripts/mariadb-topology`` runs f0 (alias ``h0``) with its semi-synchronous replicas f1
(``h0_r1``) and f2 (``h0_r2``); group ``ha`` has one shard, ``h0``, on them. A failover test
kills servers, promotes replicas and repoints replication, so each one starts and ends with
:func:`reset_ha_trio`, through the fixture :func:`ha_trio`::

    from tests.support.ha import ha_trio  # noqa: F401 - the fixture

    pytestmark = [
        pytest.mark.django_db(transaction=True, databases="__all__"),
        pytest.mark.usefixtures("ha_trio"),
    ]

The trio is one per topology: ``ha-reset`` drops every test database on it, so two test runs
must not use it at the same time (the topology serialises the resets, not the tests).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.db import connections

from django_shards.conf import get_config
from django_shards.models import ShardMapVersion
from django_shards.replicas import pool
from django_shards.shardmap import registry
from tests.support.backend import MARIADB
from tests.support.replication import TOPOLOGY

GROUP = "ha"
PRIMARY = "h0"
REPLICAS = ("h0_r1", "h0_r2")
ALIASES = (PRIMARY, *REPLICAS)
#: the topology's server behind each alias (for ``mariadb-topology kill/start/sql``)
SERVER = {"h0": "f0", "h0_r1": "f1", "h0_r2": "f2"}


def close_ha_connections() -> None:
    """Close this thread's connections to the trio (they may point at a dead or demoted
    server, or sit in a database that is about to be dropped)."""
    for alias in ALIASES:
        connections[alias].close()


def reset_ha_trio(timeout: float = 10.0) -> None:
    """f0 primary and writable, f1 and f2 its running read-only semi-sync replicas, whatever
    a test did to them; the run's test database of ``h0`` empty, with its tables, on all three.

    Runs ``scripts/mariadb-topology ha-reset`` (which drops every ``test_%`` database on the
    trio), creates the test database of ``h0`` again on f0 with the tables routed to it, waits
    (``MASTER_GTID_WAIT``, at most ``timeout`` seconds) until both replicas have it, removes
    the map versions a failover wrote for group ``ha`` and forgets django_shards' cached maps
    and replica health. MariaDB only.
    """
    if not MARIADB:
        raise RuntimeError("the HA trio exists only on the MariaDB topology (SHARDS_DB=mariadb)")
    close_ha_connections()
    done = subprocess.run(
        [str(TOPOLOGY), "ha-reset"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(f"mariadb-topology ha-reset failed: {done.stderr.strip()[-2000:]}")

    primary = connections[PRIMARY]
    name = primary.settings_dict["NAME"]
    with primary._nodb_cursor() as cursor:  # the database is gone: connect without one
        cursor.execute(f"CREATE DATABASE {primary.ops.quote_name(name)}")
    primary.close()
    call_command("migrate", database=PRIMARY, run_syncdb=True, verbosity=0, interactive=False)
    with primary.cursor() as cursor:
        cursor.execute("SELECT @@gtid_binlog_pos")
        (position,) = cursor.fetchone()
    for alias in REPLICAS:
        with connections[alias]._nodb_cursor() as cursor:  # it may not have the database yet
            cursor.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [position, timeout])
            (result,) = cursor.fetchone()
        if result != 0:
            raise AssertionError(f"{alias} did not replicate the test database of h0 ({position})")
    close_ha_connections()

    # a failover recorded new versions of the group's map: version 1 (f0 primary) is true again
    ShardMapVersion.objects.using(get_config().catalog).filter(group=GROUP, version__gt=1).delete()
    registry.reset()
    pool.reset()


@pytest.fixture
def ha_trio() -> Iterator[None]:
    """The trio in shape before the test and again after it (MariaDB only: skipped on
    SQLite). The test needs ``django_db(transaction=True, databases="__all__")``: replicas
    see only committed rows."""
    if not MARIADB:
        pytest.skip("needs the MariaDB topology's HA trio (SHARDS_DB=mariadb)")
    reset_ha_trio()
    yield
    reset_ha_trio()
