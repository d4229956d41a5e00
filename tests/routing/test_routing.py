"""Single-key routing: queries land on the shard that owns the key, nothing else."""

import datetime

import pytest
from django.db import connections
from django.db.models import Q
from django.test.utils import CaptureQueriesContext

from django_shards import shard_for
from django_shards.exceptions import ShardKeyRequired, UnknownShard
from tests.factories import AuthorFactory, EventFactory, PostFactory, authors_on_distinct_shards
from tests.testapp.models import Author, Event, LegacyCode, Post, Reading, Tag

pytestmark = pytest.mark.django_db(databases="__all__")


def aliases_used(fn):
    """Run ``fn`` and return {alias: number of queries} over every database alias."""
    contexts = {alias: CaptureQueriesContext(connections[alias]) for alias in connections}
    for ctx in contexts.values():
        ctx.__enter__()
    try:
        fn()
    finally:
        for ctx in contexts.values():
            ctx.__exit__(None, None, None)
    return {alias: len(ctx) for alias, ctx in contexts.items() if len(ctx)}


def test_created_author_is_stored_only_on_the_shard_that_owns_its_id():
    a = AuthorFactory()
    owner = shard_for(Author, a.pk)
    for name in ("s0", "s1", "s2", "s3"):
        count = (
            Author.objects.on_shard(name).filter(pk=a.pk).count()
            if name == owner.name
            else (Author.objects.using(name).filter(pk=a.pk).count())
        )
        assert count == (1 if name == owner.name else 0)


def test_get_by_pk_reads_one_shard_only():
    a = AuthorFactory()
    owner = shard_for(Author, a.pk)
    used = aliases_used(lambda: Author.objects.get(pk=a.pk))
    assert set(used) <= set(owner.aliases)
    assert sum(used.values()) == 1


def test_key_given_as_string_routes_like_the_int():
    a = AuthorFactory()
    assert Author.objects.get(pk=str(a.pk)) == a
    assert Author.objects.filter(id=str(a.pk)).target_shards() == [shard_for(Author, a.pk).name]


def test_posts_live_with_their_author_and_related_managers_route_both_ways():
    a = AuthorFactory()
    posts = PostFactory.create_batch(3, author=a)
    owner = shard_for(Author, a.pk)
    assert {p._state.db for p in posts} == {owner.primary}
    assert sorted(p.pk for p in a.post_set.all()) == sorted(p.pk for p in posts)
    post = Post.objects.get(author=a, pk=posts[0].pk)
    assert post.author == a  # forward FK through the base manager
    assert post.author._state.db in owner.aliases


def test_filter_by_fk_instance_id_or_in_list_targets_owning_shards():
    a, b = authors_on_distinct_shards(2)
    sa, sb = shard_for(Author, a.pk).name, shard_for(Author, b.pk).name
    assert Post.objects.filter(author=a).target_shards() == [sa]
    assert Post.objects.filter(author_id=a.pk).target_shards() == [sa]
    assert Post.objects.filter(author__id=a.pk).target_shards() == [sa]
    assert sorted(Post.objects.filter(author_id__in=[a.pk, b.pk]).target_shards()) == sorted(
        [sa, sb]
    )
    assert Post.objects.filter(Q(author=a) | Q(author=b)).target_shards() == sorted([sa, sb])
    assert Post.objects.filter(Q(author=a) & Q(title="x")).target_shards() == [sa]


def test_contradictory_keys_match_no_shard_and_return_nothing():
    a, b = authors_on_distinct_shards(2)
    qs = Author.objects.filter(pk=a.pk).filter(pk=b.pk)
    assert qs.target_shards() == []
    assert list(qs) == []
    assert Author.objects.filter(pk__in=[]).count() == 0


def test_query_without_key_fans_out_to_every_shard():
    AuthorFactory()
    assert Author.objects.filter(email="nobody@example.org").target_shards() == [
        "s0",
        "s1",
        "s2",
        "s3",
    ]


