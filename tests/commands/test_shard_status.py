"""``manage.py shard_status``: groups, shards, aliases, ownership, health, rows, hot shards,
``--check`` exit codes, and no password in any output.

Row counts are asserted with ``--counts`` (exact); MariaDB's default estimates come from
the table statistics and may be off.
"""

import io
import json
import re
from collections import Counter

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_shards import shard_for
from django_shards.conf import get_config
from django_shards.models import SplitJob
from django_shards.shardmap import get_map, registry
from django_shards.status import HOT_MIN_ROWS
from tests.factories import AuthorFactory, PostFactory, ReadingFactory
from tests.support.backend import MARIADB, settings_changed, unreachable
from tests.testapp.models import Author, Event, Post, Reading

pytestmark = pytest.mark.django_db(databases="__all__")

#: the sentence ``--check`` stops with, after the report, when something is unhealthy
UNHEALTHY = "Something is unhealthy: the report lists the problems."


def shard_status(*argv: str) -> str:
    out = io.StringIO()
    call_command("shard_status", *argv, stdout=out)
    return out.getvalue()


def status_json(*argv: str) -> dict:
    return json.loads(shard_status("--json", *argv))


def exit_code(*argv: str) -> tuple[int, str]:
    """The exit code of ``shard_status argv`` and what it printed."""
    out = io.StringIO()
    try:
        call_command("shard_status", *argv, stdout=out)
    except CommandError as exc:
        assert str(exc) == UNHEALTHY, exc
        return exc.returncode, out.getvalue()
    return 0, out.getvalue()


def shard_row(output: str, group: str, shard: str) -> str:
    """The table line of ``shard`` under the header of ``group``."""
    block = output.split(f"group {group}: ", 1)[1].split("\n\n", 1)[0]
    return next(line for line in block.splitlines() if line.split()[0] == shard)


def make_events(accounts) -> list[Event]:
    """Events with these account numbers (EventFactory's sequence is left alone: another
    test module counts on it starting at 0)."""
    return Event.objects.bulk_create([Event(account=a, kind="open") for a in accounts])


# -- what the table and the JSON show -------------------------------------------------------


def test_table_shows_every_group_with_its_strategy_version_shards_aliases_and_ownership():
    output = shard_status()
    assert output.startswith(f"catalog: {get_config().catalog}\n")
    for name in get_config().groups:
        shard_map = get_map(name)
        assert f"group {name}: {shard_map.strategy.name}, map version {shard_map.version}, " in (
            output
        )
        owns = shard_map.strategy.describe(shard_map.layout)
        for shard in shard_map.shards.values():
            row = shard_row(output, name, shard.name)
            assert row.split()[1] == shard.primary
            assert ", ".join(shard.replicas) in row
            assert owns[shard.name] in row
            assert " ok " in row
    assert "problems: none" in output
    assert output.rstrip().endswith("overall: healthy")


def test_range_groups_show_key_ranges_and_hash_groups_ring_shares():
    output = shard_status()
    assert "[-inf, 1000)" in shard_row(output, "events", "s0")
    assert "[1000, 2000)" in shard_row(output, "events", "s1")
    assert "[2000, +inf)" in shard_row(output, "events", "s2")
    ring = get_map("users").strategy.share(get_map("users").layout)
    for name, share in ring.items():
        row = shard_row(output, "users", name)
        assert f"{100 * share:.1f}% of ring" in row and f"{100 * share:.1f}%" in row
    assert "25.0%" in shard_row(output, "metrics", "s3")  # hash: four even quarters
    assert "50.0%" in shard_row(output, "legacy", "s1")


def test_json_holds_every_group_shard_alias_version_range_and_share():
    data = status_json()
    assert data["catalog"] == get_config().catalog and data["healthy"] is True
    assert data["problems"] == []
    groups = {g["name"]: g for g in data["groups"]}
    assert set(groups) == set(get_config().groups)
    for name, group in groups.items():
        shard_map = get_map(name)
        assert group["strategy"] == shard_map.strategy.name
        assert group["version"] == shard_map.version
        assert group["healthy"] is True and group["splits"] == []
        owns = shard_map.strategy.describe(shard_map.layout)
        shares = shard_map.strategy.share(shard_map.layout)
        assert [s["name"] for s in group["shards"]] == list(shard_map.shards)
        for shard in group["shards"]:
            expected = shard_map.shard_named(shard["name"])
            assert shard["primary"] == expected.primary
            assert shard["replicas"] == list(expected.replicas)
            assert shard["owns"] == owns[shard["name"]]
            assert shard["share"] == shares.get(shard["name"])
            assert [h["alias"] for h in shard["health"]] == list(expected.aliases)
            roles = ["primary"] + ["replica"] * len(expected.replicas)
            assert [h["role"] for h in shard["health"]] == roles
            for h in shard["health"]:
                assert h["reachable"] and h["healthy"] and h["problem"] is None
                if h["role"] == "replica":
                    assert h["lag_seconds"] is not None
                    assert h["lag_seconds"] <= get_config().max_replica_lag_seconds
    assert groups["events"]["models"] == ["testapp.Event"]
    assert groups["users"]["models"] == ["testapp.Author", "testapp.Follow", "testapp.Post"]


