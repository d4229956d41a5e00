"""The online split on the real MariaDB topology: writes go on through the whole split.

ORM writer threads (moving and staying keys) and a raw SQL writer on the source (behind the
ORM's back, until the fence) run through a whole ``shard_split``, while a reader counts the
group with fan-outs. Afterwards: no acknowledged write lost, none resurrected, no row twice,
the fan-out count never wrong, no write to a staying key ever refused, and the longest
stall of a write to a moving key (``ShardMoving`` retries included) at most 1 s.
"""

from __future__ import annotations

import io
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections, transaction
from django.db.models import F

from django_shards import shard_for
from django_shards.exceptions import ShardMoving
from django_shards.management.commands.shard_split import Command as SplitCommand
from django_shards.models import SplitJob
from django_shards.shardmap import get_map, registry
from tests.factories import AuthorFactory
from tests.support.backend import MARIADB
from tests.support.split_process import SplitProcess
from tests.support.splitting import MAP_LEASE_SECONDS, empty_tables, wait_for_target_replicas
from tests.testapp.models import Author, Follow, Post

pytestmark = [
    pytest.mark.mariadb,
    pytest.mark.skipif(
        not (MARIADB and settings.DJANGO_SHARDS.get("OPERATOR")),
        reason="the online split needs MariaDB and the OPERATOR account",
    ),
    pytest.mark.django_db(transaction=True, databases="__all__"),
]

GROUP, SOURCE, TARGET = "users", "s1", "s4"
AUTHORS = 60
FIRST_AUTHOR_ID = 1000
#: the contract: no single write to a moving key waits longer than this, retries included
MAX_STALL_SECONDS = 1.0
#: between two rounds of a writer: a few hundred transactions a second in all, a busy
#: shard's load (a binlog reader in Python applies a few thousand a second at best)
WRITER_PAUSE_SECONDS = 0.01
SPLIT_DEADLINE_SECONDS = 120
SPLIT_ARGV = [GROUP, SOURCE, "--to", TARGET, "--primary", "s4", "--replica", "s4_r1"]


@pytest.fixture(autouse=True)
def _short_lease_and_empty_target(transactional_db, settings):
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": MAP_LEASE_SECONDS}
    registry.reset()
    yield
    empty_tables(TARGET, (Author, Post, Follow))


def seed() -> tuple[list[int], list[int]]:
    """60 authors with fixed keys; returns (the source's authors that move, that stay)."""
    authors = AuthorFactory.build_batch(AUTHORS)
    for i, author in enumerate(authors):
        author.pk = FIRST_AUTHOR_ID + i
        author.score = 0
    Author.objects.bulk_create(authors)
    shard_map = get_map(GROUP)
    on_source = [a.pk for a in authors if shard_map.shard_for_key(a.pk).name == SOURCE]
    after = shard_map.strategy.split(shard_map.layout, SOURCE, TARGET)
    moving = [pk for pk in on_source if shard_map.strategy.shard_for_key(after, pk) == TARGET]
    staying = [pk for pk in on_source if pk not in moving]
    assert moving and staying
    return moving, staying


def split(hold: Callable[[str], None] | None = None) -> str:
    wait_for_target_replicas()
    command = SplitCommand()
    command.hold = hold
    out = io.StringIO()
    call_command(command, *SPLIT_ARGV, "--no-input", "--batch-size", "10", stdout=out)
    registry.reset()
    return out.getvalue()


def job_phase() -> str | None:
    job = SplitJob.objects.using("default").filter(group=GROUP).order_by("-pk").first()
    return None if job is None else job.phase


