"""``shard_split`` is resumable after a crash at any point: ``kill -9`` of the command in
each phase, then ``--resume``, ends with the group's data unchanged (identical checksums),
every row on exactly the shard the new map assigns, map version base+2 and no freeze left.

The split runs in a subprocess (``python -m tests.support.held_split shard_split ...``, the test
entry point that hands the runner its ``hold`` hook) on the test run's own databases
(``SHARDS_USE_TEST_DATABASES=1``). The hook holds the split at the kill point and announces
it in a file; the test waits for that file and sends ``SIGKILL`` there, so where the kill
lands never depends on timing. The resume runs in the test process.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connections

from django_shards import shard_for
from django_shards.exceptions import ShardMoving
from django_shards.models import ShardMapVersion, SplitJob
from django_shards.shardmap import get_map, registry
from tests.factories import AuthorFactory, PostFactory
from tests.support.backend import MARIADB
from tests.support.split_process import SplitProcess
from tests.support.splitting import MAP_LEASE_SECONDS, empty_tables, wait_for_target_replicas
from tests.testapp.models import Author, Follow, Post

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

REPO = Path(__file__).resolve().parents[2]
GROUP, SOURCE, TARGET = "users", "s1", "s4"
MODELS = (Author, Post, Follow)
AUTHORS, POSTS_EACH = 60, 3
FIRST_AUTHOR_ID = 1000
BATCH = "5"
POLL_SECONDS = 0.02
DEADLINE_SECONDS = 60.0

SPLIT_ARGV = [
    "shard_split", GROUP, SOURCE, "--to", TARGET, "--primary", "s4", "--replica", "s4_r1",
    "--no-input", "--batch-size", BATCH,
]  # fmt: skip
RESUME_ARGV = ["shard_split", GROUP, SOURCE, "--resume", "--batch-size", BATCH]
# every subprocess started, so that teardown can kill what a failed test left running
STARTED: list[Split] = []


def empty_target() -> None:
    """Delete the group's rows on the target's primary, if it has the tables.

    The transactional flush after a test does not do it reliably: ``flush`` asks the router
    which tables live on ``s4``, and the router answers from the map, read from a catalog
    that was flushed first (s4 owns nothing in version 1) unless its lease has not run out.
    """
    empty_tables(TARGET, MODELS)


@pytest.fixture(autouse=True)
def _target_starts_and_ends_empty(transactional_db, settings):
    # the same short map lease as the split's process (tests/support/held_split.py)
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": MAP_LEASE_SECONDS}
    empty_target()
    yield
    while STARTED:  # a test that failed before its kill leaves no split running
        STARTED.pop().kill()
    empty_target()


# -- the seed and the checksum ------------------------------------------------------------


def seed() -> None:
    """60 authors with 3 posts each and one follow each, committed, on s0..s3.

    The authors' keys are fixed (FIRST_AUTHOR_ID onwards) rather than snowflakes: with
    random keys the source now and then holds no author that stays (s1 keeps only 10.9% of
    the ring after the split), and the test would depend on the clock. With these keys s1
    holds 14 authors, 8 of which move to s4 and 6 stay.
    """
    authors = AuthorFactory.build_batch(AUTHORS)
    for i, author in enumerate(authors):
        author.pk = FIRST_AUTHOR_ID + i
    authors = Author.objects.bulk_create(authors)
    Post.objects.bulk_create(
        [PostFactory.build(author=a) for a in authors for _ in range(POSTS_EACH)]
    )
    Follow.objects.bulk_create(
        [Follow(follower=a, followee=authors[(i + 7) % AUTHORS]) for i, a in enumerate(authors)]
    )


def columns(model) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields]


def group_rows() -> dict[str, list[tuple]]:
    """Every row of the group on every shard of the current map (strong reads), per model,
    sorted by pk; a row held by two shards appears twice."""
    registry.reset()
    shards = list(get_map(GROUP).shards)
    out = {}
    for model in MODELS:
        rows = [
            row
            for name in shards
            for row in model.objects.on_shard(name).strong().values_list(*columns(model))
        ]
        out[model._meta.label] = sorted(rows, key=lambda r: r[0])
    return out


def rows_by_shard(model) -> dict[str, set]:
    registry.reset()
    return {
        name: set(model.objects.on_shard(name).strong().values_list("pk", flat=True))
        for name in get_map(GROUP).shards
    }


# -- the subprocess -----------------------------------------------------------------------


class Split(SplitProcess):
    """``shard_split`` in a subprocess held at ``hold_at`` (``tests/support/split_process``);
    every one started is killed at the test's teardown, even if the test failed first."""

    def __init__(self, argv: list[str], hold_at: str) -> None:
        super().__init__(argv, hold_at)
        STARTED.append(self)

    def kill_when_held(self) -> SplitJob:  # type: ignore[override]
        """SIGKILL the split at its point; the job as the catalog holds it after the kill."""
        super().kill_when_held()
        return SplitJob.objects.using("default").get(group=GROUP)


