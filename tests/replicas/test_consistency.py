"""Which alias serves a read: replicas for eventual reads, primaries for strong reads,
read-your-writes pins, atomic blocks, replica failure. Replica reads need committed data,
so these tests are transactional and wait for the replicas."""

import threading
import time

import pytest
from asgiref.sync import async_to_sync
from django.db import connections, transaction
from django.test import override_settings

import django_shards
from django_shards import context, shard_for
from django_shards.conf import Shard
from django_shards.middleware import COOKIE_NAME
from django_shards.replicas import pool
from tests.support.backend import unreachable, wait_for_replicas
from tests.testapp.models import Author, Post

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def committed_author(**kwargs):
    a = Author.objects.create(email="c@x.org", **kwargs)
    context.clear_pins()  # as if the write happened in an earlier request
    wait_for_replicas()
    return a, shard_for(Author, a.pk)


def test_default_read_is_eventual_and_served_by_a_replica():
    a, shard = committed_author()
    assert Author.objects.get(pk=a.pk)._state.db == shard.replicas[0]


def test_strong_reads_the_primary_and_eventual_a_replica():
    a, shard = committed_author()
    assert Author.objects.strong().get(pk=a.pk)._state.db == shard.primary
    assert Author.objects.eventual().get(pk=a.pk)._state.db == shard.replicas[0]


def test_read_right_after_a_write_goes_to_the_primary_until_the_pin_expires():
    with override_settings(
        DJANGO_SHARDS={**django_shards_settings(), "PIN_AFTER_WRITE_SECONDS": 0.3}
    ):
        a = Author.objects.create(email="pin@x.org")
        shard = shard_for(Author, a.pk)
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary
        # an explicit eventual() read goes to a replica even while pinned
        wait_for_replicas()
        assert Author.objects.eventual().get(pk=a.pk)._state.db == shard.replicas[0]
        time.sleep(0.35)
        assert Author.objects.get(pk=a.pk)._state.db == shard.replicas[0]
        assert shard.primary not in context.pins()  # the expired pin is forgotten


def test_pins_are_per_shard():
    a, shard = committed_author()
    b = Author(email="b@x.org")
    while shard_for(Author, b.pk).name == shard.name:
        b = Author(email="b@x.org")
    b.save()
    wait_for_replicas()
    assert Author.objects.get(pk=b.pk)._state.db == shard_for(Author, b.pk).primary
    assert Author.objects.get(pk=a.pk)._state.db == shard.replicas[0]


def test_consistency_block_makes_default_reads_strong_and_restores_on_exit():
    a, shard = committed_author()
    with django_shards.consistency("strong"):
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary
        with django_shards.consistency("eventual"):
            assert Author.objects.get(pk=a.pk)._state.db == shard.replicas[0]
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary
    assert Author.objects.get(pk=a.pk)._state.db == shard.replicas[0]


def test_relating_objects_without_writing_does_not_pin():
    a, shard = committed_author()
    Post(author=a, title="draft")  # Django asks the router for a write alias here
    assert Author.objects.get(pk=a.pk)._state.db == shard.replicas[0]


def test_unknown_consistency_level_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown consistency 'sometimes'"):
        with django_shards.consistency("sometimes"):
            pass


def test_read_consistency_setting_strong_sends_default_reads_to_primaries():
    a, shard = committed_author()
    with override_settings(
        DJANGO_SHARDS={**django_shards_settings(), "READ_CONSISTENCY": "strong"}
    ):
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary


def test_reads_inside_atomic_on_the_shard_use_its_primary():
    a, shard = committed_author()
    with transaction.atomic(using=shard.primary):
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary
    with django_shards.atomic(Author, a.pk):
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary


def test_consistency_is_per_thread():
    a, shard = committed_author()
    seen = {}

    def reader():
        seen["alias"] = Author.objects.get(pk=a.pk)._state.db
        for conn in connections.all(initialized_only=True):
            conn.close()

    with django_shards.consistency("strong"):
        t = threading.Thread(target=reader)
        t.start()
        t.join()
        assert Author.objects.get(pk=a.pk)._state.db == shard.primary
    assert seen["alias"] == shard.replicas[0]


