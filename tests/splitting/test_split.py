"""``shard_split``: splitting one shard into a new one online, for every strategy.

The tests are transactional (the split commits on the catalog, the source and the target,
and some of them run writers on threads of their own). Where a row should be is computed
here from the placement formulas of the design (SHA-1 ring, MD5 ranges, key ranges), not
asked of the library, and where a row is is read with plain SQL on each primary alias.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from bisect import bisect_right
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connections

import django_shards
from django_shards.exceptions import ShardMoving, SplitError
from django_shards.management.commands.shard_split import Command as SplitCommand
from django_shards.models import ShardMapVersion, SplitJob
from django_shards.resharding import SplitRunner, create_job, plan_split
from django_shards.resharding.runner import LEASE_MARGIN_SECONDS
from django_shards.shardmap import get_map, registry
from tests.support.backend import MARIADB
from tests.support.splitting import MAP_LEASE_SECONDS, TARGETS, FileHold, wait_for_target_replicas
from tests.testapp.models import Author, Event, Follow, LegacyCode, Post, Reading

db = pytest.mark.django_db(transaction=True, databases="__all__")

REPO = Path(__file__).resolve().parents[2]
GROUP_MODELS = {
    "users": [Author, Post, Follow],
    "events": [Event],
    "metrics": [Reading],
    "legacy": [LegacyCode],
}
KEY_ATTNAME = {Author: "id", Post: "author_id", Follow: "follower_id", Event: "account",
               Reading: "sensor_id", LegacyCode: "code"}  # fmt: skip
SOURCE_ALIASES = ["s0", "s1", "s2", "s3"]


# -- placement, computed from the design's formulas ------------------------------------------


def _sha1_int(text: str) -> int:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16)


def _md5_point(key) -> int:
    return int.from_bytes(hashlib.md5(str(key).encode()).digest()[:8], "big")


class Ring:
    """The users group's SHA-1 ring: shard ``s`` has tokens sha1(f"{s}:{i}"), i < vnodes; a
    key belongs to the owner of the first token strictly greater than its point."""

    def __init__(self, tokens: dict[str, list[int]]):
        pairs = sorted((t, name) for name, owned in tokens.items() for t in owned)
        self.tokens = tokens
        self._points = [t for t, _ in pairs]
        self._owners = [name for _, name in pairs]

    @classmethod
    def initial(cls) -> Ring:
        group = settings.DJANGO_SHARDS["GROUPS"]["users"]
        vnodes = group["OPTIONS"]["vnodes"]
        names = [s["NAME"] for s in group["SHARDS"]]
        return cls({s: [_sha1_int(f"{s}:{i}") for i in range(vnodes)] for s in names})

    def split(self, source: str, target: str) -> Ring:
        """The target takes every other token of the source, in ring order."""
        owned = sorted(self.tokens[source])
        return Ring({**self.tokens, source: owned[0::2], target: owned[1::2]})

    def owner(self, key) -> str:
        i = bisect_right(self._points, _sha1_int(str(key)))
        return self._owners[i % len(self._owners)]


def hash_range(index: int, count: int) -> tuple[int, int]:
    return index * 2**64 // count, (index + 1) * 2**64 // count


# -- reading the databases directly -----------------------------------------------------------


def tables_on(alias: str) -> set[str]:
    conn = connections[alias]
    with conn.cursor() as cursor:
        return set(conn.introspection.table_names(cursor))


def rows_on(alias: str, model, *columns: str) -> set:
    """Values of ``columns`` (default: the pk) of every row of ``model`` on ``alias``."""
    conn = connections[alias]
    table = model._meta.db_table
    if table not in tables_on(alias):
        return set()
    columns = columns or (model._meta.pk.column,)
    q = conn.ops.quote_name
    with conn.cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(q(c) for c in columns)} FROM {q(table)}")
        rows = cursor.fetchall()
    return {r[0] if len(columns) == 1 else tuple(r) for r in rows}


def snapshot(group: str, aliases=(*SOURCE_ALIASES, *TARGETS)) -> dict[tuple[str, str], set]:
    """(alias, model label) -> set of (pk, key) on that alias's primary."""
    return {
        (alias, model._meta.label): rows_on(alias, model, model._meta.pk.column, KEY_ATTNAME[model])
        for alias in aliases
        for model in GROUP_MODELS[group]
    }


def map_versions() -> dict[str, int]:
    registry.reset()
    return {group: get_map(group).version for group in GROUP_MODELS}


def target_state() -> dict[str, set]:
    return {alias: {(t, len(rows_on(alias, m))) for m in _all_models()
                    if (t := m._meta.db_table) in tables_on(alias)}
            for alias in TARGETS}  # fmt: skip


def _all_models():
    return [m for models in GROUP_MODELS.values() for m in models]


DEADLINE_SECONDS = 60.0


@pytest.fixture(autouse=True)
def _short_map_lease(settings):
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": MAP_LEASE_SECONDS}


