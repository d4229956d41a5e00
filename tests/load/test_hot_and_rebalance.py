"""Hot shards by load and ``shard_rebalance``: skewed traffic (real ORM queries through the
router, then ``load.flush()``) makes the right shard hot by load and not by rows, its
suggested split key falls in the hot key band, and a rebalance splits it onto the spare of
``SPARES`` with every row readable by key exactly once.

The ``events`` group is ``range``: s0 ``[-inf, 1000)``, s1 ``[1000, 2000)``, s2
``[2000, +inf)``. The tests are transactional (a split commits on the catalog, the source
and the spare ``s4``).
"""

from __future__ import annotations

import io
import json
from collections import Counter

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from django_shards import load, shard_for
from django_shards.models import ShardMapVersion, SplitJob
from django_shards.resharding.plan import default_split_point
from django_shards.resharding.rebalance import free_spares
from django_shards.shardmap import get_map, registry
from tests.support.splitting import MAP_LEASE_SECONDS, wait_for_target_replicas
from tests.testapp.models import Event

db = pytest.mark.django_db(transaction=True, databases="__all__")

#: the window the load is read over here: short, so a test's few hundred queries are
#: well over HOT_MIN_QUERIES_PER_SECOND
WINDOW_SECONDS = 30.0
#: rows per shard: even, and far under HOT_MIN_ROWS (no shard is hot by rows)
ROWS = {"s0": range(0, 200), "s1": range(1000, 1200), "s2": range(2000, 2200)}
#: the hot key band on s2, away from its row median (2000..2219's median is ~2110)
HOT_BAND = range(2600, 2620)


@pytest.fixture
def skewed():
    """Short window and lease; 620 events, one per account (200 on s0, s1, 220 on s2);
    then 400 reads of the hot band, 10 of each other shard, flushed to the catalog."""
    djs = {
        **settings.DJANGO_SHARDS,
        "LOAD_WINDOW_SECONDS": WINDOW_SECONDS,
        "MAP_LEASE_SECONDS": MAP_LEASE_SECONDS,
    }
    with override_settings(DJANGO_SHARDS=djs):  # also forgets counts of earlier tests
        accounts = [a for keys in ROWS.values() for a in keys] + list(HOT_BAND)
        Event.objects.bulk_create([Event(account=a, kind="open", amount=a) for a in accounts])
        for i in range(400):
            assert Event.objects.get(account=HOT_BAND[i % len(HOT_BAND)]).kind == "open"
        for shard in ("s0", "s1"):
            for a in ROWS[shard][:10]:
                Event.objects.get(account=a)
        assert load.flush() >= 3
        yield accounts


def shard_status_json(*argv: str) -> dict:
    out = io.StringIO()
    call_command("shard_status", "events", "--json", *argv, stdout=out)
    return {s["name"]: s for s in json.loads(out.getvalue())["groups"][0]["shards"]}


def rebalance(*argv: str) -> str:
    out = io.StringIO()
    call_command("shard_rebalance", *argv, stdout=out)
    return out.getvalue()


def state() -> tuple:
    """What a rebalance changes: map versions, split jobs, free spares, the spare's tables."""
    registry.reset()
    versions = list(ShardMapVersion.objects.values_list("group", "version"))
    jobs = list(SplitJob.objects.values_list("pk", "phase"))
    return versions, jobs, free_spares(), get_map("events").version


@db
def test_skewed_traffic_makes_the_right_shard_hot_by_load_and_not_by_rows(skewed):
    shards = shard_status_json("--counts")
    assert shards["s2"]["hot"] == ["load"]
    assert shards["s0"]["hot"] == [] and shards["s1"]["hot"] == []
    s2_load = shards["s2"]["load"]
    assert s2_load["share"] > 0.9
    assert s2_load["reads_per_second"] == pytest.approx(400 / WINDOW_SECONDS, rel=0.05)
    assert s2_load["writes_per_second"] > 0  # the bulk insert
    assert shards["s0"]["load"]["reads_per_second"] == pytest.approx(10 / WINDOW_SECONDS)
    assert sum(s["load"]["share"] for s in shards.values()) == pytest.approx(1.0)

    out = io.StringIO()
    call_command("shard_status", "events", stdout=out)
    text = out.getvalue()
    s2_row = next(line for line in text.splitlines() if line.startswith("s2 "))
    assert s2_row.endswith("HOT: load") and f"{400 / WINDOW_SECONDS:.1f}" in s2_row
    assert "reads/s" in text and "writes/s" in text
    assert "events/s2: hot shard (load " in text


