"""A row's shard key never silently changes: ``save()``, ``update_or_create()``,
``bulk_update()`` and ``update()`` raise ``ShardKeyChanged`` and write nothing."""

import pytest
from django.db import connections

from django_shards import shard_for
from django_shards.exceptions import ShardingError, ShardKeyChanged
from tests.factories import AuthorFactory, PostFactory, authors_on_distinct_shards
from tests.testapp.models import Author, Event, Post

pytestmark = pytest.mark.django_db(databases="__all__")


def stored_rows(model, columns):
    """{primary alias: sorted rows} of ``model``'s table on every shard primary, read with
    plain SQL so that routing cannot hide a stray copy."""
    from django_shards.keys import key_for_model
    from django_shards.shardmap import get_map

    group = key_for_model(model).group
    table = model._meta.db_table
    out = {}
    for shard in get_map(group).shards.values():
        conn = connections[shard.primary]
        q = conn.ops.quote_name
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT {', '.join(map(q, columns))} FROM {q(table)} ORDER BY 1")
            out[shard.name] = [tuple(r) for r in cursor.fetchall()]
    return out


def post_rows():
    return stored_rows(Post, ["id", "author_id", "title", "likes"])


def event_rows():
    return stored_rows(Event, ["id", "account", "kind", "amount"])


def test_save_refuses_a_new_key_on_another_shard_and_writes_nothing():
    a, b = authors_on_distinct_shards(2)
    post = PostFactory(author=a, title="before")
    before = post_rows()
    post.author_id = b.pk
    post.title = "after"
    with pytest.raises(ShardKeyChanged) as raised:
        post.save()
    message = str(raised.value)
    assert "testapp.Post" in message
    assert repr(a.pk) in message and repr(b.pk) in message
    assert repr(shard_for(Author, a.pk).name) in message
    assert repr(shard_for(Author, b.pk).name) in message
    assert "create it with the new key and delete the old one" in message
    assert post_rows() == before
    assert Post.objects.strong().get(pk=post.pk).author_id == a.pk  # one row, unchanged


def authors_on_one_shard(n=2):
    """``n`` authors whose ids land on the same shard."""
    by_shard = {}
    while True:
        a = AuthorFactory()
        found = by_shard.setdefault(shard_for(Author, a.pk).name, [])
        found.append(a)
        if len(found) == n:
            return found


def test_save_refuses_a_related_object_assignment_that_changes_the_key():
    a, b = authors_on_one_shard(2)
    post = PostFactory(author=a)
    post.author = b  # another shard would be refused right here (CrossShardRelation)
    with pytest.raises(ShardKeyChanged):
        post.save()
    with pytest.raises(ShardKeyChanged):
        post.save(update_fields=["title"])
    assert list(Post.objects.filter(pk=post.pk).values_list("author_id", flat=True)) == [a.pk]


def test_save_refuses_a_new_key_on_the_same_shard_too():
    """The rule does not depend on where keys happen to land (it would pass on one shard in
    development and fail on many in production)."""
    event = Event.objects.create(account=5, kind="open")
    event.account = 6  # same range shard s0
    with pytest.raises(ShardKeyChanged, match=r"'account'.*from 5.*to 6"):
        event.save()
    assert list(Event.objects.values_list("account", flat=True)) == [5]


def test_shard_key_changed_is_a_value_error_and_a_sharding_error():
    assert issubclass(ShardKeyChanged, ValueError)
    assert issubclass(ShardKeyChanged, ShardingError)


def test_saves_that_keep_the_key_work():
    a = AuthorFactory()
    post = PostFactory(author=a, likes=1)
    post.likes = 2
    post.save()
    post.author = a  # the same author again
    post.save(update_fields=["likes", "author"])
    loaded = Post.objects.get(pk=post.pk)
    loaded.title = "renamed"
    loaded.save()
    assert Post.objects.strong().get(pk=post.pk).title == "renamed"