def wait_until(condition, what: str, alive: threading.Thread | None = None) -> None:
    """Poll ``condition`` until it holds; fail after DEADLINE_SECONDS, or as soon as the
    thread ``alive`` (whose work the condition waits for) has ended without it."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if alive is not None and not alive.is_alive():
            pytest.fail(f"{alive.name} ended before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_SECONDS}s")
        time.sleep(0.01)


class SplitThread(threading.Thread):
    """``shard_split ARGS`` on a thread of its own (own connections), as another process
    would run it, held by ``hold`` if given; ``output`` or ``error`` once it ends."""

    def __init__(self, *args: str, hold: FileHold | None = None) -> None:
        super().__init__(name="shard_split", daemon=True)
        self.args, self.hold, self.output, self.error = args, hold, "", None

    def run(self) -> None:
        try:
            self.output = split(*self.args, hold=self.hold)
        except BaseException as exc:  # noqa: BLE001 - judged by the test
            self.error = exc
        finally:
            connections.close_all()


class Held(FileHold):
    """The runner's ``hold`` hook for a split on a thread: it holds once at each point;
    the test waits until the split is held at a point, then releases it."""

    def wait(self, point: str, runner: threading.Thread) -> None:
        wait_until(lambda: self.held_at() == point, f"split held at {point!r}", alive=runner)


@pytest.fixture
def hold_split(tmp_path):
    """``hold_split(*points)``: a hook that holds a split once at each point."""

    def hold(*points: str) -> Held:
        return Held(points, tmp_path / "held")

    return hold


# -- running the command ----------------------------------------------------------------------


def split(*args: str, hold: FileHold | None = None) -> str:
    """``shard_split ARGS --no-input``'s output; its runner held by ``hold``, if given."""
    wait_for_target_replicas()
    command = SplitCommand()
    command.hold = hold
    out, err = io.StringIO(), io.StringIO()
    call_command(command, *args, "--no-input", stdout=out, stderr=err)
    return out.getvalue()


def split_fails(*args: str) -> str:
    with pytest.raises(CommandError) as excinfo:
        split(*args)
    assert excinfo.value.returncode == 2, excinfo.value
    return str(excinfo.value)


def quiet_runner(job: SplitJob, batch_size: int = 50) -> SplitRunner:
    """A runner whose phases the tests call one by one: the frozen copy's (freeze, copy,
    verify, ...), on MariaDB too (tests/splitting/test_online_split.py runs online)."""
    return SplitRunner(job, batch_size=batch_size, mode="frozen")


def fresh_process_shards(model, keys: list) -> dict[str, str]:
    """``shard_for(model, key).name`` for each key, as a new process on the test databases
    computes it from the catalog."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "SHARDS_USE_TEST_DATABASES": "1",
    }
    if not MARIADB:
        env["SHARDS_SQLITE_DIR"] = os.path.dirname(settings.DATABASES["default"]["NAME"])
    code = (
        "import json, sys, django\n"
        "django.setup()\n"
        "import django_shards\n"
        "from django.apps import apps\n"
        "model = apps.get_model(sys.argv[1])\n"
        "keys = json.loads(sys.argv[2])\n"
        "print(json.dumps({str(k): django_shards.shard_for(model, k).name for k in keys}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, model._meta.label, json.dumps(keys)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def plan_rows(output: str) -> dict[str, tuple[int, int]]:
    """``label -> (moving, of)`` from the plan's "rows that move" lines."""
    lines = output.split("rows that move", 1)[1].splitlines()[1:]
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 4 and parts[2] == "of":
            out[parts[0]] = (int(parts[1]), int(parts[3]))
    return out


# -- data -------------------------------------------------------------------------------------


def authors_on(counts: dict[str, int], ring: Ring) -> list[Author]:
    """Unsaved authors, ``counts[name]`` on each shard ``name`` of the initial ring."""
    wanted, out = dict(counts), []
    while any(wanted.values()):
        a = Author(email="a@example.org")
        name = ring.owner(a.pk)
        if wanted.get(name):
            a.email = f"author{len(out)}@{name}.example.org"
            a.name = f"author {len(out)}"
            out.append(a)
            wanted[name] -= 1
    return out


def make_users(counts: dict[str, int], posts_per_author: int = 2, seed: int = 7):
    ring = Ring.initial()
    authors = authors_on(counts, ring)
    Author.objects.bulk_create(authors)
    Post.objects.bulk_create(
        Post(author=a, title=f"{a.name} post {i}", likes=i)
        for a in authors
        for i in range(posts_per_author)
    )
    rnd = random.Random(seed)
    Follow.objects.bulk_create(
        Follow(follower=a, followee=b)
        for a in authors
        for b in rnd.sample(authors, 2)
        if b.pk != a.pk
    )
    return ring, authors


# -- every strategy ---------------------------------------------------------------------------