@db
def test_suggested_split_key_falls_in_the_hot_band_though_the_row_median_is_elsewhere(skewed):
    s2 = shard_status_json()["s2"]
    assert s2["suggested_split_at"] in HOT_BAND
    assert s2["suggestion"].endswith(f"--at {s2['suggested_split_at']}")
    row_median = default_split_point(get_map("events"), "s2")
    assert row_median not in HOT_BAND  # the rows' median is where the rows are


@db
def test_dry_run_prints_the_plan_and_changes_nothing(skewed):
    before = state()
    output = rebalance("--dry-run")
    assert "1. events/s2 (hot by load) -> new shard s2_1 on s4 (replicas s4_r1)" in output
    at = shard_status_json()["s2"]["suggested_split_at"]
    assert f"split at {at!r}: " in output
    assert "dry run: nothing was changed." in output
    assert state() == before
    data = json.loads(rebalance("--dry-run", "--json", "events"))
    assert data["dry_run"] is True and data["done"] == []
    (step,) = data["plan"]
    assert (step["source"], step["target"], step["primary"], step["hot"]) == (
        "s2",
        "s2_1",
        "s4",
        ["load"],
    )
    assert step["at"] == at
    assert step["moving_rows"] == {"testapp.Event": sum(1 for a in HOT_BAND if a >= at)}
    assert state() == before


@db
def test_rebalance_splits_the_hot_shard_onto_the_spare_and_every_row_is_read_once(skewed):
    wait_for_target_replicas()
    at = shard_status_json()["s2"]["suggested_split_at"]
    version = get_map("events").version
    output = rebalance("--no-input")
    assert "split s2 -> s2_1 of group 'events' done:" in output
    registry.reset()
    shard_map = get_map("events")
    assert shard_map.version == version + 2
    assert shard_map.shards["s2_1"].primary == "s4"
    assert shard_map.strategy.describe(shard_map.layout)["s2_1"] == f"[{at}, +inf)"
    assert free_spares() == []
    accounts = skewed
    for a in accounts:
        expected = "s2_1" if a >= at else shard_for(Event, a).name
        assert shard_for(Event, a).name == expected
        assert Event.objects.filter(account=a).count() == 1, a
        assert Event.objects.get(account=a).amount == a
    assert Event.objects.count() == len(accounts)  # a fan-out over every shard, s2_1 included
    placed = Counter(shard_for(Event, a).name for a in accounts)
    assert placed["s2_1"] == sum(1 for a in HOT_BAND if a >= at)


@db
def test_no_spare_left_is_refused_and_changes_nothing(skewed):
    before = state()
    djs = {**settings.DJANGO_SHARDS, "SPARES": []}
    with override_settings(DJANGO_SHARDS=djs), pytest.raises(CommandError) as refused:
        rebalance("--no-input", "events")
    assert refused.value.returncode == 2
    assert "No free spare to split the hot shards onto (events/s2)" in str(refused.value)
    assert "nothing was changed" in str(refused.value)
    assert state() == before


@db
def test_nothing_hot_says_so():
    assert rebalance("--no-input").strip() == "No hot shard: nothing to rebalance."
    assert json.loads(rebalance("--json")) == {
        "dry_run": False,
        "plan": [],
        "skipped": [],
        "done": [],
    }


@pytest.mark.django_db(databases="__all__")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "Shard group 'nope' does not exist"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["events", "users"], "unrecognized arguments: users"),
    ],
)
def test_bad_input_is_refused_with_exit_code_2(argv, message):
    with pytest.raises(CommandError) as refused:
        rebalance(*argv)
    assert refused.value.returncode == 2
    assert message in str(refused.value)
