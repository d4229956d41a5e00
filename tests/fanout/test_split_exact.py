"""Fan-outs return every row exactly once at every moment of a split.

From the cutover until the clean-up has finished, the split's source still holds the moved
rows (also while a split killed in between lies unresumed). Fan-outs must not count them
twice: counts, lists, values, aggregates, group-bys, ordering with slices, iterators and
``in_bulk`` over the group equal the same queries on unsharded twin tables holding the
same rows.

The split runs in a subprocess (``tests/support/split_process.py``), held at a point by the
runner's ``hold`` hook and killed there with SIGKILL, so where it stops never depends on
timing.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections
from django.db.models import Count, Max, Min, Sum

from django_shards.models import SplitJob
from django_shards.shardmap import get_map, registry
from tests.factories import AuthorFactory, PostFactory
from tests.support.backend import wait_for_replicas
from tests.support.split_process import DEADLINE_SECONDS, POLL_SECONDS, SplitProcess
from tests.support.splitting import MAP_LEASE_SECONDS, empty_tables, wait_for_target_replicas
from tests.testapp.models import Author, AuthorTwin, Follow, Post, PostTwin

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

GROUP, SOURCE, TARGET = "users", "s1", "s4"
AUTHORS, POSTS_EACH = 60, 3
FIRST_AUTHOR_ID = 1000  # fixed keys: s1 holds 14 authors, 8 of which move to s4
SPLIT_ARGV = [
    "shard_split", GROUP, SOURCE, "--to", TARGET, "--primary", "s4", "--replica", "s4_r1",
    "--no-input", "--batch-size", "5",
]  # fmt: skip


def empty_target() -> None:
    empty_tables(TARGET, (Author, Post, Follow))


@pytest.fixture(autouse=True)
def _short_lease_and_empty_target(transactional_db, settings):
    # the split's process uses this lease too (tests/support/held_split.py)
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": MAP_LEASE_SECONDS}
    empty_target()
    yield
    empty_target()


def seed() -> None:
    """The group's authors and posts, and the same rows in the unsharded twin tables."""
    authors = AuthorFactory.build_batch(AUTHORS)
    for i, author in enumerate(authors):
        author.pk = FIRST_AUTHOR_ID + i
    Author.objects.bulk_create(authors)
    posts = [PostFactory.build(author=a) for a in authors for _ in range(POSTS_EACH)]
    Post.objects.bulk_create(posts)
    AuthorTwin.objects.bulk_create(
        AuthorTwin(id=a.pk, email=a.email, name=a.name, score=a.score, joined=a.joined)
        for a in authors
    )
    PostTwin.objects.bulk_create(
        PostTwin(id=p.pk, author_id=p.author_id, title=p.title, likes=p.likes, created=p.created)
        for p in posts
    )


def fanout_answers(post: Any, author: Any) -> dict[str, Any]:
    """The same questions asked of ``post``/``author`` querysets (sharded or twins)."""
    values = ("id", "author_id", "title", "likes")
    return {
        "count": post.count(),
        "authors": author.count(),
        "pks": sorted(post.values_list("pk", flat=True)),
        "values": list(post.order_by("id").values(*values)),
        "models": [(a.pk, a.email, a.score) for a in author.order_by("score", "pk")],
        "aggregate": post.aggregate(
            n=Count("id"), total=Sum("likes"), lo=Min("likes"), hi=Max("likes")
        ),
        "distinct authors": post.aggregate(n=Count("author_id", distinct=True)),
        "group-by": list(
            post.values("author_id").annotate(n=Count("id"), s=Sum("likes")).order_by("author_id")
        ),
        "slice": list(post.order_by("-likes", "id").values_list("id", flat=True)[7:40]),
        "sliced count": post.order_by("id")[10:500].count(),
        "exists": post.filter(likes__gte=0).exists(),
        "iterator": sorted(p.pk for p in post.order_by("id").iterator(chunk_size=7)),
        "in_bulk": sorted(author.in_bulk(list(range(FIRST_AUTHOR_ID, FIRST_AUTHOR_ID + 99)))),
    }