def kill_at(argv: list[str], point: str) -> tuple[Split, SplitJob]:
    """Run ``argv``, SIGKILL it at kill point ``point`` and check the catalog shows the
    split killed exactly there."""
    hold_at, phase, check = KILL_POINTS[point]
    split = Split(argv, hold_at)
    job = split.kill_when_held()
    assert job.phase == phase, (point, job.phase, job.progress, split.output())
    assert check(job), (point, job.frozen, job.progress, split.output())
    return split, job


# -- kill points: the hook's point, the phase recorded there, what the job shows -----------


def pending_version_written() -> bool:
    """The latest stored map version knows the target (pending: it owns nothing yet)."""
    versions = ShardMapVersion.objects.using("default").filter(group=GROUP)
    latest = versions.order_by("-version").first()
    return latest is not None and TARGET in {s["name"] for s in latest.shards}


def copied_rows(job: SplitJob) -> int:
    return sum(v.get("rows", 0) for v in job.progress.get("copy", {}).values())


def copy_state(job: SplitJob, model) -> tuple[int, bool]:
    """(rows copied, complete) of ``model``'s table so far."""
    state = job.progress.get("copy", {}).get(model._meta.label, {})
    return state.get("rows", 0), bool(state.get("complete"))


def copying_the_last_table(job: SplitJob) -> bool:
    """The first tables copied, the last one (Post) partly copied."""
    rows, complete = copy_state(job, Post)
    return copy_state(job, Author)[1] and copy_state(job, Follow)[1] and rows > 0 and not complete


def copying_the_first_table(job: SplitJob) -> bool:
    """Some of Author copied, nothing of the others."""
    rows, complete = copy_state(job, Author)
    return 0 < rows == copied_rows(job) and not complete


#: online (MariaDB with an OPERATOR account): the moving keys stay writable until the fence
ONLINE = MARIADB and bool(settings.DJANGO_SHARDS.get("OPERATOR"))

KILL_POINTS: dict[str, tuple[str, str, Callable[[SplitJob], bool]]] = {
    # in prepare: the pending map version written, the phase not yet recorded
    "planned": ("target pending", "planned", lambda job: pending_version_written()),
    # in freeze: the freeze recorded, its lease not yet waited out
    "prepared": ("freeze recorded", "prepared", lambda job: job.frozen),
    "frozen": ("frozen", "frozen", lambda job: job.frozen and not job.progress.get("copy")),
    "copying": ("copy testapp.Post", "copying", copying_the_last_table),
    "copying the first table": ("copy testapp.Author", "copying", copying_the_first_table),
    "copied": ("copied", "copying", lambda job: job.frozen),
    "verified": ("verified", "verified", lambda job: job.frozen),
    "cut_over": ("cut_over", "cut_over", lambda job: not job.progress.get("cleanup")),
    # mid-clean-up: a batch of the first table cleaned up (children first: Post)
    "cleaning": ("cleanup testapp.Post", "cut_over", lambda job: bool(job.progress.get("cleanup"))),
}
if ONLINE:
    KILL_POINTS |= {
        "prepared": ("prepared", "prepared", lambda job: not job.frozen),
        # the snapshot's GTID recorded, nothing copied yet
        "copy started": ("copying", "copying", lambda job: bool(job.progress.get("gtid"))),
        "catching_up": ("catching_up", "catching_up", lambda job: not job.frozen),
        # after a pass over the binlog, its position recorded
        "catching up": (
            "catching up",
            "catching_up",
            lambda job: "applied" in job.progress.get("catch_up", {}),
        ),
        # the fence: the freeze seen by every process, the final catch-up not done
        "frozen": ("frozen", "frozen", lambda job: job.frozen),
    }
    del KILL_POINTS["copied"]


# -- while the split lies dead --------------------------------------------------------------


def write_while_dead(job: SplitJob, expected: dict[str, list[tuple]]) -> None:
    """Between the kill and the resume: writes to keys under the split's freeze are refused
    (ShardMoving), every other write is made where the map in force routes it and must
    survive the resume; ``expected`` is updated to match."""
    registry.reset()
    shard_map = get_map(GROUP)
    after = shard_map.strategy.load_layout(job.new_layout)
    rows = expected["testapp.Author"]
    moving = [r[0] for r in rows if shard_map.strategy.shard_for_key(after, r[0]) == TARGET]
    staying = [r[0] for r in rows if shard_map.strategy.shard_for_key(after, r[0]) == SOURCE]
    assert moving and staying, "the source must keep some authors and hand some over"
    name_at = columns(Author).index("name")

    def rename(pk, name: str) -> None:
        assert Author.objects.filter(pk=pk).update(name=name) == 1
        i = next(i for i, row in enumerate(rows) if row[0] == pk)
        rows[i] = (*rows[i][:name_at], name, *rows[i][name_at + 1 :])

    if job.frozen:
        with pytest.raises(ShardMoving):
            Author.objects.filter(pk=moving[0]).update(name="refused")
        with pytest.raises(ShardMoving):
            Post.objects.create(author_id=moving[0], title="refused")
    else:
        rename(moving[-1], f"moving, written while dead in {job.phase}")
    rename(staying[-1], f"staying, written while dead in {job.phase}")
    connections.close_all()