def test_operation_that_cannot_fan_out_names_the_shards():
    with pytest.raises(ShardKeyRequired, match="s0, s1, s2, s3"):
        Author.objects.filter(email="x@y.org").explain()


def test_negated_key_filter_is_not_mistaken_for_a_key():
    a = AuthorFactory()
    assert len(Author.objects.exclude(pk=a.pk).target_shards()) == 4


def test_join_through_author_field_is_not_taken_as_the_key():
    a = AuthorFactory()
    assert len(Post.objects.filter(author__email=a.email).target_shards()) == 4


def test_for_key_and_on_shard_pin_the_queryset():
    a = AuthorFactory()
    PostFactory(author=a, title="pinned")
    owner = shard_for(Author, a.pk)
    assert Post.objects.for_key(a.pk).target_shards() == [owner.name]
    assert [p.title for p in Post.objects.for_key(a.pk).filter(title="pinned")] == ["pinned"]
    assert Post.objects.on_shard(owner.name).filter(title="pinned").count() == 1
    other = next(n for n in ("s0", "s1", "s2", "s3") if n != owner.name)
    assert Post.objects.on_shard(other).filter(title="pinned").count() == 0


def test_on_shard_with_unknown_name_is_a_clear_error():
    with pytest.raises(UnknownShard, match=r"no shard named 'nope'.*s0, s1, s2, s3"):
        Author.objects.on_shard("nope")


def test_range_predicates_prune_to_overlapping_shards():
    assert Event.objects.filter(account=5).target_shards() == ["s0"]
    assert Event.objects.filter(account__gte=1500).target_shards() == ["s1", "s2"]
    assert Event.objects.filter(account__lt=1000).target_shards() == ["s0"]
    assert Event.objects.filter(account__lte=1000).target_shards() == ["s0", "s1"]
    assert Event.objects.filter(account__range=(900, 1100)).target_shards() == ["s0", "s1"]
    assert Event.objects.filter(account__gt=1200, account__lt=1300).target_shards() == ["s1"]
    assert Event.objects.filter(account__in=[1, 2500]).target_shards() == ["s0", "s2"]


def test_range_query_inside_one_shard_returns_the_rows():
    events = EventFactory.create_batch(30)
    expected = sum(1 for e in events if 1100 <= e.account < 1900)
    assert 0 < expected < 30  # the data spans more than the queried range
    assert Event.objects.filter(account__gte=1100, account__lt=1900).count() == expected


def test_hash_and_modulo_groups_route_writes_and_reads():
    r = Reading.objects.create(sensor_id=42, value=1.5)
    assert Reading.objects.get(sensor_id=42, pk=r.pk).value == 1.5
    assert r._state.db == shard_for(Reading, 42).primary
    code = LegacyCode.objects.create(code="ABC-1", label="first")
    assert LegacyCode.objects.get(pk="ABC-1").label == "first"
    assert code._state.db == shard_for(LegacyCode, "ABC-1").primary


def test_unsharded_model_behaves_as_plain_django_on_default():
    t = Tag.objects.create(name="django")
    assert t._state.db == "default"
    assert Tag.objects.get(name="django") == t
    assert Tag.objects.count() == 1


def test_select_related_and_prefetch_related_inside_the_group():
    a = AuthorFactory()
    PostFactory.create_batch(2, author=a)
    posts = list(Post.objects.filter(author=a).select_related("author"))
    assert {p.author.email for p in posts} == {a.email}
    authors = list(Author.objects.filter(pk=a.pk).prefetch_related("post_set"))
    assert len(authors[0].post_set.all()) == 2


def test_values_and_dates_route_by_key():
    a = AuthorFactory(joined=datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC))
    assert list(Author.objects.filter(pk=a.pk).values_list("email", flat=True)) == [a.email]
    assert Author.objects.filter(pk=a.pk, joined__year=2024).exists()
