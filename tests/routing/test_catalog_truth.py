"""The catalog is the truth once data exists: version 1 is recorded at the first migrate,
routing follows the stored versions whatever the settings say later, settings that would
place keys otherwise are E030, aliases the catalog names but DATABASES lacks are E031."""

import copy

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_shards import shard_for
from django_shards.catalog import record_initial_versions
from django_shards.checks import check_catalog_agrees
from django_shards.conf import Shard, get_config
from django_shards.exceptions import ShardUnavailable
from django_shards.models import ShardMapVersion
from django_shards.shardmap import get_map, map_from_settings, write_version
from tests.factories import AuthorFactory, EventFactory
from tests.testapp.models import Author, Event

pytestmark = pytest.mark.django_db(databases="__all__")


def shards_settings(**groups):
    """``DJANGO_SHARDS`` with some groups' settings replaced (``events={...}``)."""
    out = copy.deepcopy(settings.DJANGO_SHARDS)
    for name, changes in groups.items():
        out["GROUPS"][name] = {**out["GROUPS"][name], **changes}
    return out


def catalog_messages():
    return [m for m in check_catalog_agrees(databases=["default"]) if m.id.endswith(("30", "31"))]


def test_migrate_recorded_version_1_of_every_group_from_the_settings():
    config = get_config()
    for name, group in config.groups.items():
        row = ShardMapVersion.objects.get(group=name, version=1)
        expected = map_from_settings(group)
        assert row.strategy == group.strategy
        assert row.options == dict(group.options)
        assert row.shards == [s.as_dict() for s in expected.shards.values()]
        assert get_map(name).version == 1
        assert get_map(name).layout.to_json() == expected.layout.to_json()


def test_recording_version_1_is_idempotent_and_never_overwrites_it():
    ShardMapVersion.objects.filter(group="users").delete()
    record_initial_versions(using="default")
    assert ShardMapVersion.objects.filter(group="users").count() == 1
    with override_settings(DJANGO_SHARDS=shards_settings(users={"STRATEGY": "hash"})):
        record_initial_versions(using="default")
    row = ShardMapVersion.objects.get(group="users", version=1)
    assert row.strategy.endswith("ConsistentHashStrategy")
    assert row.options == {"vnodes": 64}
    record_initial_versions(using="s0")  # not the catalog: nothing
    assert ShardMapVersion.objects.filter(group="users").count() == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"STRATEGY": "hash"},
        {"OPTIONS": {"vnodes": 256}},
        {"SHARDS": list(reversed(settings.DJANGO_SHARDS["GROUPS"]["users"]["SHARDS"]))},
    ],
    ids=["strategy", "options", "order"],
)
def test_edited_settings_move_no_key(changes):
    authors = AuthorFactory.create_batch(40)
    owners = {a.pk: shard_for(Author, a.pk).name for a in authors}
    with override_settings(DJANGO_SHARDS=shards_settings(users=changes)):
        assert {a.pk: shard_for(Author, a.pk).name for a in authors} == owners
        found = [Author.objects.get(pk=a.pk).pk for a in authors]
        assert found == [a.pk for a in authors]


def test_a_stored_version_decodes_with_its_own_strategy_after_the_settings_change():
    EventFactory.create_batch(10)
    current = get_map("events")
    shards = [*current.shards.values(), Shard("s4", "s4", ("s4_r1",))]
    write_version("events", shards, current.strategy.split(current.layout, "s1", "s4", 1500))
    with override_settings(DJANGO_SHARDS=shards_settings(events={"STRATEGY": "hash"})):
        assert shard_for(Event, 1700).name == "s4"
        assert shard_for(Event, 1200).name == "s1"
        assert Event.objects.filter(account__gte=1500, account__lt=2000).target_shards() == ["s4"]
        assert Event.objects.filter(account__lt=1000).count() == len(
            [e for e in Event.objects.on_shard("s0")]
        )


