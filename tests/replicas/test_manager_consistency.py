"""``Model.objects.strong()``/``eventual()`` from the manager: the same queryset as the
queryset methods give, without the extra clone, and a manager or queryset that overrides
``get_queryset()``, ``strong()`` or ``eventual()`` keeps its behaviour."""

import pytest

from django_shards import ShardedManager, context, shard_for
from django_shards.query import ShardedQuerySet
from tests.support.backend import wait_for_replicas
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def committed_author(email: str) -> Author:
    a = Author.objects.create(email=email)
    context.clear_pins()  # as if the write happened in an earlier request
    wait_for_replicas()
    return a


def attached(manager: ShardedManager) -> ShardedManager:
    """``manager`` on ``Author`` without adding it to the model (as a mixin would)."""
    manager.model = Author
    return manager


def test_manager_strong_and_eventual_are_new_querysets_each_time():
    a = committed_author("m1@x.org")
    shard = shard_for(Author, a.pk)
    strong, eventual = Author.objects.strong(), Author.objects.eventual()
    assert strong is not Author.objects.strong()
    assert strong.filter(pk=a.pk).db == shard.primary
    assert eventual.filter(pk=a.pk).db == shard.replicas[0]
    # the default read is still eventual: nothing was set on a shared queryset
    assert Author.objects.get(pk=a.pk)._state.db == shard.replicas[0]
    assert Author.objects.strong().get(pk=a.pk)._state.db == shard.primary


def test_a_manager_whose_get_queryset_filters_keeps_its_filter():
    class OnlyM2(ShardedManager):
        def get_queryset(self) -> ShardedQuerySet:
            return super().get_queryset().filter(email="m2@x.org")

    a = committed_author("m2@x.org")
    committed_author("other@x.org")
    manager = attached(OnlyM2())
    assert [x.pk for x in manager.strong().fanout()] == [a.pk]
    assert manager.eventual().get(pk=a.pk).pk == a.pk


def test_a_queryset_that_overrides_strong_is_still_called():
    calls = []

    class Counting(ShardedQuerySet):
        def strong(self) -> ShardedQuerySet:
            calls.append("strong")
            return super().strong()

        def eventual(self) -> ShardedQuerySet:
            calls.append("eventual")
            return super().eventual()

    a = committed_author("m3@x.org")
    shard = shard_for(Author, a.pk)
    manager = attached(ShardedManager.from_queryset(Counting)())
    assert manager.strong().get(pk=a.pk)._state.db == shard.primary
    assert manager.eventual().get(pk=a.pk)._state.db == shard.replicas[0]
    assert calls == ["strong", "eventual"]
