"""A lookup index maps values to shard keys, not shards: after a split, a query by a
looked-up value finds its row on the shard that owns it now, and only there."""

from __future__ import annotations

import pytest

from django_shards import shard_for
from django_shards.shardmap import registry
from tests.splitting.test_split import split
from tests.testapp.models import Member, Note

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)


def test_a_lookup_finds_its_row_after_a_split():
    members = [Member(email=f"s{i}@x.org", handle=f"h{i % 3}") for i in range(60)]
    Member.objects.bulk_create(members)
    for m in members[::4]:
        Note.objects.create(member=m, title=f"note of {m.email}")
    before = {m.pk: shard_for(Member, m.pk).name for m in members}
    assert "s1" in before.values()

    split("members", "s1", "--to", "s4", "--primary", "s4", "--replica", "s4_r1")

    registry.reset()
    after = {m.pk: shard_for(Member, m.pk).name for m in members}
    moved = [m for m in members if after[m.pk] != before[m.pk]]
    assert moved and {after[m.pk] for m in moved} == {"s4"}
    for m in members:
        qs = Member.objects.strong().filter(email=m.email)
        assert qs.target_shards() == [after[m.pk]]
        assert qs.get() == m
    for h in ("h0", "h1", "h2"):
        expected = {m.pk for m in members if m.handle == h}
        assert set(Member.objects.strong().filter(handle=h).values_list("pk", flat=True)) == (
            expected
        )
    for m in members[::4]:
        assert Note.objects.strong().get(title=f"note of {m.email}").member_id == m.pk