def test_e030_names_each_placement_difference_and_shard_split():
    cases = {
        "strategy": ("users", {"STRATEGY": "hash"}, "STRATEGY is 'hash', the catalog's"),
        "options": ("users", {"OPTIONS": {"vnodes": 128}}, "'vnodes': 128"),
        "names": (
            "metrics",
            {"SHARDS": [{"NAME": f"m{i}", "PRIMARY": f"s{i}"} for i in range(4)]},
            "SHARDS are m0, m1, m2, m3, the catalog's s0, s1, s2, s3",
        ),
        "hash order": (
            "metrics",
            {"SHARDS": list(reversed(settings.DJANGO_SHARDS["GROUPS"]["metrics"]["SHARDS"]))},
            "s0 owns",
        ),
        "ranges": (
            "events",
            {
                "SHARDS": [
                    {**s, "RANGE": r}
                    for s, r in zip(
                        settings.DJANGO_SHARDS["GROUPS"]["events"]["SHARDS"],
                        [[None, 500], [500, 2000], [2000, None]],
                        strict=True,
                    )
                ]
            },
            "s0 owns",
        ),
    }
    problems = []
    for case, (group, changes, expected) in cases.items():
        with override_settings(DJANGO_SHARDS=shards_settings(**{group: changes})):
            messages = catalog_messages()
        ids = [m.id for m in messages]
        text = " ".join(m.msg + " " + m.hint for m in messages)
        if ids != ["django_shards.E030"]:
            problems.append(f"{case}: {ids} {text}")
        elif expected not in text or "shard_split" not in text or group not in messages[0].obj:
            problems.append(f"{case}: {text}")
    assert problems == []


def test_settings_that_agree_with_the_catalog_are_clean():
    assert catalog_messages() == []
    # the order of a consistent_hash or range group's SHARDS does not place keys
    users = list(reversed(settings.DJANGO_SHARDS["GROUPS"]["users"]["SHARDS"]))
    events = list(reversed(settings.DJANGO_SHARDS["GROUPS"]["events"]["SHARDS"]))
    with override_settings(
        DJANGO_SHARDS=shards_settings(users={"SHARDS": users}, events={"SHARDS": events})
    ):
        assert catalog_messages() == []


def test_e030_only_runs_when_asked_for_the_catalog_database():
    with override_settings(DJANGO_SHARDS=shards_settings(users={"STRATEGY": "hash"})):
        assert check_catalog_agrees(databases=None) == []
        assert check_catalog_agrees(databases=["s0"]) == []
        with pytest.raises(SystemCheckError, match="E030"):
            call_command("check", "--database", "default")


def test_an_alias_the_catalog_names_but_databases_lacks():
    current = get_map("events")
    moved = [
        Shard("s1", "s9", ("s9_r1",)) if s.name == "s1" else s for s in current.shards.values()
    ]
    write_version("events", moved, current.layout, note="s1 moved to a new server")
    Event.objects.create(account=5, kind="open")  # s0: still fine

    messages = catalog_messages()
    assert [m.id for m in messages] == ["django_shards.E031", "django_shards.E031"]
    assert "'s9'" in messages[0].msg and "primary of shard 's1'" in messages[0].msg
    assert "'s9_r1'" in messages[1].msg and "replica of shard 's1'" in messages[1].msg

    with pytest.raises(ShardUnavailable, match=r"'s9'.*not in DATABASES.*E031"):
        list(Event.objects.filter(account=1500))
    with pytest.raises(ShardUnavailable, match="'s9'"):
        Event.objects.create(account=1500, kind="open")
    assert Event.objects.filter(account=5).count() == 1


def test_a_replica_missing_from_databases_is_skipped_for_reads():
    current = get_map("events")
    moved = [
        Shard("s1", "s1", ("s9_r1",)) if s.name == "s1" else s for s in current.shards.values()
    ]
    write_version("events", moved, current.layout)
    Event.objects.create(account=1500, kind="open")
    assert Event.objects.eventual().filter(account=1500).count() == 1
    assert [m.id for m in catalog_messages()] == ["django_shards.E031"]
