import pytest

from django_shards import shard_for
from tests.testapp.models import Author, Post


@pytest.mark.django_db(databases="__all__")
def test_create_and_get_by_pk_routes_to_owner():
    a = Author.objects.create(email="a@x.org")
    shard = shard_for(Author, a.pk)
    assert a._state.db == shard.primary
    got = Author.objects.get(pk=a.pk)
    assert got.email == "a@x.org"
    p = Post.objects.create(author=a, title="hi")
    assert p._state.db == shard.primary
    assert list(a.post_set.all()) == [p]
    assert Post.objects.filter(author=a).target_shards() == [shard.name]