def test_group_argument_shows_only_that_group():
    output = shard_status("legacy")
    assert "group legacy: modulo" in output
    assert "group users:" not in output and "group events:" not in output
    assert [g["name"] for g in status_json("events")["groups"]] == ["events"]


def test_replica_lag_is_shown_in_seconds():
    output = shard_status("users")
    for name in ("s0", "s1", "s2", "s3"):
        assert re.search(r"\s\d+(\.\d+)?s\s", shard_row(output, "users", name))


# -- rows ------------------------------------------------------------------------------


def test_exact_counts_match_the_rows_on_each_shard():
    authors = AuthorFactory.create_batch(12)
    posts = [PostFactory(author=a) for a in authors for _ in range(2)]
    events = make_events(range(0, 3000, 200))  # 5 on each shard of the events group
    readings = ReadingFactory.create_batch(10)
    expected: dict[tuple[str, str, str], int] = Counter()
    for model, objs, key in (
        (Author, authors, "pk"),
        (Post, posts, "author_id"),
        (Event, events, "account"),
        (Reading, readings, "sensor_id"),
    ):
        group = {Author: "users", Post: "users", Event: "events", Reading: "metrics"}[model]
        for obj in objs:
            expected[group, shard_for(model, getattr(obj, key)).name, model._meta.label] += 1

    data = status_json("--counts")
    output = shard_status("--counts")
    for group in data["groups"]:
        for shard in group["shards"]:
            assert shard["rows_exact"] is True
            for label, rows in shard["rows"].items():
                assert rows == expected[group["name"], shard["name"], label], (
                    group["name"],
                    shard["name"],
                    label,
                )
            total = sum(expected[group["name"], shard["name"], m] for m in group["models"])
            assert shard["total_rows"] == total
            row = shard_row(output, group["name"], shard["name"])
            # a cool shard's last columns: total, then reads/s, writes/s and load share
            assert row.split()[-4:] == [str(total), "0.0", "0.0", "0.0%"]
    assert "~" not in output


@pytest.mark.skipif(MARIADB, reason="MariaDB estimates rows from its table statistics")
def test_sqlite_counts_rows_exactly_even_without_counts():
    events = make_events([5, 1500, 1501, 2500, 2501, 2502, 9000, 999, 0])
    per_shard = Counter(shard_for(Event, e.account).name for e in events)
    data = status_json("events")
    rows = {s["name"]: s["rows"]["testapp.Event"] for s in data["groups"][0]["shards"]}
    assert rows == {name: per_shard[name] for name in ("s0", "s1", "s2")}


@pytest.mark.mariadb
def test_mariadb_estimates_are_marked_with_a_tilde():
    output = shard_status("events")
    assert re.search(r"\s~\d+\s", shard_row(output, "events", "s0"))
    assert "~ estimated from the database's statistics" in output
    assert all(not s["rows_exact"] for s in status_json("events")["groups"][0]["shards"])


# -- hot shards ------------------------------------------------------------------------


