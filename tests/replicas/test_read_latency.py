"""``REPLICA_SELECTION = "fastest"`` learns from the routed reads: each read a replica
serves is timed for it; under other selections, and on the primary, nothing is timed."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from django.test import override_settings

from django_shards import context, shard_for
from django_shards.replicas import pool
from tests.support.backend import wait_for_replicas
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_fastest_times_each_read_a_replica_serves_and_nothing_else(monkeypatch: Any) -> None:
    author = Author.objects.create(email="latency@x.org")
    context.clear_pins()  # as if the write happened in an earlier request
    wait_for_replicas()
    shard = shard_for(Author, author.pk)
    observed: list[tuple[str, float]] = []
    observe = pool.observe

    def recording(alias: str, seconds: float) -> None:
        observed.append((alias, seconds))
        observe(alias, seconds)

    monkeypatch.setattr(pool, "observe", recording)
    assert Author.objects.get(pk=author.pk)._state.db == shard.replicas[0]
    assert observed == []  # the default selection does not time reads
    fastest = {**settings.DJANGO_SHARDS, "REPLICA_SELECTION": "fastest"}
    with override_settings(DJANGO_SHARDS=fastest):
        assert Author.objects.get(pk=author.pk)._state.db == shard.replicas[0]
        assert Author.objects.filter(pk=author.pk).count() == 1
        assert Author.objects.strong().get(pk=author.pk)._state.db == shard.primary
    assert [alias for alias, _ in observed] == [shard.replicas[0]] * 2
    assert all(seconds > 0 for _, seconds in observed)
