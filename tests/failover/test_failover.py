"""Failover and switchover on the real HA trio (``scripts/mariadb-topology``: f0 primary,
f1 and f2 its semi-synchronous replicas, ``AFTER_SYNC``), group ``ha``, shard ``h0``
(aliases ``h0``, ``h0_r1``, ``h0_r2``).

Real processes are killed (``mariadb-topology kill``: SIGKILL) and the commands are run as
an operator would. Writers record every write the database acknowledged; afterwards each
one must be on the new primary. The trio is put back (``ha_trio``) before and after each
test.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

from django_shards.models import FailoverJob
from django_shards.operator import operator_connect
from django_shards.shardmap import get_map, registry
from tests.support.backend import MARIADB, test_process_env
from tests.support.ha import ha_trio  # noqa: F401 - the fixture
from tests.support.split_process import SplitProcess
from tests.support.splitting import MAP_LEASE_SECONDS
from tests.support.writers import Writer, ids_held
from tests.testapp.models import Deposit

REPO = Path(__file__).resolve().parents[2]
GROUP, SHARD = "ha", "h0"
PRIMARY, REPLICAS = "h0", ("h0_r1", "h0_r2")
SERVER = {"h0": "f0", "h0_r1": "f1", "h0_r2": "f2"}
DEADLINE = 60.0

pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.skipif(
        not (MARIADB and settings.DJANGO_SHARDS.get("OPERATOR")),
        reason="failover needs the MariaDB HA trio and the OPERATOR account",
    ),
    pytest.mark.django_db(transaction=True, databases="__all__"),
    pytest.mark.usefixtures("ha_trio"),
]


@pytest.fixture(autouse=True)
def short_lease(settings):
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": MAP_LEASE_SECONDS}
    registry.reset()
    yield
    registry.reset()


def topology(*args: str) -> str:
    done = subprocess.run(
        [str(REPO / "scripts" / "mariadb-topology"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def failover(*argv: str) -> str:
    out = io.StringIO()
    call_command("shard_failover", GROUP, SHARD, "--no-input", *argv, stdout=out)
    return out.getvalue()


def server_state(alias: str) -> dict[str, Any]:
    """read_only, and the replication source's port (None: not a replica), as the operator."""
    conn = operator_connect(alias)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@global.read_only")
            (read_only,) = cursor.fetchone()
            cursor.execute("SHOW SLAVE STATUS")
            row = cursor.fetchone()
            names = [d[0] for d in cursor.description] if cursor.description else []
        status = dict(zip(names, row, strict=True)) if row else {}
        return {
            "read_only": bool(read_only),
            "source_port": status.get("Master_Port"),
            "running": status.get("Slave_IO_Running") == "Yes"
            and status.get("Slave_SQL_Running") == "Yes",
        }
    finally:
        conn.close()


def port(alias: str) -> int:
    return int(connections[alias].settings_dict["PORT"])


def wait_applied(replica: str, primary: str) -> None:
    """Block until ``replica`` has applied everything ``primary`` has written."""
    conn = operator_connect(primary)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT @@gtid_binlog_pos")
            (position,) = cursor.fetchone()
    finally:
        conn.close()
    conn = operator_connect(replica)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [position, DEADLINE])
            (result,) = cursor.fetchone()
        assert result == 0, f"{replica} did not apply {position}"
    finally:
        conn.close()


def shard():
    return registry.refresh(GROUP).shard_named(SHARD)


# -- refusals -------------------------------------------------------------------------------


def test_a_failover_is_refused_while_the_primary_answers_and_nothing_changes():
    version = registry.refresh(GROUP).version
    with pytest.raises(CommandError, match=r"answers.*--switchover") as raised:
        failover()
    assert raised.value.returncode == 2
    assert registry.refresh(GROUP).version == version
    assert not FailoverJob.objects.exists()
    assert server_state(PRIMARY)["read_only"] is False


def test_a_switchover_dry_run_prints_each_replicas_position_and_changes_nothing():
    Deposit.objects.create(account=1, amount=1)
    version = registry.refresh(GROUP).version
    out = failover("--switchover", "--dry-run")
    for replica in REPLICAS:
        assert f"replica {replica}: received 0-" in out
    assert "chosen: h0_r1" in out and "dry run: nothing was changed." in out
    assert registry.refresh(GROUP).version == version
    assert not FailoverJob.objects.exists()
    assert server_state(PRIMARY)["read_only"] is False


def test_a_failover_with_no_usable_replica_is_refused_and_changes_nothing():
    for alias in (PRIMARY, *REPLICAS):
        topology("kill", SERVER[alias])
    version = registry.refresh(GROUP).version
    with pytest.raises(CommandError, match="No replica of ha/h0 is usable") as raised:
        failover()
    assert raised.value.returncode == 2
    assert registry.refresh(GROUP).version == version
    assert not FailoverJob.objects.exists()


def test_to_must_name_a_replica_of_the_shard():
    with pytest.raises(CommandError, match="not a replica"):
        failover("--switchover", "--to", "s0")


# -- failover of a dead primary -------------------------------------------------------------


