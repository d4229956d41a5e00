"""A catalog that fails is never mistaken for an empty one.

The catalog holds the map versions a split writes. If a process that lost the catalog fell
back to version 1 from settings, it would route reads and writes of moved keys to shards
that no longer own them, and writes made there would be deleted by the split's clean-up.
So: a process that holds a map keeps reading by it and refuses writes (``ShardUnavailable``)
until the catalog answers again; a process with no map yet refuses to route at all;
``shard_status`` reports the catalog as a problem. A catalog whose tables do not exist yet
(not migrated) still means version 1.

The catalog is made unreachable for real: its connection is pointed at a file in a missing
directory (SQLite) or at a closed port (MariaDB).
"""

from __future__ import annotations

import contextlib
import io
import json
import time

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import OperationalError, connections
from django.test import override_settings

from django_shards import shard_for
from django_shards.exceptions import ShardUnavailable
from django_shards.models import ShardMapVersion
from django_shards.shardmap import get_map, registry, write_version
from tests.support.backend import unreachable
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

LEASE = 0.2


def dead_catalog() -> contextlib.AbstractContextManager[None]:
    """The catalog alias (``default``) cannot connect while the block runs."""
    return unreachable("default")


@pytest.fixture
def short_lease():
    with override_settings(DJANGO_SHARDS={**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": LEASE}):
        yield


def split_events() -> None:
    """Version 2 of the events map, read by this process: s4 takes [1500, 2000) from s1."""
    current = get_map("events")
    layout = current.strategy.split(current.layout, "s1", "s4", at=1500)
    shards = [*current.shards.values(), current.shards["s1"].__class__("s4", "s4", ("s4_r1",))]
    with connections["s4"].schema_editor() as editor:  # dropped again by conftest
        editor.create_model(Event)
    write_version("events", shards, layout, note="test split")
    assert get_map("events").version == 2  # this process now holds version 2


def test_the_dead_catalog_really_fails() -> None:
    with dead_catalog(), pytest.raises(OperationalError):
        ShardMapVersion.objects.using("default").count()


def test_a_held_map_keeps_routing_reads_and_refuses_writes_until_the_catalog_answers(
    short_lease,
) -> None:
    split_events()
    Event.objects.create(account=1700, kind="before")  # on s4, by version 2
    with dead_catalog():
        time.sleep(LEASE * 1.5)  # the lease ran out: the next use re-reads the catalog
        # reads: still by version 2, never by version 1 from settings
        assert shard_for(Event, 1700).name == "s4"
        assert get_map("events").version == 2
        assert [e.kind for e in Event.objects.filter(account=1700)] == ["before"]
        # writes: refused, naming the catalog, and nothing is written anywhere
        with pytest.raises(ShardUnavailable, match="catalog") as refused:
            Event.objects.create(account=1700, kind="while down")
        assert "events" in str(refused.value) and "Retry" in str(refused.value)
        with pytest.raises(ShardUnavailable):
            Event.objects.filter(account=1700).update(kind="while down")
        with pytest.raises(ShardUnavailable):
            Event.objects.filter(account=1700).delete()
    assert [e.kind for e in Event.objects.on_shard("s4").strong().all()] == ["before"]
    assert not Event.objects.on_shard("s1").strong().filter(account=1700).exists()
    # the catalog is back: once the map is re-read, writes go through again
    time.sleep(LEASE * 1.5)
    assert get_map("events").stale is None
    Event.objects.create(account=1800, kind="after")
    assert shard_for(Event, 1800).name == "s4"
    assert Event.objects.on_shard("s4").strong().filter(kind="after").count() == 1


def test_within_the_lease_a_dead_catalog_changes_nothing(
    short_lease,
) -> None:
    """Within the lease nothing is re-read, so nothing changes; only a stale map refuses."""
    split_events()
    with dead_catalog():
        Event.objects.create(account=10, kind="within the lease")  # map still fresh
    assert Event.objects.filter(account=10).count() == 1


def test_a_process_with_no_map_yet_refuses_to_route_rather_than_guess() -> None:
    split_events()
    registry.reset()  # like a fresh process
    with dead_catalog():
        with pytest.raises(ShardUnavailable, match="cannot be read from the catalog"):
            shard_for(Event, 1700)
        with pytest.raises(OperationalError):  # ShardUnavailable is one
            list(Event.objects.filter(account=1700))
    assert shard_for(Event, 1700).name == "s4"


def test_shard_status_reports_the_catalog_and_check_fails() -> None:
    split_events()
    registry.reset()
    with dead_catalog():
        out, err = io.StringIO(), io.StringIO()
        with pytest.raises(CommandError) as exited:
            call_command("shard_status", "--check", stdout=out, stderr=err)
        assert exited.value.returncode == 1
        # callers written when --check called sys.exit(1) still see a SystemExit(1)
        assert isinstance(exited.value, SystemExit)
        assert exited.value.code == 1
        assert "catalog 'default' unreadable" in out.getvalue()
        out = io.StringIO()
        call_command("shard_status", "--json", stdout=out)  # exit 0 without --check
    data = json.loads(out.getvalue())
    assert data["healthy"] is False
    assert data["catalog_error"]
    assert any("catalog 'default' unreadable" in p for p in data["problems"])


def test_a_catalog_without_tables_still_means_version_one() -> None:
    """Not an outage: before ``migrate`` the settings are the map."""
    conn = connections["default"]
    table = ShardMapVersion._meta.db_table
    with conn.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {conn.ops.quote_name(table)} RENAME TO shards_hidden")
    try:
        registry.reset()
        assert get_map("events").version == 1
        assert get_map("events").stale is None
        Event.objects.create(account=1700, kind="v1")
        assert Event.objects.on_shard("s1").strong().filter(kind="v1").count() == 1
    finally:
        with conn.cursor() as cursor:
            cursor.execute(f"ALTER TABLE shards_hidden RENAME TO {conn.ops.quote_name(table)}")
        registry.reset()
