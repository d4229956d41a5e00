"""``shard_failover`` and ``shard_watch``: bad input is refused with one sentence and
nothing changed, on every backend; a demoted alias is recorded in the map and never
served. (The failovers themselves: ``test_failover.py``, on the MariaDB HA trio.)"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from django_shards.conf import Shard
from django_shards.models import FailoverJob
from django_shards.shardmap import ShardMap, registry
from tests.support.backend import MARIADB

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def refused(command: str, *argv: str) -> CommandError:
    with pytest.raises(CommandError) as raised:
        call_command(command, *argv, stdout=io.StringIO())
    assert "Traceback" not in str(raised.value)
    return raised.value


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope", "h0"], "Shard group 'nope' does not exist"),
        (["ha", "h9"], "no shard named 'h9'"),
        (["ha", "h0", "--to", "s0_r1", "--switchover"], "not a replica"),
    ],
)
def test_shard_failover_refuses_bad_input_and_changes_nothing(argv, message):
    version = registry.refresh("ha").version
    error = refused("shard_failover", *argv, "--no-input")
    assert message in str(error)
    assert error.returncode == 2
    assert registry.refresh("ha").version == version
    assert not FailoverJob.objects.exists()


@pytest.mark.skipif(MARIADB, reason="the SQLite run")
def test_shard_failover_says_sqlite_has_no_replication_to_promote():
    error = refused("shard_failover", "ha", "h0", "--no-input")
    assert "is not a MariaDB/MySQL database" in str(error)
    assert not FailoverJob.objects.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0"], "--interval must be a positive number"),
        (["--failures", "0"], "--failures must be at least 1"),
        (["nope"], "Shard group 'nope' does not exist"),
    ],
)
def test_shard_watch_refuses_bad_input(argv, message):
    assert message in str(refused("shard_watch", *argv, "--once"))


def test_a_demoted_alias_is_kept_in_the_map_and_never_serves_the_shard():
    shard = Shard("h0", "h0_r1", ("h0_r2",), ("h0",))
    assert Shard.from_dict(shard.as_dict()) == shard
    assert shard.as_dict()["demoted"] == ["h0"]
    assert "demoted" not in Shard("x", "a").as_dict()  # versions without one stay as they were
    assert shard.aliases == ("h0_r1", "h0_r2")
    current = registry.refresh("ha")
    demoted = ShardMap(
        group="ha",
        version=current.version,
        strategy=current.strategy,
        layout=current.layout,
        shards={"h0": shard},
    )
    assert demoted.shard_for_alias("h0") is None
    assert demoted.shard_for_key(1).primary == "h0_r1"