def test_a_dead_primary_is_replaced_by_its_most_advanced_replica_with_no_acknowledged_write_lost():
    writer = Writer()
    writer.start()
    writer.wait_for(200)
    topology("kill", SERVER[PRIMARY])  # SIGKILL, writes in flight
    writer.finish()
    acked = list(writer.acked)

    # the dry run shows each replica's positions and the choice, and changes nothing
    plan = failover("--dry-run")
    assert f"primary {PRIMARY}: unreachable" in plan
    for replica in REPLICAS:
        assert f"replica {replica}: received 0-" in plan
    assert "chosen: h0_r" in plan and "demoted h0" in plan
    assert shard().primary == PRIMARY and not FailoverJob.objects.exists()

    out = failover()
    assert "failover done" in out
    now = shard()
    assert now.primary in REPLICAS
    assert now.demoted == (PRIMARY,)
    assert PRIMARY not in now.aliases
    (other,) = [r for r in REPLICAS if r != now.primary]
    assert now.replicas == (other,)
    # every acknowledged write survived, on the new primary and on the repointed replica
    assert ids_held(now.primary, acked) == set(acked)
    assert get_map(GROUP).shard_for_key(7).primary == now.primary
    new = Deposit.objects.create(account=7, amount=-1)  # routed to the new primary
    assert ids_held(now.primary, [new.pk]) == {new.pk}
    state = server_state(other)
    assert state["source_port"] == port(now.primary) and state["running"]
    wait_applied(other, now.primary)
    assert ids_held(other, [*acked, new.pk]) == {*acked, new.pk}
    assert FailoverJob.objects.get().phase == FailoverJob.Phase.DONE

    # the old primary comes back: read-only (its configuration), shown demoted, never used
    topology("start", SERVER[PRIMARY])
    assert server_state(PRIMARY)["read_only"] is True
    status = io.StringIO()
    call_command("shard_status", GROUP, stdout=status)
    assert f"{PRIMARY} (demoted)" in status.getvalue()
    status = io.StringIO()
    call_command("shard_status", GROUP, "--json", stdout=status)
    (listed,) = json.loads(status.getvalue())["groups"][0]["shards"]
    assert listed["demoted"] == [PRIMARY] and listed["primary"] == now.primary
    later = Deposit.objects.create(account=7, amount=-2)
    assert ids_held(now.primary, [later.pk]) == {later.pk}
    assert ids_held(PRIMARY, [later.pk]) == set()  # never written to the demoted primary
    # made writable by hand: the watcher fences it again
    topology("sql", SERVER[PRIMARY], "SET GLOBAL read_only = ON")
    topology("sql", SERVER[PRIMARY], "SET GLOBAL read_only = OFF")
    watch = io.StringIO()
    call_command("shard_watch", GROUP, "--once", stdout=watch)
    assert f"demoted {PRIMARY} answered writable: made read-only" in watch.getvalue()
    assert server_state(PRIMARY)["read_only"] is True


def test_a_failover_killed_half_way_is_finished_by_running_it_again():
    Deposit.objects.create(account=3, amount=1)
    topology("kill", SERVER[PRIMARY])
    process = SplitProcess(["shard_failover", GROUP, SHARD, "--no-input"], hold_at="promoted")
    process.kill_when_held()
    job = FailoverJob.objects.get()
    assert job.phase == FailoverJob.Phase.PROMOTED
    assert shard().primary == PRIMARY  # the map is not written yet
    out = failover()
    assert f"finishing failover job {job.pk} from phase promoted" in out
    job.refresh_from_db()
    assert job.phase == FailoverJob.Phase.DONE
    assert [s["step"] for s in job.steps] == [
        "planned",
        "caught up",
        "promoted",
        "replicas repointed",
        "map version written",
        "done",
    ]
    assert shard().primary == job.new_primary


def test_shard_watch_fails_over_a_primary_after_its_consecutive_failed_probes():
    Deposit.objects.create(account=5, amount=1)
    topology("kill", SERVER[PRIMARY])
    out = io.StringIO()
    call_command("shard_watch", GROUP, "--once", "--failures", "2", "--interval", "0.2", stdout=out)
    text = out.getvalue()
    assert "failed probe 1/2" in text and "failed probe 2/2" in text
    assert "failover done" in text
    assert shard().primary in REPLICAS


def test_shard_watch_stops_cleanly_on_sigterm():
    env = test_process_env()
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "shard_watch", GROUP, "--interval", "0.2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # until it says it watches (system check notes first)
            seen.append(line)
            if line.startswith("watching ha"):
                break
        else:
            raise AssertionError("shard_watch ended before watching:\n" + "".join(seen))
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert rest.strip().endswith("stopped")
    assert "Traceback" not in rest


# -- switchover -----------------------------------------------------------------------------


def test_a_switchover_under_writes_loses_nothing_and_no_write_waits_over_a_second():
    writer = Writer(account=9)
    writer.start()
    writer.wait_for(100)
    out = failover("--switchover", "--to", "h0_r2")
    count = len(writer.acked)
    writer.wait_for(count + 100)  # writes go on, on the new primary
    writer.finish()
    assert "switchover done" in out
    now = shard()
    assert now.primary == "h0_r2"
    assert set(now.replicas) == {"h0_r1", PRIMARY} and now.demoted == ()
    assert writer.longest <= 1.0, f"a write took {writer.longest:.3f}s"
    assert ids_held("h0_r2", writer.acked) == set(writer.acked)
    old = server_state(PRIMARY)
    assert old["read_only"] and old["running"] and old["source_port"] == port("h0_r2")
    other = server_state("h0_r1")
    assert other["running"] and other["source_port"] == port("h0_r2")
    wait_applied(PRIMARY, "h0_r2")
    assert ids_held(PRIMARY, writer.acked) == set(writer.acked)
