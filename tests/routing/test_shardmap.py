"""The versioned shard map: version 1 from settings, later versions from the catalog,
re-read when the lease runs out."""

import time

import pytest
from django.test import override_settings

from django_shards import shard_for
from django_shards.models import ShardMapVersion
from django_shards.shardmap import get_map, registry, write_version
from tests.testapp.models import Event

pytestmark = pytest.mark.django_db(databases="__all__")


def split_events_map():
    """Version 2 of the events map: s4 takes [1500, 2000) from s1."""
    current = get_map("events")
    layout = current.strategy.split(current.layout, "s1", "s4", at=1500)
    shards = [*current.shards.values(), current.shards["s1"].__class__("s4", "s4", ("s4_r1",))]
    return shards, layout


def test_version_one_comes_from_settings():
    shard_map = get_map("events")
    assert shard_map.version == 1
    assert [s.name for s in shard_map.owning_shards] == ["s0", "s1", "s2"]
    assert shard_for(Event, 1700).name == "s1"


def test_a_written_version_routes_at_once_in_this_process():
    shards, layout = split_events_map()
    new = write_version("events", shards, layout, note="test split")
    assert new.version == 2
    assert ShardMapVersion.objects.get(group="events", version=2).note == "test split"
    assert shard_for(Event, 1700).name == "s4"
    assert shard_for(Event, 1200).name == "s1"
    assert Event.objects.filter(account__gte=1000, account__lt=2000).target_shards() == [
        "s1",
        "s4",
    ]


def test_another_process_sees_a_new_version_once_its_lease_runs_out():
    from django.conf import settings

    with override_settings(DJANGO_SHARDS={**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": 0.3}):
        assert shard_for(Event, 1700).name == "s1"  # this process now holds version 1
        shards, layout = split_events_map()
        # written by "another process": straight into the catalog
        ShardMapVersion.objects.create(
            group="events",
            version=2,
            strategy="django_shards.strategies.range.RangeStrategy",
            shards=[s.as_dict() for s in shards],
            layout=layout.to_json(),
        )
        assert shard_for(Event, 1700).name == "s1"  # still within the lease
        time.sleep(0.35)
        assert shard_for(Event, 1700).name == "s4"
        assert get_map("events").version == 2


def test_concurrent_writers_of_the_same_version_cannot_both_win():
    from django.db import IntegrityError

    shards, layout = split_events_map()
    write_version("events", shards, layout)
    with pytest.raises(IntegrityError):
        ShardMapVersion.objects.create(
            group="events", version=2, strategy="x", shards=[], layout=[]
        )


def test_reset_registry_reads_the_catalog_again():
    shards, layout = split_events_map()
    write_version("events", shards, layout)
    registry.reset()
    assert get_map("events").version == 2