@db
def test_consistent_hash_split_moves_authors_with_their_posts_and_follows():
    ring, authors = make_users({"s0": 10, "s1": 40, "s2": 10, "s3": 10})
    new_ring = ring.split("s1", "s4")
    before = snapshot("users")
    totals = {m: m.objects.count() for m in GROUP_MODELS["users"]}
    posts_of = {a.pk: Post.objects.filter(author=a).count() for a in authors}
    follows_of = {a.pk: Follow.objects.filter(follower=a).count() for a in authors}
    version = get_map("users").version
    movers = {a.pk for a in authors if new_ring.owner(a.pk) == "s4"}
    assert movers and all(ring.owner(k) == "s1" for k in movers)
    assert {a.pk for a in authors if new_ring.owner(a.pk) != ring.owner(a.pk)} == movers

    output = split("users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4_r1",
                   "--batch-size", "17")  # fmt: skip

    assert "split s1 -> s4 of group 'users' done" in output
    registry.reset()
    users = get_map("users")
    assert users.version == version + 2  # the pending version, then the cutover
    assert users.shards["s4"].primary == "s4" and users.shards["s4"].replicas == ("s4_r1",)
    # the new ring: s4 took every other token of s1, nobody else's
    assert {n: set(t) for n, t in users.layout.tokens.items()} == {
        n: set(t) for n, t in new_ring.tokens.items()
    }
    after = snapshot("users")
    for model in GROUP_MODELS["users"]:
        label = model._meta.label
        # other shards: untouched
        for alias in ("s0", "s2", "s3"):
            assert after[alias, label] == before[alias, label], (alias, label)
        # the target holds exactly the rows whose key the new map gives it; the source the rest
        moved = {row for row in before["s1", label] if row[1] in movers}
        assert moved, label
        assert after["s4", label] == moved
        assert after["s1", label] == before["s1", label] - moved
        assert before["s4", label] == set()
        assert model.objects.count() == totals[model]
    for a in authors:
        name = new_ring.owner(a.pk)
        assert django_shards.shard_for(Author, a.pk).name == name
        got = Author.objects.strong().get(pk=a.pk)
        assert got.email == a.email
        assert got.post_set.count() == posts_of[a.pk]
        assert got.following.count() == follows_of[a.pk]
        # co-located: the author's posts and follows are on the author's shard
        assert Post.objects.on_shard(name).strong().filter(author_id=a.pk).count() == posts_of[a.pk]
        assert (
            Follow.objects.on_shard(name).strong().filter(follower_id=a.pk).count()
            == (follows_of[a.pk])
        )
    job = SplitJob.objects.get()
    assert job.phase == SplitJob.Phase.DONE and not job.frozen
    moved_authors = sum(1 for a in authors if a.pk in movers)
    assert job.progress["copy"]["testapp.Author"]["rows"] == moved_authors

    # a new process routes by the new map (read from the catalog)
    sample = sorted(movers)[:10] + [a.pk for a in authors if a.pk not in movers][:5]
    assert fresh_process_shards(Author, sample) == {str(k): new_ring.owner(k) for k in sample}


#: online (MariaDB with an OPERATOR account): the moving keys stay writable until the fence
ONLINE = MARIADB and bool(settings.DJANGO_SHARDS.get("OPERATOR"))
#: the lines an online split prints when stdout is not a terminal, catch-up passes aside
ONLINE_SPLIT_LINES = [
    r"creating the group's tables on s4",
    r"phase: prepared",
    r"phase: copying",
    r"copy testapp\.Author: \d+ rows \(up to pk \d+\)",  # the first batch, then one each 5 s
    r"phase: catching_up",
    r"verify testapp\.Author: \d+ rows in \d+ batches",
    r"verify testapp\.Follow: \d+ rows in \d+ batches",
    r"verify testapp\.Post: \d+ rows in \d+ batches",
    r"phase: frozen",
    r"phase: verified",
    r"phase: cut_over \(map version \d+; moving keys were frozen 0\.\d\ds\)",
    r"waiting \d+\.\ds \(one map lease\) so no process still reads the moved keys on the source",
    r"phase: cleaned",
    r"phase: done",
    r"split s1 -> s4 of group 'users' done: \d+ rows moved, moving keys frozen 0\.\d\ds\.",
]
#: the lines a split prints when stdout is not a terminal (docs/splitting.md shows them)
SPLIT_LINES = [
    r"creating the group's tables on s4",
    r"phase: prepared",
    r"waiting \d+\.\ds \(one map lease\) so every process sees the freeze",
    r"phase: frozen",
    r"phase: copying",
    r"copy testapp\.Author: \d+ rows \(up to pk \d+\)",  # the first batch, then one each 5 s
    r"verify testapp\.Author: \d+ rows in \d+ batches",
    r"verify testapp\.Follow: \d+ rows in \d+ batches",
    r"verify testapp\.Post: \d+ rows in \d+ batches",
    r"phase: verified",
    r"phase: cut_over \(map version \d+; moving keys were frozen \d+\.\d\ds\)",
    r"waiting \d+\.\ds \(one map lease\) so no process still reads the moved keys on the source",
    r"phase: cleaned",
    r"phase: done",
    r"split s1 -> s4 of group 'users' done: \d+ rows moved, moving keys frozen \d+\.\d\ds\.",
]