def test_hot_range_shard_is_flagged_with_a_split_at_its_median_key():
    accounts = [(i * 7) % 1000 for i in range(HOT_MIN_ROWS + 200)]  # all on s0: [-inf, 1000)
    Event.objects.bulk_create([Event(account=a, kind="open") for a in accounts])
    Event.objects.bulk_create([Event(account=1000 + i, kind="pay") for i in range(10)])
    Event.objects.bulk_create([Event(account=2000 + i, kind="pay") for i in range(10)])
    median = sorted(accounts)[len(accounts) // 2]
    suggestion = f"manage.py shard_split events s0 --to NEW --primary ALIAS --at {median}"

    output = shard_status("--counts")
    assert shard_row(output, "events", "s0").endswith("HOT: rows")
    assert "HOT" not in shard_row(output, "events", "s1")
    problems = output.split("problems:", 1)[1]
    assert f"events/s0: hot shard ({len(accounts)} rows, over 1.5x the mean)" in problems
    assert f"suggested: {suggestion}" in problems

    data = status_json("events", "--counts")
    s0, s1, _ = data["groups"][0]["shards"]
    assert s0["name"] == "s0" and s0["hot"] == ["rows"] and s0["suggestion"] == suggestion
    assert s0["suggested_split_at"] == median  # no load sample: the row median
    assert s1["hot"] == [] and s1["suggested_split_at"] is None
    assert data["healthy"] is True  # hot is a warning
    assert data["groups"][0]["balance"] == pytest.approx(len(accounts) / ((len(accounts) + 20) / 3))
    code, output = exit_code("events", "--counts", "--check")
    assert code == 0 and "overall: healthy" in output


def test_hot_shard_factor_setting_decides_what_is_hot():
    accounts = [(i * 7) % 1000 for i in range(HOT_MIN_ROWS + 200)]
    make_events(accounts)
    make_events(range(1000, 1000 + 600))
    make_events(range(2000, 2000 + 600))
    s0 = status_json("events", "--counts")["groups"][0]["shards"][0]
    assert s0["hot"] == []  # 1200 rows against a mean of 800: under 1.5x
    djs = {**settings.DJANGO_SHARDS, "HOT_SHARD_FACTOR": 1.2}
    with override_settings(DJANGO_SHARDS=djs):
        s0 = status_json("events", "--counts")["groups"][0]["shards"][0]
    assert s0["hot"] == ["rows"]


# -- splits in progress ----------------------------------------------------------------


def test_splits_in_progress_are_listed_and_a_failed_one_is_unhealthy():
    shard_map = get_map("events")
    job = SplitJob.objects.using(get_config().catalog).create(
        group="events",
        source="s0",
        target="s4",
        target_primary="s4",
        base_version=shard_map.version,
        new_shards=[s.as_dict() for s in shard_map.shards.values()],
        new_layout=shard_map.layout.to_json(),
        phase=SplitJob.Phase.COPYING,
        frozen=True,
        progress={"copy": {"testapp.Event": {"rows": 1200, "after": 1300}}},
    )
    registry.reset()
    code, output = exit_code("events", "--check")
    assert code == 0
    assert "group events: range, map version 1, 3 shards, " in output
    assert ", splits in progress: 1\n" in output
    assert (
        f"\n  split s0 -> s4: copying (frozen), 1200 rows copied, copy in progress, "
        f"writes to moving keys frozen (job {job.pk})\n"
    ) in output
    split = status_json("events")["groups"][0]["splits"][0]
    assert split["phase"] == "copying"
    assert split["mode"] == "frozen"
    assert split["copy"] == {"rows": 1200, "tables_done": 0, "tables": 1}
    assert split["lag_events"] is None
    assert "no split in progress" in shard_status("users")

    job.error = "verify: 3 rows differ"
    job.save(using=get_config().catalog)
    code, output = exit_code("events", "--check")
    assert code == 1
    assert f"frozen, FAILED (see problems) (job {job.pk})\n" in output
    assert "  events: split s0 -> s4: verify: 3 rows differ\n" in output


# -- --check and exit codes ------------------------------------------------------------


def test_check_exits_0_when_everything_is_healthy():
    code, output = exit_code("--check")
    assert code == 0
    assert output.rstrip().endswith("overall: healthy")


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_check_exits_1_and_names_the_replica_when_a_replica_is_unreachable():
    with unreachable("s1_r1"):
        code, output = exit_code("events", "--check")
        assert code == 1
        assert "s1_r1 unreachable: " in shard_row(output, "events", "s1")
        assert " ok " in shard_row(output, "events", "s0")
        assert re.search(r"^  events/s1: s1_r1 unreachable: ", output, re.M)
        assert output.rstrip().endswith("overall: UNHEALTHY")

        code, output = exit_code("events", "--json", "--check")
        assert code == 1
        data = json.loads(output)  # the JSON stays clean: nothing else on stdout
        assert data["healthy"] is False
        s1 = data["groups"][0]["shards"][1]
        replica = s1["health"][1]
        assert replica["alias"] == "s1_r1" and replica["reachable"] is False
        assert replica["healthy"] is False and replica["problem"].startswith("unreachable: ")
        assert s1["healthy"] is False
        assert any(p.startswith("events/s1: s1_r1 unreachable") for p in data["problems"])

        # without --check the report is printed and the command succeeds
        code, output = exit_code("events")
        assert code == 0 and "overall: UNHEALTHY" in output
    code, output = exit_code("events", "--check")
    assert code == 0


def test_unknown_group_is_a_usage_error_naming_it_and_the_groups():
    with pytest.raises(CommandError) as excinfo:
        shard_status("nope")
    assert excinfo.value.returncode == 2
    message = str(excinfo.value)
    assert "'nope' does not exist" in message
    assert "groups: users, events, metrics, members, legacy, ha" in message


def test_bad_arguments_are_a_usage_error():
    with pytest.raises(CommandError) as excinfo:
        shard_status("users", "events")
    assert excinfo.value.returncode == 2


# -- secrets ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_no_password_is_printed_in_any_format_even_when_connections_fail():
    """The real password of every alias (MariaDB) and a planted one on an alias whose
    login then fails (MariaDB) or is ignored (SQLite) never reach the output."""
    planted = "pl4nted-Secret-9f2c"
    with settings_changed("s2_r1", PASSWORD=planted), unreachable("s1_r1"):
        outputs = [
            exit_code(*argv)[1]
            for argv in (
                (),
                ("--counts",),
                ("--json",),
                ("--json", "--counts"),
                ("--check",),
                ("--json", "--check"),
                ("events", "--check"),
            )
        ]
    passwords = {planted} | {
        db["PASSWORD"] for db in settings.DATABASES.values() if db.get("PASSWORD")
    }
    assert "s1_r1 unreachable" in outputs[0]
    if MARIADB:
        assert "s2_r1 unreachable" in outputs[0]  # the planted password was refused
    for output in outputs:
        for password in passwords:
            assert password not in output
