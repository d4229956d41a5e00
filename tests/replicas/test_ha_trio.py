"""The HA trio the failover tests stand on (``scripts/mariadb-topology``: f0 primary, f1 and
f2 its semi-synchronous replicas; group ``ha``, aliases ``h0``, ``h0_r1``, ``h0_r2``): a write
through the ORM is acknowledged by a replica and reaches both, and ``ha-reset`` brings a
killed replica back. MariaDB only."""

from __future__ import annotations

import subprocess
import time

import pytest
from django.db import connections

from django_shards import shard_for
from tests.support.ha import PRIMARY, REPLICAS, SERVER, ha_trio, reset_ha_trio  # noqa: F401
from tests.support.replication import TOPOLOGY, topology
from tests.testapp.models import Deposit

pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("ha_trio"),
]


def status(alias: str, name: str) -> int:
    """A numeric ``SHOW STATUS`` variable of the server behind ``alias``."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SHOW GLOBAL STATUS LIKE %s", [name])
        row = cursor.fetchone()
    return int(row[1])


def read_only(alias: str) -> bool:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT @@global.read_only")
        return bool(cursor.fetchone()[0])


def amounts_on(alias: str, timeout: float = 10.0) -> dict[int, int]:
    """The deposits the server behind ``alias`` holds once it has applied everything h0
    wrote (``MASTER_GTID_WAIT``), read with raw SQL: no routing involved."""
    with connections[PRIMARY].cursor() as cursor:
        cursor.execute("SELECT @@gtid_binlog_pos")
        (position,) = cursor.fetchone()
    with connections[alias].cursor() as cursor:
        if alias != PRIMARY:
            cursor.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [position, timeout])
            assert cursor.fetchone()[0] == 0, f"{alias} did not apply {position}"
        cursor.execute(f"SELECT id, amount FROM {Deposit._meta.db_table}")
        return dict(cursor.fetchall())


def server_line(server: str) -> str:
    """The line of ``server`` in ``mariadb-topology status`` (which exits 1 while one is down)."""
    done = subprocess.run([str(TOPOLOGY), "status"], capture_output=True, text=True, timeout=60)
    return next(line for line in done.stdout.splitlines() if line.split()[0] == server)


def acknowledged_write(account: int, amount: int) -> Deposit:
    """A deposit written through the ORM, which a semi-sync replica acknowledged."""
    acked = status(PRIMARY, "Rpl_semi_sync_master_yes_tx")
    started = time.monotonic()
    deposit = Deposit.objects.create(account=account, amount=amount)
    assert time.monotonic() - started < 1.0  # a replica acknowledged: no 10 s timeout
    assert deposit._state.db == PRIMARY
    assert status(PRIMARY, "Rpl_semi_sync_master_yes_tx") > acked
    return deposit


def test_writes_reach_both_semi_sync_replicas_and_ha_reset_restores_a_killed_one():
    shard = shard_for(Deposit, 123)
    assert (shard.name, shard.primary, set(shard.replicas)) == (PRIMARY, PRIMARY, set(REPLICAS))
    assert not read_only(PRIMARY) and all(read_only(alias) for alias in REPLICAS)
    assert status(PRIMARY, "Rpl_semi_sync_master_clients") == 2

    first = acknowledged_write(123, 10)
    for alias in REPLICAS:
        assert amounts_on(alias) == {first.pk: 10}

    # one replica killed (SIGKILL): the other still acknowledges every write
    topology("kill", SERVER["h0_r1"])
    connections["h0_r1"].close()
    second = acknowledged_write(456, 20)
    assert amounts_on("h0_r2") == {first.pk: 10, second.pk: 20}
    assert server_line("f1").endswith("down")

    # ha-reset: f1 started and attached again, both replicas acknowledge, an empty database
    reset_ha_trio()
    assert status(PRIMARY, "Rpl_semi_sync_master_clients") == 2
    assert not read_only(PRIMARY) and all(read_only(alias) for alias in REPLICAS)
    assert amounts_on(PRIMARY) == {}
    third = acknowledged_write(789, 30)
    for alias in REPLICAS:
        assert amounts_on(alias) == {third.pk: 30}