def test_async_orm_calls_route_like_their_sync_twins():
    a, shard = committed_author()

    async def work():
        got = await Author.objects.aget(pk=a.pk)
        strong = await Author.objects.strong().aget(pk=a.pk)
        created = await Author.objects.acreate(email="async@x.org")
        after = await Author.objects.aget(pk=created.pk)
        return got._state.db, strong._state.db, created, after._state.db

    eventual_alias, strong_alias, created, after_alias = async_to_sync(work)()
    assert eventual_alias == shard.replicas[0]
    assert strong_alias == shard.primary
    assert after_alias == shard_for(Author, created.pk).primary  # read-your-writes


def test_failed_replica_is_skipped_and_the_read_still_answers():
    a, shard = committed_author()
    replica = shard.replicas[0]
    with unreachable(replica):
        got = Author.objects.get(pk=a.pk)
        assert got.email == "c@x.org"
        assert got._state.db == shard.primary
        assert pool.is_down(replica)
        # while it cools down the replica is not tried again
        assert Author.objects.eventual().get(pk=a.pk)._state.db == shard.primary
    pool.reset()  # the cool-down is over
    assert Author.objects.get(pk=a.pk)._state.db == replica


def test_replica_selection_round_robin_rotates_and_skips_down_replicas():
    shard = Shard("x", "s0", ("s0_r1", "s1_r1", "s2_r1"))
    firsts = [pool.ordered(shard)[0] for _ in range(6)]
    assert firsts == ["s0_r1", "s1_r1", "s2_r1", "s0_r1", "s1_r1", "s2_r1"]
    pool.mark_down("s1_r1")
    assert "s1_r1" not in pool.ordered(shard)


def test_replica_selection_fastest_prefers_lowest_latency():
    shard = Shard("x", "s0", ("s0_r1", "s1_r1"))
    with override_settings(
        DJANGO_SHARDS={**django_shards_settings(), "REPLICA_SELECTION": "fastest"}
    ):
        pool.observe("s0_r1", 0.010)
        pool.observe("s1_r1", 0.001)
        assert pool.ordered(shard) == ["s1_r1", "s0_r1"]


def test_pinning_middleware_carries_read_your_writes_to_the_next_request(client):
    response = client.post("/t/authors/", {"email": "mw@x.org"})
    pk = int(response.json()["id"])
    shard = shard_for(Author, pk)
    assert COOKIE_NAME in response.cookies
    context.clear_pins()  # a new request starts clean; only the cookie remembers
    wait_for_replicas()
    assert client.get(f"/t/authors/{pk}/").json()["alias"] == shard.primary
    client.cookies.pop(COOKIE_NAME)
    assert client.get(f"/t/authors/{pk}/").json()["alias"] == shard.replicas[0]


def test_a_forged_pin_cookie_is_ignored(client):
    a, shard = committed_author()
    client.cookies[COOKIE_NAME] = "not-signed"
    assert client.get(f"/t/authors/{a.pk}/").json()["alias"] == shard.replicas[0]


def django_shards_settings():
    from django.conf import settings

    return dict(settings.DJANGO_SHARDS)


def test_unreachable_primary_raises_shard_unavailable_naming_it():
    from django.db import OperationalError

    from django_shards.exceptions import ShardUnavailable

    a, shard = committed_author()
    with unreachable(shard.primary):
        with pytest.raises(ShardUnavailable, match=repr(shard.primary)) as info:
            Author.objects.strong().get(pk=a.pk)
        assert isinstance(info.value, OperationalError)  # code catching it before still does
        new_id = next(i for i in range(a.pk + 1, a.pk + 1000) if shard_for(Author, i) == shard)
        with pytest.raises(ShardUnavailable):
            Author.objects.create(id=new_id, email="new@x.org")
        with pytest.raises(ShardUnavailable):
            Author.objects.filter(pk=a.pk).update(name="x")
        # eventual reads still answer from the replica
        assert Author.objects.eventual().get(pk=a.pk).email == "c@x.org"