# -- the checks after the resume ----------------------------------------------------------


def resume() -> str:
    """``--resume`` in the test process, at the default batch size."""
    wait_for_target_replicas()
    out = io.StringIO()
    call_command("shard_split", GROUP, SOURCE, "--resume", stdout=out, stderr=out)
    registry.reset()
    return out.getvalue()


def assert_split_finished(before: dict[str, list[tuple]], base_version: int, log: str) -> None:
    job = SplitJob.objects.using("default").get(group=GROUP)
    assert job.phase == SplitJob.Phase.DONE, (job.phase, job.error, log)
    assert not job.frozen, log
    assert job.error == "", log

    registry.reset()
    shard_map = get_map(GROUP)
    assert shard_map.version == base_version + 2, (shard_map.version, log)
    assert TARGET in {s.name for s in shard_map.owning_shards}, log
    assert shard_map.freezes == ()

    # the whole group's data, unchanged: same rows, same values, each once
    after = group_rows()
    for label in before:
        assert len(after[label]) == len(before[label]), (label, log)
        assert after[label] == before[label], (label, log)

    # every row on exactly the shard the new map assigns, the source keeps no moved key
    for model in MODELS:
        placed = rows_by_shard(model)
        counts = Counter(pk for pks in placed.values() for pk in pks)
        twice = [pk for pk, n in counts.items() if n > 1]
        assert not twice, f"{model._meta.label}: rows on two shards: {twice[:5]}"
        key = {"Author": "id", "Post": "author_id", "Follow": "follower_id"}[model.__name__]
        keys = dict(model.objects.fanout().strong().values_list("pk", key))
        for name, pks in placed.items():
            for pk in pks:
                owner = shard_for(model, keys[pk]).name
                assert owner == name, f"{model._meta.label} {pk} is on {name}, owner {owner}"
    moved = rows_by_shard(Author)[TARGET]
    assert moved, "the split moved no author"
    assert not rows_by_shard(Author)[SOURCE] & moved

    # every author readable by key, on its new owner, with its posts and follow
    for pk, *_ in before["testapp.Author"]:
        owner = shard_for(Author, pk)
        assert Author.objects.on_shard(owner.name).strong().filter(pk=pk).exists()
        assert Author.objects.strong().get(pk=pk).pk == pk
        assert Post.objects.strong().filter(author_id=pk).count() == POSTS_EACH
        assert Follow.objects.strong().filter(follower_id=pk).count() == 1

    # no freeze remains: writes to a moved key succeed and land on the new shard
    pk = sorted(moved)[0]
    assert Author.objects.filter(pk=pk).update(name="after the split") == 1
    author = Author.objects.strong().get(pk=pk)
    assert author.name == "after the split"
    post = Post.objects.create(author=author, title="written after the split")
    assert Post.objects.on_shard(TARGET).strong().filter(pk=post.pk).exists()
    author.score += 1
    author.save()


def start() -> tuple[dict[str, list[tuple]], int]:
    seed()
    registry.reset()
    base = get_map(GROUP).version
    before = group_rows()
    assert len(before["testapp.Author"]) == AUTHORS
    assert len(before["testapp.Post"]) == AUTHORS * POSTS_EACH
    return before, base


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("point", [p for p in KILL_POINTS if p != "copying the first table"])
def test_kill_9_in_each_phase_then_resume_ends_with_identical_checksums(point):
    before, base = start()
    split, killed = kill_at(SPLIT_ARGV, point)
    write_while_dead(killed, before)

    log = resume()
    assert "done" in log, log + split.output()
    assert_split_finished(before, base, log)


def test_two_kills_in_a_row_then_resume():
    """Killed while copying the first table, resumed in another process and killed again
    mid-clean-up, then resumed to the end."""
    before, base = start()
    _, killed = kill_at(SPLIT_ARGV, "copying the first table")
    write_while_dead(killed, before)

    _, killed = kill_at(RESUME_ARGV, "cleaning")
    write_while_dead(killed, before)

    log = resume()
    assert_split_finished(before, base, log)