class Ledger:
    """What the writers were told succeeded, and how long each write took to succeed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.score: Counter[int] = Counter()  # author pk -> acknowledged increments
        self.posts: dict[int, int] = {}  # post pk -> author pk, acknowledged creates
        self.deleted: set[int] = set()  # acknowledged deletes
        self.raw: set[int] = set()  # posts inserted with raw SQL
        self.stall = {"moving": 0.0, "staying": 0.0}
        self.refused = {"moving": 0, "staying": 0}
        self.errors: list[BaseException] = []

    def write(self, kind: str, attempt: Callable[[], None]) -> None:
        """Run ``attempt`` until it succeeds, retrying ``ShardMoving``; note the stall."""
        started = time.monotonic()
        while True:
            try:
                attempt()
                break
            except ShardMoving:
                with self.lock:
                    self.refused[kind] += 1
                time.sleep(0.005)
        with self.lock:
            self.stall[kind] = max(self.stall[kind], time.monotonic() - started)


def orm_writer(ledger: Ledger, moving: list[int], staying: list[int], stop: threading.Event):
    rng = random.Random()
    try:
        while not stop.is_set():
            kind = rng.choice(["moving", "staying"])
            pk = rng.choice(moving if kind == "moving" else staying)

            def bump(pk=pk):
                assert Author.objects.filter(pk=pk).update(score=F("score") + 1) == 1

            ledger.write(kind, bump)
            with ledger.lock:
                ledger.score[pk] += 1
            post = Post(author_id=pk, title="orm")
            ledger.write(kind, post.save)
            with ledger.lock:
                ledger.posts[post.pk] = pk
            if rng.random() < 0.3:  # delete one of this author's posts again
                post_pk = post.pk  # delete() sets it to None
                ledger.write(kind, lambda post=post: post.delete())
                with ledger.lock:
                    ledger.deleted.add(post_pk)
            time.sleep(WRITER_PAUSE_SECONDS)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        ledger.errors.append(exc)
    finally:
        connections.close_all()


def raw_writer(ledger: Ledger, moving: list[int], stop: threading.Event):
    """Raw SQL on the source's primary, behind the ORM's back, until the fence: the split
    carries these over from the binlog."""
    rng = random.Random()
    conn = connections[SOURCE]
    table = conn.ops.quote_name(Post._meta.db_table)
    try:
        while not stop.is_set() and job_phase() not in ("frozen", "verified", "cut_over"):
            pk = rng.choice(moving)
            post_pk = Post._meta.pk.get_default()
            with conn.cursor() as cursor:
                cursor.execute(
                    f"INSERT INTO {table} (id, author_id, title, likes, created) "
                    "VALUES (%s, %s, %s, %s, UTC_TIMESTAMP(6))",
                    [post_pk, pk, "raw", 7],
                )
            with ledger.lock:
                ledger.posts[post_pk] = pk
                ledger.raw.add(post_pk)
            time.sleep(WRITER_PAUSE_SECONDS)
    except BaseException as exc:  # noqa: BLE001
        ledger.errors.append(exc)
    finally:
        connections.close_all()


def counting_reader(wrong: list[int], stop: threading.Event):
    try:
        while not stop.is_set():
            count = Author.objects.fanout().strong().count()
            if count != AUTHORS:
                wrong.append(count)
    finally:
        connections.close_all()


def test_writes_go_on_through_an_online_split_and_none_is_lost():
    moving, staying = seed()
    ledger, stop, wrong = Ledger(), threading.Event(), []
    threads = [
        threading.Thread(target=orm_writer, args=(ledger, moving, staying, stop)),
        threading.Thread(target=orm_writer, args=(ledger, moving, staying, stop)),
        threading.Thread(target=raw_writer, args=(ledger, moving, stop)),
        threading.Thread(target=counting_reader, args=(wrong, stop)),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)  # writes already flowing when the split starts
        # in a process of its own, as an operator runs it (not sharing the writers' GIL)
        process = SplitProcess(["shard_split", *SPLIT_ARGV, "--no-input", "--batch-size", "10"])
        try:
            returncode = process.proc.wait(timeout=SPLIT_DEADLINE_SECONDS)
            output = process.output()
        finally:
            process.kill()
        assert returncode == 0, output
        registry.reset()
        time.sleep(0.3)  # and still flowing after it ends
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not ledger.errors, ledger.errors
    assert "phase: catching_up" in output and "phase: done" in output, output
    assert get_map(GROUP).version == 3

    # acknowledged increments: none lost, none applied twice
    scores = dict(Author.objects.fanout().strong().values_list("pk", "score"))
    assert len(scores) == AUTHORS
    for pk in moving + staying:
        assert scores[pk] == ledger.score[pk], (pk, scores[pk], ledger.score[pk])

    # posts: every acknowledged one present once, no deleted one back, each on its owner
    alive = {pk for pk in ledger.posts if pk not in ledger.deleted}
    rows = list(Post.objects.fanout().strong().values_list("pk", "author_id"))
    counts = Counter(pk for pk, _ in rows)
    assert not [pk for pk, n in counts.items() if n > 1], "posts returned twice"
    missing = alive - set(counts)
    assert not missing, (
        f"{len(missing)} acknowledged posts missing: "
        f"{Counter((pk in ledger.raw, ledger.posts[pk] in moving) for pk in missing)} "
        "(raw SQL?, moving?)"
    )
    assert set(counts) <= alive, "posts nobody acknowledged (or deleted ones) came back"
    raw = [pk for pk, author in ledger.posts.items() if pk in alive and author in moving]
    on_target = set(Post.objects.on_shard(TARGET).strong().values_list("pk", flat=True))
    assert set(raw) <= on_target
    on_source = set(Post.objects.on_shard(SOURCE).strong().values_list("pk", flat=True))
    assert not on_source & on_target
    assert {pk for pk, author in rows if author in moving} <= on_target
    assert {pk for pk, author in rows if author not in moving} <= on_source
    assert {shard_for(Author, pk).name for pk in moving} == {TARGET}

    assert not wrong, f"fan-out counts seen during the split: {sorted(set(wrong))}"
    assert ledger.refused["staying"] == 0, "a write to a key that does not move was refused"
    assert ledger.stall["moving"] <= MAX_STALL_SECONDS, ledger.stall
    job = SplitJob.objects.using("default").get(group=GROUP)
    assert job.progress["frozen_seconds"] <= MAX_STALL_SECONDS, job.progress


def test_a_write_that_passed_the_freeze_check_before_the_fence_still_reaches_the_new_shard():
    """A write routed (so checked against the freeze) before the fence, whose statement
    reaches the source only after the cutover, is carried to the new shard by the binlog
    read between the cutover and the clean-up."""
    moving, _ = seed()
    pk = moving[0]
    routed, release, done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def held_update():
        def hold(execute, sql, params, many, context):
            if sql.lstrip().upper().startswith("UPDATE"):
                routed.set()  # the freeze check has passed: the statement is about to run
                assert release.wait(30)
            return execute(sql, params, many, context)

        try:
            with connections[SOURCE].execute_wrapper(hold):
                assert Author.objects.filter(pk=pk).update(name="in flight") == 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()
            connections.close_all()

    writer = threading.Thread(target=held_update)

    def at(point: str) -> None:
        if point == "catching_up":  # routed and held before the freeze
            writer.start()
            assert routed.wait(30)
        elif point == "cut_over":  # the statement runs after the cutover, before clean-up
            release.set()
            assert done.wait(30)

    split(hold=at)
    writer.join(timeout=30)
    assert not errors, errors
    assert Author.objects.on_shard(TARGET).strong().get(pk=pk).name == "in flight"
    assert Author.objects.strong().get(pk=pk).name == "in flight"


def test_a_transaction_open_on_the_source_at_the_fence_is_waited_for_and_carried_over():
    """A transaction that wrote a moving key before the freeze and stays open: the fence
    lifts the freeze rather than wait for it longer than a moment, catches up again, and
    fences once it has committed; its write reaches the new shard."""
    moving, _ = seed()
    pk = moving[0]
    wrote, commit, done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def long_transaction():
        try:
            with transaction.atomic(using=SOURCE):
                assert Author.objects.filter(pk=pk).update(name="long transaction") == 1
                wrote.set()
                assert commit.wait(30)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            done.set()
            connections.close_all()

    writer = threading.Thread(target=long_transaction)
    seen: list[str] = []

    def at(point: str) -> None:
        seen.append(point)
        if point == "catching_up":  # written, not committed, before any freeze
            writer.start()
            assert wrote.wait(30)
        elif point == "catching up" and "frozen" in seen and not commit.is_set():
            commit.set()  # the first fence gave up on it: let it commit now
            assert done.wait(30)

    output = split(hold=at)
    writer.join(timeout=30)
    assert not errors, errors
    assert "fence 1: a transaction on the source stayed open" in output, output
    assert seen.count("frozen") == 2, seen
    assert Author.objects.on_shard(TARGET).strong().get(pk=pk).name == "long transaction"
    job = SplitJob.objects.using("default").get(group=GROUP)
    assert job.phase == SplitJob.Phase.DONE
    assert job.progress["frozen_seconds"] <= MAX_STALL_SECONDS, job.progress


def test_shard_status_shows_a_running_online_split_with_its_phase_copy_and_lag():
    moving, _ = seed()
    process = SplitProcess(
        ["shard_split", *SPLIT_ARGV, "--no-input", "--batch-size", "10"], hold_at="catching_up"
    )
    try:
        process.wait_held()
        # written after the position the split recorded: the new shard is behind by these
        for pk in moving[:3]:
            Author.objects.filter(pk=pk).update(name="while catching up")
        out = io.StringIO()
        call_command("shard_status", GROUP, "--json", stdout=out)
        (split_status,) = json.loads(out.getvalue())["groups"][0]["splits"]
        text = io.StringIO()
        call_command("shard_status", GROUP, stdout=text)
        process.held.release()
        assert process.proc.wait(timeout=SPLIT_DEADLINE_SECONDS) == 0, process.output()
    finally:
        process.kill()
    assert split_status["phase"] == "catching_up"
    assert split_status["mode"] == "online"
    assert split_status["frozen"] is False
    assert split_status["copy"]["rows"] >= len(moving)
    assert split_status["copy"]["tables_done"] == split_status["copy"]["tables"] == 3
    assert split_status["lag_events"] >= 3, split_status
    assert split_status["lag_seconds"] is not None and split_status["lag_seconds"] >= 0
    assert f"split {SOURCE} -> {TARGET}: catching_up (online), " in text.getvalue()
    assert "catch-up lag " in text.getvalue()
    registry.reset()
    names = dict(Author.objects.strong().filter(pk__in=moving[:3]).values_list("pk", "name"))
    assert set(names.values()) == {"while catching up"}  # and the split carried them over