@db
def test_a_split_prints_each_phase_wait_and_table_as_the_runbook_shows():
    make_users({"s0": 2, "s1": 12, "s2": 2, "s3": 2})
    version = get_map("users").version

    output = split("users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4_r1")

    lines = output.split("new map:", 1)[1].splitlines()
    progress = lines[lines.index("creating the group's tables on s4") :]
    # a slow machine may print a later batch too (5 s after the first): set those aside
    first_copy = next(i for i, line in enumerate(progress) if line.startswith("copy "))
    later_copies = [line for line in progress[first_copy + 1 :] if line.startswith("copy ")]
    progress = [line for line in progress if line not in later_copies]
    # tables that migrate skipped on the target (its migrations were recorded before it
    # joined the group) are created from the models, and named
    created = [line for line in progress if line.startswith("created ")]
    assert all(re.fullmatch(r"created testapp_\w+(, testapp_\w+)*", line) for line in created)
    assert created in ([], [progress[1]]), output
    progress = [line for line in progress if line not in created]
    if ONLINE:  # a catch-up pass is a batch line too (the first one, then one each 5 s)
        progress = [line for line in progress if not line.startswith("catch-up: ")]
    expected = ONLINE_SPLIT_LINES if ONLINE else SPLIT_LINES
    assert len(progress) == len(expected), output
    for line, pattern in zip(progress, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    for line in later_copies:
        assert re.fullmatch(r"copy testapp\.\w+: \d+ rows \(up to pk \d+\)", line), line
    assert f"map version {version + 2};" in output
    lease = f"waiting {MAP_LEASE_SECONDS + LEASE_MARGIN_SECONDS:.1f}s (one map lease)"
    assert output.count(lease) == (1 if ONLINE else 2), output


@db
def test_hash_split_takes_the_upper_half_of_the_source_range():
    Reading.objects.bulk_create(Reading(sensor_id=n, value=n / 4) for n in range(400))
    lo, hi = hash_range(2, 4)
    mid = lo + (hi - lo) // 2
    on_s2 = {n for n in range(400) if lo <= _md5_point(n) < hi}
    movers = {n for n in on_s2 if _md5_point(n) >= mid}
    assert movers and on_s2 - movers
    before = snapshot("metrics")
    version = get_map("metrics").version

    output = split("metrics", "s2", "--to", "s4", "--primary", "s4", "--batch-size", "32")

    assert "done" in output
    registry.reset()
    metrics = get_map("metrics")
    assert metrics.version == version + 2
    assert [s.name for s in metrics.owning_shards] == ["s0", "s1", "s2", "s3", "s4"]
    after = snapshot("metrics")
    for alias in ("s0", "s1", "s3"):
        assert after[alias, "testapp.Reading"] == before[alias, "testapp.Reading"]
    assert {key for _, key in before["s2", "testapp.Reading"]} == on_s2
    assert {key for _, key in after["s4", "testapp.Reading"]} == movers
    assert {key for _, key in after["s2", "testapp.Reading"]} == on_s2 - movers
    assert Reading.objects.count() == 400
    for n in range(400):
        point = _md5_point(n)
        owner = next(i for i in range(4) if point < hash_range(i, 4)[1])
        expected = "s4" if mid <= point < hi else f"s{owner}"
        assert django_shards.shard_for(Reading, n).name == expected
        assert Reading.objects.strong().get(sensor_id=n).value == n / 4
    assert fresh_process_shards(Reading, sorted(movers)[:5]) == {
        str(k): "s4" for k in sorted(movers)[:5]
    }


def _make_events() -> list[int]:
    accounts = [(n * 137) % 3000 for n in range(300)]  # every account once: 0..2999 step
    Event.objects.bulk_create(
        Event(account=a, kind="pay", amount=i) for i, a in enumerate(accounts)
    )
    return accounts


def _check_range_split(accounts: list[int], at: int, before: dict, version: int) -> None:
    registry.reset()
    events = get_map("events")
    assert events.version == version + 2
    assert events.strategy.describe(events.layout)["s4"].startswith(f"[{at}")
    after = snapshot("events")
    label = "testapp.Event"
    for alias in ("s0", "s2"):
        assert after[alias, label] == before[alias, label]
    assert {k for _, k in after["s4", label]} == {a for a in accounts if at <= a < 2000}
    assert {k for _, k in after["s1", label]} == {a for a in accounts if 1000 <= a < at}
    assert Event.objects.count() == len(accounts)
    for a in accounts:
        expected = "s0" if a < 1000 else "s1" if a < at else "s4" if a < 2000 else "s2"
        assert django_shards.shard_for(Event, a).name == expected
        assert Event.objects.strong().filter(account=a).count() == accounts.count(a)
    # a range scan over the moved keys prunes to the new shard
    assert Event.objects.filter(account__gte=at, account__lt=2000).target_shards() == ["s4"]
    keys = [at, at + 1, 1999, at - 1]
    assert fresh_process_shards(Event, keys) == {
        str(at): "s4",
        str(at + 1): "s4",
        "1999": "s4",
        str(at - 1): "s1",
    }


@db
def test_range_split_at_an_explicit_key():
    accounts = _make_events()
    before, version = snapshot("events"), get_map("events").version
    output = split("events", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4_r1",
                   "--at", "1500", "--batch-size", "25")  # fmt: skip
    assert "split key: 1500" in output
    _check_range_split(accounts, 1500, before, version)


@db
def test_range_split_at_the_median_stored_key_by_default():
    accounts = _make_events()
    stored = sorted(a for a in accounts if 1000 <= a < 2000)
    median = stored[len(stored) // 2]
    assert median not in (1000, 1500)
    before, version = snapshot("events"), get_map("events").version
    output = split("events", "s1", "--to", "s4", "--primary", "s4")
    assert f"split key: {median}" in output
    _check_range_split(accounts, median, before, version)


@db
def test_modulo_group_is_refused_and_nothing_changes():
    LegacyCode.objects.bulk_create(LegacyCode(code=f"C{n:03}") for n in range(20))
    versions, targets, before = map_versions(), target_state(), snapshot("legacy")
    message = split_fails("legacy", "s1", "--to", "s4", "--primary", "s4")
    assert "modulo" in message
    for strategy in ("range", "hash", "consistent_hash"):
        assert strategy in message
    assert not SplitJob.objects.exists()
    assert not ShardMapVersion.objects.filter(version__gt=1).exists()
    assert map_versions() == versions
    assert target_state() == targets
    assert snapshot("legacy") == before


# -- dry run ----------------------------------------------------------------------------------


@db
@pytest.mark.parametrize("group", ["users", "metrics", "events"])
def test_dry_run_prints_the_rows_that_move_and_changes_nothing(group):
    if group == "users":
        ring, _authors = make_users({"s0": 5, "s1": 40, "s2": 5, "s3": 5})
        new_ring = ring.split("s1", "s4")
        args = ["users", "s1"]

        def moves(key):
            return new_ring.owner(key) == "s4"

        source = "s1"
    elif group == "metrics":
        Reading.objects.bulk_create(Reading(sensor_id=n % 150, value=n) for n in range(300))
        lo, hi = hash_range(2, 4)
        mid = lo + (hi - lo) // 2
        args = ["metrics", "s2"]

        def moves(key):
            return mid <= _md5_point(key) < hi

        source = "s2"
    else:
        _make_events()
        args = ["events", "s1", "--at", "1234"]

        def moves(key):
            return key >= 1234

        source = "s1"
    expected = {}
    for model in GROUP_MODELS[group]:
        keys = [k for _, k in rows_on(source, model, model._meta.pk.column, KEY_ATTNAME[model])]
        expected[model._meta.label] = (sum(1 for k in keys if moves(k)), len(keys))
    assert all(moving for moving, _ in expected.values())
    versions, targets, before = map_versions(), target_state(), snapshot(group)

    output = split(*args, "--to", "s4", "--primary", "s4", "--replica", "s4_r1", "--dry-run")

    assert plan_rows(output) == expected
    assert "dry run: nothing was changed" in output
    assert f"map version {versions[group]} -> {versions[group] + 2}" in output
    assert "s4" in output.split("new map:", 1)[1]
    assert not SplitJob.objects.exists()
    assert not ShardMapVersion.objects.filter(version__gt=1).exists()
    assert map_versions() == versions
    assert target_state() == targets
    assert snapshot(group) == before


# -- writes during the split ------------------------------------------------------------------


class Writer(threading.Thread):
    """Updates, creates and deletes rows of its own authors until told to stop, recording
    every write that succeeded and every exception."""

    def __init__(self, index: int, keys: list[int], stop: threading.Event):
        super().__init__(name=f"writer-{index}", daemon=True)
        self.index, self.keys, self.stop = index, keys, stop
        self.names: dict[int, str] = {}  # key -> the last name written
        self.created: dict[int, int] = {}  # post pk -> author key
        self.deleted: set[int] = set()
        self.write_errors: list[tuple[int, str, BaseException, float]] = []
        self.read_errors: list[tuple[int, BaseException]] = []
        self.ok_writes: list[tuple[int, str, float]] = []
        self.lost_updates: list[int] = []

    def _write(self, key: int, op: str, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - recorded, judged by the test
            self.write_errors.append((key, op, exc, time.monotonic()))
        else:
            self.ok_writes.append((key, op, time.monotonic()))

    def run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                for key in self.keys:
                    n += 1
                    value = f"w{self.index}-{n}"
                    try:
                        author = Author.objects.strong().get(pk=key)
                        assert author.pk == key
                        Post.objects.strong().filter(author_id=key).count()
                        Author.objects.filter(pk=key).exists()  # default consistency
                    except Exception as exc:  # noqa: BLE001
                        self.read_errors.append((key, exc))

                    def update(key=key, value=value):
                        if Author.objects.filter(pk=key).update(name=value) != 1:
                            self.lost_updates.append(key)
                            return
                        self.names[key] = value

                    def create(key=key, value=value):
                        post = Post.objects.create(author_id=key, title=value)
                        self.created[post.pk] = key

                    def delete(key=key, n=n):
                        alive = [p for p, k in self.created.items()
                                 if k == key and p not in self.deleted]  # fmt: skip
                        if alive and n % 2 == 0:
                            Post.objects.filter(author_id=key, pk=alive[0]).delete()
                            self.deleted.add(alive[0])

                    self._write(key, "update", update)
                    self._write(key, "create", create)
                    self._write(key, "delete", delete)
                    time.sleep(0.002)
        finally:
            connections.close_all()


@db
def test_writes_during_the_split_are_kept_or_refused_with_shard_moving(hold_split):
    ring, authors = make_users({"s0": 6, "s1": 36, "s2": 6, "s3": 6}, posts_per_author=2)
    new_ring = ring.split("s1", "s4")
    moving = [a.pk for a in authors if new_ring.owner(a.pk) == "s4"]
    staying = [a.pk for a in authors if ring.owner(a.pk) == "s1" and a.pk not in moving]
    elsewhere = [a.pk for a in authors if ring.owner(a.pk) == "s0"]
    keys = moving[:6] + staying[:6] + elsewhere[:3]
    moving_set = set(moving)
    stop = threading.Event()
    writers = [Writer(i, keys[i::3], stop) for i in range(3)]

    def moving_writes(after: float = 0.0, op: str = "update") -> list[bool]:
        """For each writer: has it made a write ``op`` to a moving key after ``after``?"""
        return [
            any(k in moving_set and o == op and t > after for k, o, t in w.ok_writes)
            for w in writers
        ]

    def refused_ops() -> set[str]:
        return {op for w in writers for k, op, e, _ in w.write_errors
                if k in moving_set and isinstance(e, ShardMoving)}  # fmt: skip

    held = hold_split("prepared", "frozen")
    runner = SplitThread("users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4_r1",
                         "--batch-size", "10", hold=held)  # fmt: skip
    runner.start()
    try:
        # the split has checked its target's replica (before any writer runs) and is held
        # before the freeze: the writers write to the moving keys
        held.wait("prepared", runner)
        for w in writers:
            w.start()
        wait_until(lambda: all(moving_writes()), "write to a moving key before the freeze")
        held.release()
        # the moving keys frozen, one lease waited, nothing copied: the writers run into it
        held.wait("frozen", runner)
        wait_until(lambda: refused_ops() >= {"update", "create"}, "write refused by the freeze")
        held.release()
        runner.join(timeout=DEADLINE_SECONDS)
        assert not runner.is_alive() and runner.error is None, runner.error
        finished = time.monotonic()
        # the writers go on under the new map: a write to a moving key succeeds again
        wait_until(
            lambda: all(moving_writes(after=finished)), "write to a moving key after the split"
        )
    finally:
        stop.set()
        for w in writers:
            if w.is_alive():
                w.join(timeout=30)
        held.release()  # a failed wait leaves no split held
        runner.join(timeout=DEADLINE_SECONDS)
    assert not any(w.is_alive() for w in writers)
    output = runner.output
    assert "done" in output

    errors = [e for w in writers for e in w.write_errors]
    unexpected = [e for e in errors if not isinstance(e[2], ShardMoving)]
    assert not unexpected, unexpected[:5]
    assert all(e[0] in moving_set for e in errors), [e for e in errors if e[0] not in moving_set][
        :5
    ]
    assert errors, "no write ran into the freeze: the split was too quick to test anything"
    assert not [e for w in writers for e in w.read_errors][:5]
    assert not [k for w in writers for k in w.lost_updates]
    assert {op for _, op, _, _ in errors} >= {"update", "create"}
    # writes to the moving keys went through before the freeze and after the cutover
    moving_ok = [t for w in writers for k, _, t in w.ok_writes if k in moving_set]
    refused = [t for *_, t in errors]
    assert min(moving_ok) < min(refused) and max(moving_ok) > max(refused)

    registry.reset()
    for w in writers:
        for key, name in w.names.items():
            author = Author.objects.strong().get(pk=key)
            assert author.name == name, (key, "moving" if key in moving_set else "staying")
            assert django_shards.shard_for(Author, key).name == new_ring.owner(key)
        alive = {p for p in w.created if p not in w.deleted}
        for pk in alive:
            key = w.created[pk]
            assert Post.objects.on_shard(new_ring.owner(key)).strong().filter(pk=pk).exists()
        # no deleted row came back, on any shard's primary
        everywhere = set().union(*(rows_on(a, Post) for a in (*SOURCE_ALIASES, *TARGETS)))
        assert not (w.deleted & everywhere)
        assert alive <= everywhere
    # nothing of a moved key is left on the source, nothing of a staying key on the target
    movers = {a.pk for a in authors if new_ring.owner(a.pk) == "s4"}
    after = snapshot("users")
    assert {k for _, k in after["s4", "testapp.Author"]} == movers
    for model in GROUP_MODELS["users"]:
        assert not {k for _, k in after["s1", model._meta.label]} & movers
        assert {k for _, k in after["s4", model._meta.label]} <= movers


# -- abort, resume, one split at a time -------------------------------------------------------


def _start_job(phases: tuple[str, ...], group="users", source="s1", target="s4", **kw):
    wait_for_target_replicas()
    plan = plan_split(group, source, target, target, [f"{target}_r1"], **kw)
    job = create_job(plan)
    runner = quiet_runner(job)
    for phase in phases:
        getattr(runner, phase)()
    return plan, runner


@db
@pytest.mark.parametrize("phases", [("prepare", "freeze"), ("prepare", "freeze", "copy")])
def test_abort_before_cutover_lifts_the_freeze_and_forgets_the_target(phases):
    ring, authors = make_users({"s0": 5, "s1": 30, "s2": 5, "s3": 5})
    new_ring = ring.split("s1", "s4")
    mover = next(a for a in authors if new_ring.owner(a.pk) == "s4")
    before = snapshot("users")
    version = get_map("users").version
    _plan, _runner = _start_job(phases)
    registry.reset()
    assert get_map("users").version == version + 1  # the pending target
    with pytest.raises(ShardMoving):
        Author.objects.filter(pk=mover.pk).update(name="frozen")
    if "copy" in phases:
        assert rows_on("s4", Author)

    output = split("users", "s1", "--abort")

    assert "aborted" in output
    registry.reset()
    users = get_map("users")
    assert "s4" not in users.shards and users.freezes == ()
    assert users.version == version + 2
    assert SplitJob.objects.get().phase == SplitJob.Phase.ABORTED
    for model in GROUP_MODELS["users"]:
        assert rows_on("s4", model) == set(), model
    assert snapshot("users") == before
    # writes to the moving keys work again, on the source
    assert Author.objects.filter(pk=mover.pk).update(name="after abort") == 1
    assert rows_on("s1", Author, "id", "name") >= {(mover.pk, "after abort")}
    # and a new split can start (and keeps that write)
    output = split("users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4_r1")
    assert "done" in output
    registry.reset()
    assert django_shards.shard_for(Author, mover.pk).name == "s4"
    assert Author.objects.strong().get(pk=mover.pk).name == "after abort"
    assert get_map("users").version == version + 4


@db
def test_abort_after_cutover_is_refused_and_resume_finishes():
    ring, authors = make_users({"s0": 3, "s1": 20, "s2": 3, "s3": 3})
    new_ring = ring.split("s1", "s4")
    movers = {a.pk for a in authors if new_ring.owner(a.pk) == "s4"}
    version = get_map("users").version
    _, _runner = _start_job(("prepare", "freeze", "copy", "verify", "cutover"))

    message = split_fails("users", "s1", "--abort")
    assert "cut over" in message and "--resume" in message
    job = SplitJob.objects.get()
    assert job.phase == SplitJob.Phase.CUT_OVER
    registry.reset()
    assert get_map("users").version == version + 2
    assert movers <= rows_on("s1", Author)  # not cleaned up yet

    output = split("users", "s1", "--resume")
    assert "resuming" in output and "done" in output
    assert SplitJob.objects.get().phase == SplitJob.Phase.DONE
    assert not movers & rows_on("s1", Author)
    assert rows_on("s4", Author) == movers
    assert get_map("users").version == version + 2


@db
def test_resume_or_abort_with_no_split_in_progress_is_an_error():
    versions = map_versions()
    assert "No split" in split_fails("users", "s1", "--resume")
    assert "No split" in split_fails("users", "s1", "--abort")
    assert "cannot be used together" in split_fails("users", "s1", "--resume", "--abort")
    assert not SplitJob.objects.exists()
    assert map_versions() == versions


@db
def test_two_splits_of_a_group_recorded_at_once_leave_one_job_and_refuse_the_other():
    make_users({"s0": 2, "s1": 6, "s2": 2, "s3": 2})
    wait_for_target_replicas()
    plans = [
        plan_split("users", "s1", "s4", "s4", ["s4_r1"]),
        plan_split("users", "s2", "s5", "s5", ["s5_r1"]),
    ]
    start = threading.Barrier(len(plans))
    outcomes: list[object] = [None] * len(plans)

    def record(i: int) -> None:
        try:
            start.wait(timeout=DEADLINE_SECONDS)
            outcomes[i] = create_job(plans[i])
        except BaseException as exc:  # noqa: BLE001 - judged below
            outcomes[i] = exc
        finally:
            connections.close_all()

    threads = [threading.Thread(target=record, args=(i,)) for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=DEADLINE_SECONDS)
    assert not any(t.is_alive() for t in threads)

    created = [o for o in outcomes if isinstance(o, SplitJob)]
    refused = [o for o in outcomes if isinstance(o, SplitError)]
    assert len(created) == 1 and len(refused) == 1, outcomes
    job = created[0]
    assert f"in progress ({job.source} -> {job.target}" in str(refused[0])
    assert list(SplitJob.objects.values_list("pk", flat=True)) == [job.pk]


@db
def test_a_second_split_of_the_group_is_refused_while_one_is_active():
    make_users({"s0": 3, "s1": 10, "s2": 3, "s3": 3})
    _start_job(("prepare",))
    registry.reset()
    version = get_map("users").version
    for args in (["users", "s1", "--to", "s5", "--primary", "s5"],
                 ["users", "s2", "--to", "s5", "--primary", "s5"]):  # fmt: skip
        message = split_fails(*args)
        assert "in progress" in message and "s1 -> s4" in message, message
    assert SplitJob.objects.count() == 1
    assert map_versions()["users"] == version
    # another group may split meanwhile
    Reading.objects.bulk_create(Reading(sensor_id=n, value=n) for n in range(40))
    assert "done" in split("metrics", "s0", "--to", "s5", "--primary", "s5")


# -- bad input --------------------------------------------------------------------------------

BAD_INPUT = {
    "unknown group": (["nosuch", "s1", "--to", "s4", "--primary", "s4"], "nosuch"),
    "unknown shard": (["users", "s9", "--to", "s4", "--primary", "s4"], "s9"),
    "target name taken": (["users", "s1", "--to", "s2", "--primary", "s4"], "s2"),
    "alias not in DATABASES": (["users", "s1", "--to", "s4", "--primary", "nosuch"], "nosuch"),
    "replica not in DATABASES": (
        ["users", "s1", "--to", "s4", "--primary", "s4", "--replica", "nosuch_r1"],
        "nosuch_r1",
    ),
    "primary used by another shard": (["users", "s1", "--to", "s4", "--primary", "s0"], "s0"),
    "replica used by another shard": (
        ["users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s2_r1"],
        "s2_r1",
    ),
    "replica is the primary": (
        ["users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4"],
        "s4",
    ),
    "primary is the catalog": (["users", "s1", "--to", "s4", "--primary", "default"], "catalog"),
    "at outside the source": (
        ["events", "s1", "--to", "s4", "--primary", "s4", "--at", "2500"],
        "2500",
    ),
    "at on the source's lower bound": (
        ["events", "s1", "--to", "s4", "--primary", "s4", "--at", "1000"],
        "1000",
    ),
    "at not a key": (["events", "s1", "--to", "s4", "--primary", "s4", "--at", "abc"], "abc"),
    "at on a hash group": (["metrics", "s2", "--to", "s4", "--primary", "s4", "--at", "5"], "--at"),
    "at on a ring group": (["users", "s1", "--to", "s4", "--primary", "s4", "--at", "5"], "--at"),
    "batch size zero": (
        ["users", "s1", "--to", "s4", "--primary", "s4", "--batch-size", "0"],
        "--batch-size",
    ),
    "missing --to": (["users", "s1", "--primary", "s4"], "--to"),
    "missing --primary": (["users", "s1", "--to", "s4"], "--primary"),
    "empty range source, no --at": (["events", "s2", "--to", "s4", "--primary", "s4"], "--at"),
}


@db
def test_bad_input_is_a_clear_error_and_changes_nothing():
    # events only on s0 and s1, so s2 has no median key
    Event.objects.bulk_create(Event(account=a, kind="k") for a in (5, 1200, 1300, 1400))
    make_users({"s0": 2, "s1": 6, "s2": 2, "s3": 2})
    versions, targets = map_versions(), target_state()
    before = {g: snapshot(g) for g in ("users", "events")}
    problems = []
    for case, (args, named) in BAD_INPUT.items():
        try:
            message = split_fails(*args)
        except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - every case reported
            problems.append(f"{case}: {exc!r}")
            continue
        if named not in message:
            problems.append(f"{case}: {named!r} not in {message!r}")
        if SplitJob.objects.exists() or ShardMapVersion.objects.filter(version__gt=1).exists():
            problems.append(f"{case}: the catalog changed")
        if map_versions() != versions or target_state() != targets:
            problems.append(f"{case}: a map version or a target changed")
        if {g: snapshot(g) for g in ("users", "events")} != before:
            problems.append(f"{case}: rows changed")
    assert not problems, "\n".join(problems)


# -- verification ------------------------------------------------------------------------------


@db
def test_a_verification_mismatch_stops_the_split_and_resume_copies_afresh():
    ring, authors = make_users({"s0": 3, "s1": 30, "s2": 3, "s3": 3})
    new_ring = ring.split("s1", "s4")
    movers = {a.pk for a in authors if new_ring.owner(a.pk) == "s4"}
    mover = min(movers)
    before = snapshot("users")
    _, runner = _start_job(("prepare", "freeze", "copy"))
    registry.reset()
    version = get_map("users").version
    tampered = min(p for p, k in rows_on("s4", Post, "id", "author_id") if k in movers)
    title = dict(rows_on("s1", Post, "id", "title"))[tampered]
    conn = connections["s4"]
    with conn.cursor() as cursor:
        cursor.execute(
            f"UPDATE {conn.ops.quote_name(Post._meta.db_table)} SET title = %s WHERE id = %s",
            ["tampered", tampered],
        )

    with pytest.raises(SplitError) as excinfo:
        runner.verify()

    assert "testapp.Post" in str(excinfo.value)
    job = SplitJob.objects.get()
    assert job.phase == SplitJob.Phase.PREPARED and not job.frozen
    assert "testapp.Post" in job.error
    registry.reset()
    users = get_map("users")
    assert users.version == version and users.freezes == ()
    assert "s4" not in users.layout.shard_names()
    assert django_shards.shard_for(Author, mover).name == "s1"
    # the freeze is lifted: the moving keys take writes again (on the source)
    assert Author.objects.filter(pk=mover).update(name="while stopped") == 1

    output = split("users", "s1", "--resume")

    assert "done" in output
    registry.reset()
    assert get_map("users").version == version + 1
    assert SplitJob.objects.get().phase == SplitJob.Phase.DONE
    assert Post.objects.strong().get(pk=tampered).title == title != "tampered"
    assert Author.objects.strong().get(pk=mover).name == "while stopped"
    after = snapshot("users")
    for model in GROUP_MODELS["users"]:
        label = model._meta.label
        moved = {row for row in before["s1", label] if row[1] in movers}
        assert after["s4", label] == moved
        assert after["s1", label] == before["s1", label] - moved


# -- known library bugs (strict xfail: a fix makes these pass, and then the marker must go) ---


@db
def test_a_map_read_straddling_the_cutover_does_not_lose_a_write(monkeypatch):
    import django_shards.shardmap as shardmap

    ring, authors = make_users({"s0": 2, "s1": 16, "s2": 2, "s3": 2})
    mover = next(a.pk for a in authors if ring.split("s1", "s4").owner(a.pk) == "s4")
    _, runner = _start_job(("prepare", "freeze", "copy", "verify"))
    registry.reset()
    latest_row, fired, committed_first = shardmap._latest_row, [], []

    def cutover_elsewhere() -> None:  # another process, on connections of its own
        try:
            runner.cutover()
        finally:
            connections.close_all()

    def latest_row_then_cutover(group):
        row = latest_row(group)
        if not fired:  # the cutover commits right after this process read the map's row
            fired.append(threading.Thread(target=cutover_elsewhere))
            fired[0].start()
            fired[0].join(timeout=DEADLINE_SECONDS)
            committed_first.append(not fired[0].is_alive())
        return row

    monkeypatch.setattr(shardmap, "_latest_row", latest_row_then_cutover)
    try:
        written = Author.objects.filter(pk=mover).update(name="acknowledged") == 1
    except ShardMoving:
        written = False  # refused, retryable: fine
    monkeypatch.setattr(shardmap, "_latest_row", latest_row)
    fired[0].join()
    assert committed_first == [True]  # the write really straddled the cutover
    runner.job.refresh_from_db()
    assert runner.job.phase == SplitJob.Phase.CUT_OVER
    runner.cleanup()
    registry.reset()
    if written:
        assert Author.objects.strong().get(pk=mover).name == "acknowledged"


@db
def test_abort_stops_a_split_running_elsewhere():
    make_users({"s0": 2, "s1": 16, "s2": 2, "s3": 2})
    _, runner = _start_job(("prepare", "freeze"))  # the other process is about to copy

    assert "aborted" in split("users", "s1", "--abort")
    try:
        runner.run()
    except SplitError:
        pass  # refusing to go on is the right outcome
    registry.reset()
    assert SplitJob.objects.get().phase == SplitJob.Phase.ABORTED
    assert "s4" not in get_map("users").shards
    # the batch the runner copied before it noticed the abort was taken back: s4 is empty
    assert all(count == 0 for _, count in target_state()["s4"])
    split("users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4_r1")  # reusable


@db
def test_a_replica_of_another_primary_is_refused():
    make_users({"s0": 2, "s1": 6, "s2": 2, "s3": 2})
    versions, targets = map_versions(), target_state()
    try:
        message = split_fails("users", "s1", "--to", "s4", "--primary", "s4", "--replica", "s5_r1")
        assert "s5_r1" in message
        assert not SplitJob.objects.exists()
        assert map_versions() == versions and target_state() == targets
    finally:
        SplitJob.objects.all().delete()  # if it was accepted, do not leave it running