def test_a_new_instance_may_get_its_key_before_its_first_save_only():
    a, b = authors_on_distinct_shards(2)
    post = Post(author=a, title="draft")
    post.author_id = b.pk  # not stored yet: nothing to move
    post.save()
    assert Post.objects.get(pk=post.pk).author_id == b.pk
    post.author_id = a.pk
    with pytest.raises(ShardKeyChanged):
        post.save()


def test_a_deferred_key_is_not_changed_by_a_save():
    post = PostFactory()
    loaded = Post.objects.only("id", "likes").get(pk=post.pk, author_id=post.author_id)
    loaded.likes = 99
    loaded.save()
    assert Post.objects.strong().get(pk=post.pk).likes == 99


def test_update_or_create_refuses_a_new_key_named_by_the_lookup():
    Event.objects.create(account=5, kind="open", amount=1)
    before = event_rows()
    with pytest.raises(ShardKeyChanged, match=r"from 5.*'s0'.*to 1500.*'s1'"):
        Event.objects.update_or_create(account=5, defaults={"account": 1500})
    assert event_rows() == before
    assert not Event.objects.filter(account=1500).exists()


def test_update_or_create_by_id_neither_moves_nor_copies_the_row():
    event = Event.objects.create(account=5, kind="open", amount=1)
    before = event_rows()
    with pytest.raises(ShardKeyChanged):
        Event.objects.update_or_create(id=event.pk, defaults={"account": 1500, "amount": 2})
    assert event_rows() == before
    assert Event.objects.filter(id=event.pk).count() == 1


def test_update_or_create_that_keeps_the_key_updates():
    Event.objects.create(account=5, kind="open", amount=1)
    event, created = Event.objects.update_or_create(account=5, defaults={"amount": 7})
    assert not created and event.amount == 7
    assert Event.objects.get(account=5).amount == 7


def test_bulk_update_refuses_a_changed_key_and_writes_no_shard():
    a, b = authors_on_distinct_shards(2)
    posts = [PostFactory(author=a, likes=0), PostFactory(author=b, likes=0)]
    before = post_rows()
    for p in posts:
        p.likes = 5
    posts[1].author_id = a.pk
    with pytest.raises(ShardKeyChanged):
        Post.objects.bulk_update(posts, ["likes", "author"])
    assert post_rows() == before  # not even the first post's shard was written


def test_bulk_update_with_the_key_among_fields_but_unchanged_works():
    a, b = authors_on_distinct_shards(2)
    posts = [PostFactory(author=a, likes=0), PostFactory(author=b, likes=0)]
    for p in posts:
        p.likes = 3
    assert Post.objects.bulk_update(posts, ["likes", "author"]) == 2
    assert sorted(Post.objects.values_list("likes", flat=True)) == [3, 3]


def test_bulk_created_rows_remember_their_stored_key():
    a, b = authors_on_distinct_shards(2)
    post = Post(author=a, title="x")
    post.author_id = b.pk  # changed before the insert: b is what is stored
    Post.objects.bulk_create([post])
    post.likes = 4
    post.save()
    post.author_id = a.pk
    with pytest.raises(ShardKeyChanged):
        post.save()


def test_update_refuses_to_set_another_key_and_changes_nothing():
    a, b = authors_on_distinct_shards(2)
    PostFactory.create_batch(2, author=a)
    before = post_rows()
    with pytest.raises(ShardKeyChanged, match=f"from {a.pk!r}.*to {b.pk!r}"):
        Post.objects.filter(author=a).update(author=b)
    with pytest.raises(ShardKeyChanged, match=f"to {b.pk!r}"):
        Post.objects.filter(likes__gte=0).update(author_id=b.pk)  # keys unknown: fan-out
    assert post_rows() == before


def test_update_setting_the_key_it_filters_on_is_allowed():
    a = AuthorFactory()
    PostFactory.create_batch(2, author=a)
    assert Post.objects.filter(author=a).update(author=a, likes=8) == 2
    assert set(Post.objects.filter(author=a).values_list("likes", flat=True)) == {8}
