"""Writes go to the owner's primary: create, save, delete with cascades, bulk, get_or_create."""

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

import django_shards
from django_shards import shard_for
from django_shards.exceptions import CrossShardRelation, ShardingError, ShardKeyRequired
from django_shards.router import ShardRouter
from tests.factories import AuthorFactory, PostFactory, authors_on_distinct_shards
from tests.testapp.models import Author, Event, Follow, Post, Tag

pytestmark = pytest.mark.django_db(databases="__all__")


def test_delete_cascades_to_posts_and_follows_on_the_same_shard():
    a, b = authors_on_distinct_shards(2)
    PostFactory.create_batch(3, author=a)
    Follow.objects.create(follower=a, followee=b)
    a_pk = a.pk
    _deleted, per_model = a.delete()
    assert per_model == {"testapp.Post": 3, "testapp.Follow": 1, "testapp.Author": 1}
    assert Post.objects.filter(author_id=a_pk).count() == 0
    assert Follow.objects.filter(follower_id=a_pk).count() == 0
    assert Author.objects.filter(pk=b.pk).exists()


def test_queryset_update_and_delete_on_one_key():
    a = AuthorFactory()
    PostFactory.create_batch(2, author=a, likes=1)
    assert Post.objects.filter(author=a).update(likes=5) == 2
    assert set(Post.objects.filter(author=a).values_list("likes", flat=True)) == {5}
    assert Post.objects.filter(author=a).delete()[0] == 2


def test_update_refuses_to_change_the_shard_key():
    a, b = authors_on_distinct_shards(2)
    PostFactory(author=a)
    with pytest.raises(ShardingError, match="shard key 'author'"):
        Post.objects.filter(author=a).update(author=b)


def test_bulk_create_sends_one_batch_per_shard():
    authors = [Author(email=f"bulk{i}@x.org") for i in range(40)]
    by_shard = {}
    for a in authors:
        by_shard.setdefault(shard_for(Author, a.pk).primary, []).append(a)
    contexts = {alias: CaptureQueriesContext(connections[alias]) for alias in by_shard}
    for ctx in contexts.values():
        ctx.__enter__()
    Author.objects.bulk_create(authors)
    for ctx in contexts.values():
        ctx.__exit__(None, None, None)
    for alias, ctx in contexts.items():
        inserts = [q for q in ctx.captured_queries if q["sql"].startswith("INSERT")]
        assert len(inserts) == 1, alias
    for a in authors:
        assert Author.objects.filter(pk=a.pk).exists()


def test_bulk_update_groups_rows_by_shard():
    authors = AuthorFactory.create_batch(10)
    for a in authors:
        a.score = 99
    assert Author.objects.bulk_update(authors, ["score"]) == 10
    assert all(Author.objects.get(pk=a.pk).score == 99 for a in authors)


def test_get_or_create_and_update_or_create_with_the_key():
    a = AuthorFactory()
    post, created = Post.objects.get_or_create(author=a, title="t", defaults={"likes": 3})
    assert created and post._state.db == shard_for(Author, a.pk).primary
    again, created = Post.objects.get_or_create(author=a, title="t")
    assert not created and again.pk == post.pk
    _upd, created = Post.objects.update_or_create(author=a, title="t", defaults={"likes": 9})
    assert not created and Post.objects.get(author=a, pk=post.pk).likes == 9
    _new, created = Author.objects.update_or_create(pk=12345, defaults={"email": "u@x.org"})
    assert created and Author.objects.get(pk=12345).email == "u@x.org"


def test_related_manager_create_and_add_stay_on_the_author_shard():
    a = AuthorFactory()
    p = a.post_set.create(title="via related")
    assert p._state.db == shard_for(Author, a.pk).primary
    assert a.post_set.count() == 1


def test_relating_objects_on_different_shards_is_refused():
    a, b = authors_on_distinct_shards(2)
    post = PostFactory(author=a)
    with pytest.raises(CrossShardRelation, match="lives on shard"):
        post.author = b
    # a follow stores the followee across shards on purpose (db_constraint=False)
    Follow.objects.create(follower=a, followee=b)


def test_create_without_a_key_says_what_is_missing():
    with pytest.raises(ShardKeyRequired, match="account"):
        Event.objects.create(kind="no account")


def test_atomic_on_a_key_commits_or_rolls_back_on_its_primary():
    a = AuthorFactory(score=1)
    with django_shards.atomic(Author, key=a.pk):
        assert connections[shard_for(Author, a.pk).primary].in_atomic_block
        Author.objects.filter(pk=a.pk).update(score=2)
    assert Author.objects.get(pk=a.pk).score == 2
    with pytest.raises(RuntimeError), django_shards.atomic(Author, key=a.pk):
        Author.objects.filter(pk=a.pk).update(score=3)
        raise RuntimeError("boom")
    assert Author.objects.strong().get(pk=a.pk).score == 2


def test_allow_migrate_places_tables_by_group():
    router = ShardRouter()
    assert router.allow_migrate("s0", "testapp", "author") is True
    assert router.allow_migrate("s3", "testapp", "event") is False  # events: s0..s2
    assert router.allow_migrate("s0_r1", "testapp", "author") is False
    assert router.allow_migrate("default", "testapp", "author") is False
    assert router.allow_migrate("s0", "testapp", "tag") is False
    assert router.allow_migrate("default", "testapp", "tag") is None
    assert router.allow_migrate("default", "django_shards", "shardmapversion") is True
    assert router.allow_migrate("s1", "django_shards", "shardmapversion") is False
    assert router.allow_migrate("s1", "auth", "user") is False


def test_sharded_tables_exist_only_on_group_primaries():
    def tables(alias):
        with connections[alias].cursor() as cursor:
            return set(connections[alias].introspection.table_names(cursor))

    assert "testapp_author" in tables("s0")
    assert "testapp_author" not in tables("default")
    assert "testapp_event" not in tables("s3")
    assert "testapp_tag" in tables("default")
    assert "testapp_tag" not in tables("s0")


def test_transaction_atomic_on_default_does_not_break_unsharded_models():
    with transaction.atomic():
        Tag.objects.create(name="t1")
    assert Tag.objects.filter(name="t1").exists()