def assert_fanouts_exact() -> None:
    """Every fan-out over the group answers what one database holding each row once would."""
    registry.reset()
    wait_for_replicas()
    wait_for_target_replicas()
    expected = fanout_answers(PostTwin.objects.all(), AuthorTwin.objects.all())
    assert expected["count"] == AUTHORS * POSTS_EACH
    got = fanout_answers(Post.objects.fanout(), Author.objects.fanout())
    for question, answer in expected.items():
        assert got[question] == answer, question
    connections.close_all()


def source_holds_moved_rows() -> bool:
    """The source's tables hold rows the current map gives to the target."""
    registry.reset()
    shard_map = get_map(GROUP)
    assert TARGET in shard_map.layout.shard_names() and SOURCE in shard_map.holding_unowned
    held = Author.objects.on_shard(SOURCE).strong().values_list("pk", flat=True)
    return any(shard_map.shard_for_key(pk).name == TARGET for pk in held)


def resume() -> None:
    wait_for_target_replicas()
    out = io.StringIO()
    call_command("shard_split", GROUP, SOURCE, "--resume", stdout=out, stderr=out)
    registry.reset()
    assert SplitJob.objects.using("default").get(group=GROUP).phase == "done", out.getvalue()


@pytest.mark.parametrize("point", ["cut_over", "cleanup testapp.Post"])
def test_fanouts_are_exact_while_a_split_lies_killed_after_its_cutover(point):
    seed()
    assert_fanouts_exact()
    split = SplitProcess(SPLIT_ARGV, hold_at=point)
    split.kill_when_held()
    job = SplitJob.objects.using("default").get(group=GROUP)
    assert job.phase == "cut_over", (job.phase, split.output())
    assert source_holds_moved_rows()
    if point.startswith("cleanup"):  # some moved posts already deleted from the source
        assert job.progress.get("cleanup"), job.progress

    assert_fanouts_exact()

    resume()
    assert get_map(GROUP).holding_unowned == frozenset()
    assert_fanouts_exact()


class CountingReader(threading.Thread):
    """Fan-out counts and sums over the group, again and again, until stopped; every
    answer that differs from the truth is kept."""

    def __init__(self, posts: int, likes: int) -> None:
        super().__init__(daemon=True)
        self.expected = {"posts": posts, "authors": AUTHORS, "likes": likes}
        self.stop = threading.Event()
        self.wrong: list[tuple[int, bool, dict[str, Any]]] = []
        self.reads = 0
        self.reads_while_held = 0  # reads while the source held moved rows
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                shard_map = get_map(GROUP)
                answer = {
                    "posts": Post.objects.fanout().count(),
                    "authors": Author.objects.fanout().count(),
                    "likes": Post.objects.fanout().aggregate(s=Sum("likes"))["s"],
                }
                self.reads += 1
                self.reads_while_held += bool(shard_map.holding_unowned)
                if answer != self.expected:
                    self.wrong.append((shard_map.version, bool(shard_map.holding_unowned), answer))
        except BaseException as exc:  # noqa: BLE001 - raised by the test
            self.error = exc
        finally:
            connections.close_all()


def test_a_reader_never_sees_a_wrong_count_through_a_whole_split():
    seed()
    truth = PostTwin.objects.aggregate(n=Count("id"), s=Sum("likes"))
    reader = CountingReader(truth["n"], truth["s"])
    reader.start()
    # held in the clean-up until the reader has read while the source holds moved rows
    split = SplitProcess(SPLIT_ARGV, hold_at="cleanup testapp.Post")
    try:
        split.wait_held()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while reader.reads_while_held < 5 and reader.is_alive():
            assert time.monotonic() < deadline, "the reader never saw the source holding rows"
            time.sleep(POLL_SECONDS)
        split.held.release()
        assert split.wait() == 0, split.output()
        deadline = time.monotonic() + DEADLINE_SECONDS
        done_at = reader.reads
        while reader.reads < done_at + 5 and reader.is_alive():  # a few reads after the end
            assert time.monotonic() < deadline
            time.sleep(POLL_SECONDS)
    finally:
        reader.stop.set()
        reader.join(timeout=DEADLINE_SECONDS)
        split.kill()
    assert reader.error is None, reader.error
    assert reader.wrong == [], reader.wrong[:5]
    assert reader.reads_while_held >= 5
    assert SplitJob.objects.using("default").get(group=GROUP).phase == "done"
    assert_fanouts_exact()
