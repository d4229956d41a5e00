"""Lookup indexes: reads by a looked-up value touch only the owners' shards, writes keep the
index current, and a unique looked-up field is unique across the cluster.

``Member`` (group "members", key id) has lookups on ``email`` (``unique=True``) and
``handle`` (not unique); ``Note`` (key member) on ``title``, which several rows of one key
may share. The tests are transactional: the index drops a value after the row's
transaction has committed (``on_commit``), which a test transaction never does.
"""

from __future__ import annotations

import contextlib
import threading

import pytest
from django.db import IntegrityError, NotSupportedError, connections
from django.db.backends.utils import CursorWrapper
from django.test.utils import CaptureQueriesContext

from django_shards import lookup_index, shard_for
from django_shards.conf import get_config
from django_shards.models import LookupEntry
from tests.support.members import members_on_distinct_shards
from tests.testapp.models import Member, Note

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

SHARD_ALIASES = [f"s{i}" for i in range(4)] + [f"s{i}_r1" for i in range(4)]


@contextlib.contextmanager
def queries_per_alias():
    """{alias: queries of the test's tables and the index} on every connection of every
    thread (fan-outs use workers; background probes of replica health are left out)."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    original = CursorWrapper._execute_with_wrappers

    def counted(self, sql, *args, **kwargs):
        if "testapp_" in str(sql) or "lookupentry" in str(sql):
            with lock:
                counts[self.db.alias] = counts.get(self.db.alias, 0) + 1
        return original(self, sql, *args, **kwargs)

    CursorWrapper._execute_with_wrappers = counted
    try:
        yield counts
    finally:
        CursorWrapper._execute_with_wrappers = original


def touched_shards(counts: dict[str, int]) -> set[str]:
    return {a.split("_")[0] for a in counts if a in SHARD_ALIASES}


def entries(model: str = "testapp.member", field: str | None = None) -> set[tuple[str, str]]:
    qs = LookupEntry.objects.using(get_config().lookup_alias).filter(model=model)
    if field is not None:
        qs = qs.filter(field=field)
    return {(e.value, e.key) for e in qs}


# reads


def test_get_by_email_reads_the_index_then_only_the_owner_shard():
    members = members_on_distinct_shards(4)
    target = members[2]
    owner = shard_for(Member, target.pk).name
    with queries_per_alias() as counts:
        found = Member.objects.get(email=target.email)
    assert found == target
    assert touched_shards(counts) == {owner}
    assert counts[get_config().lookup_alias] == 1
    assert sum(n for a, n in counts.items() if a in SHARD_ALIASES) == 1


def test_target_shards_reports_the_owners():
    a, b, _c = members_on_distinct_shards(3)
    qs = Member.objects.filter(email__in=[a.email, b.email])
    expected = {shard_for(Member, a.pk).name, shard_for(Member, b.pk).name}
    assert set(qs.target_shards()) == expected
    with queries_per_alias() as counts:
        assert sorted(m.pk for m in qs) == sorted([a.pk, b.pk])
    assert touched_shards(counts) == expected


def test_an_unknown_value_touches_no_shard():
    members_on_distinct_shards(2)
    with queries_per_alias() as counts:
        with pytest.raises(Member.DoesNotExist):
            Member.objects.get(email="nobody@x.org")
        assert not Member.objects.filter(email__in=["a@y", "b@y"]).exists()
        assert Member.objects.filter(email="nobody@x.org").count() == 0
    assert touched_shards(counts) == set()
    nobody = Member.objects.filter(email="nobody@x.org")
    assert nobody.delete() == (0, {})
    assert nobody.update(city="x") == 0
    assert nobody.in_bulk() == {}
    assert list(nobody.iterator()) == []
    assert nobody.first() is None


def test_combined_filters_and_a_non_unique_lookup():
    a, b, c = members_on_distinct_shards(3)
    b.handle = a.handle
    b.city = "Lyon"
    b.save()
    expected = {shard_for(Member, a.pk).name, shard_for(Member, b.pk).name}
    assert set(Member.objects.filter(handle=a.handle).target_shards()) == expected
    assert set(Member.objects.filter(handle=a.handle).values_list("pk", flat=True)) == {a.pk, b.pk}
    with queries_per_alias() as counts:
        assert list(Member.objects.filter(handle=a.handle, city="Lyon")) == [b]
    assert touched_shards(counts) == expected
    assert shard_for(Member, c.pk).name not in touched_shards(counts)


def test_fanout_deny_does_not_refuse_a_lookup(settings):
    a, b = members_on_distinct_shards(2)
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "FANOUT": "deny"}
    assert set(Member.objects.filter(email__in=[a.email, b.email])) == {a, b}


def test_a_stale_entry_never_returns_a_wrong_row():
    (m,) = members_on_distinct_shards(1)
    owner = shard_for(Member, m.pk)
    with connections[owner.primary].cursor() as cursor:  # behind the ORM's back
        cursor.execute(
            f"UPDATE {Member._meta.db_table} SET email = %s WHERE id = %s", ["moved@x.org", m.pk]
        )
    with pytest.raises(Member.DoesNotExist):
        Member.objects.strong().get(email=m.email)  # the entry still says m's key


# writes


def test_create_save_and_delete_keep_the_index_current():
    m = Member.objects.create(email="one@x.org", handle="h1")
    assert entries() == {("one@x.org", str(m.pk)), ("h1", str(m.pk))}
    m.email = "two@x.org"
    m.save()
    assert entries(field="email") == {("two@x.org", str(m.pk))}
    assert Member.objects.get(email="two@x.org") == m
    with pytest.raises(Member.DoesNotExist):
        Member.objects.get(email="one@x.org")
    m.city = "Paris"
    with queries_per_alias() as counts:
        m.save(update_fields=["city"])  # writes no looked-up field: the index is not read
    assert get_config().lookup_alias not in counts
    with CaptureQueriesContext(connections[get_config().lookup_alias]) as ctx:
        m.save()  # writes them unchanged: one read of the index, no write
    assert [q["sql"].split()[0] for q in ctx.captured_queries] == ["SELECT"]
    m.delete()
    assert entries() == set()


def test_a_stale_instance_saved_back_keeps_its_value_found():
    (m,) = members_on_distinct_shards(1)
    stale = Member.objects.get(pk=m.pk)
    m.email = "changed@x.org"
    m.save()  # frees the old value: no row has it any more
    assert (stale.email, str(m.pk)) not in entries(field="email")
    stale.city = "Oslo"
    stale.save()  # Django writes every field: the old e-mail is back in the row
    assert Member.objects.get(email=stale.email) == m
    assert not Member.objects.filter(email="changed@x.org").exists()


def test_bulk_create_and_update_keep_the_index_current():
    members = [Member(email=f"b{i}@x.org", handle="same") for i in range(12)]
    Member.objects.bulk_create(members)
    assert entries(field="email") == {(m.email, str(m.pk)) for m in members}
    assert entries(field="handle") == {("same", str(m.pk)) for m in members}
    assert set(Member.objects.filter(handle="same")) == set(members)
    assert Member.objects.filter(pk=members[0].pk).update(email="new@x.org") == 1
    assert Member.objects.get(email="new@x.org") == members[0]
    assert ("b0@x.org", str(members[0].pk)) not in entries(field="email")
    assert Member.objects.filter(handle="same").update(handle="other") == 12
    assert entries(field="handle") == {("other", str(m.pk)) for m in members}
    for m in members[:3]:
        m.handle = "third"
    Member.objects.bulk_update(members[:3], ["handle"])
    assert set(Member.objects.filter(handle="third")) == set(members[:3])
    assert entries(field="handle") == {
        ("third" if m in members[:3] else "other", str(m.pk)) for m in members
    }


def test_update_with_an_expression_of_a_looked_up_field_is_refused():
    from django.db.models.functions import Upper

    (m,) = members_on_distinct_shards(1)
    with pytest.raises(NotSupportedError, match="looked-up field 'handle'"):
        Member.objects.filter(pk=m.pk).update(handle=Upper("handle"))
    assert Member.objects.get(pk=m.pk).handle == m.handle


def test_rows_of_one_key_share_an_entry_until_the_last_one_goes():
    (m,) = members_on_distinct_shards(1)
    n1 = Note.objects.create(member=m, title="hello")
    n2 = Note.objects.create(member=m, title="hello")
    assert entries("testapp.note") == {("hello", str(m.pk))}
    n1.delete()
    assert entries("testapp.note") == {("hello", str(m.pk))}
    assert list(Note.objects.filter(title="hello")) == [n2]
    n2.title = "bye"
    n2.save()
    assert entries("testapp.note") == {("bye", str(m.pk))}


def test_a_cascade_removes_the_children_entries():
    a, b = members_on_distinct_shards(2)
    Note.objects.create(member=a, title="t-a")
    Note.objects.create(member=b, title="t-b")
    a.delete()
    assert entries("testapp.note") == {("t-b", str(b.pk))}
    assert entries(field="email") == {(b.email, str(b.pk))}
    assert not Note.objects.filter(title="t-a").exists()


# cluster-wide uniqueness


def test_a_duplicate_email_on_another_shard_raises_and_writes_nothing():
    a, b = members_on_distinct_shards(2)
    before = entries()
    dup = Member(email=a.email, handle="dup")
    while shard_for(Member, dup.pk).name == shard_for(Member, a.pk).name:
        dup = Member(email=a.email, handle="dup")
    with pytest.raises(IntegrityError, match="unique across the cluster"):
        dup.save()
    assert not Member.objects.filter(pk=dup.pk).exists()
    assert Member.objects.filter(email=a.email).count() == 1
    assert entries() == before
    b.email = a.email
    with pytest.raises(IntegrityError):
        b.save()
    assert Member.objects.get(pk=b.pk).email != a.email
    with pytest.raises(IntegrityError):
        Member.objects.filter(pk=b.pk).update(email=a.email)
    assert Member.objects.get(pk=b.pk).email != a.email
    assert entries() == before


def test_bulk_create_with_a_duplicate_writes_nothing():
    (a,) = members_on_distinct_shards(1)
    before = entries()
    batch = [Member(email=f"n{i}@x.org", handle="n") for i in range(6)]
    batch.append(Member(email=a.email, handle="n"))
    with pytest.raises(IntegrityError):
        Member.objects.bulk_create(batch)
    assert entries() == before
    assert Member.objects.filter(handle="n").count() == 0


def test_update_of_several_rows_to_one_unique_value_writes_nothing():
    a, b = members_on_distinct_shards(2)
    before = entries()
    with pytest.raises(IntegrityError):
        Member.objects.filter(pk__in=[a.pk, b.pk]).update(email="both@x.org")
    assert entries() == before
    assert {m.email for m in Member.objects.all()} == {a.email, b.email}


# crashes between the two writes


def test_a_crash_after_the_entry_leaves_an_orphan_reads_survive(monkeypatch):
    (a,) = members_on_distinct_shards(1)

    def crash(*args, **kwargs):
        raise RuntimeError("the process died here")

    m = Member(email="ghost@x.org", handle="ghost")
    with monkeypatch.context() as patch:
        patch.setattr(type(Member.objects.get_queryset()), "_insert", crash)
        with pytest.raises(RuntimeError):
            m.save()
    assert ("ghost@x.org", str(m.pk)) in entries(field="email")  # the entry was written
    with pytest.raises(Member.DoesNotExist):
        Member.objects.get(email="ghost@x.org")
    assert not Member.objects.filter(handle="ghost").exists()
    # a younger orphan blocks the value (the write may be in flight) ...
    other = Member(email="ghost@x.org", handle="real")
    with pytest.raises(IntegrityError):
        other.save()
    # ... an older one is taken over
    monkeypatch.setattr(lookup_index, "ORPHAN_GRACE_SECONDS", 0.0)
    other.save()
    assert Member.objects.get(email="ghost@x.org") == other
    assert entries(field="email") == {(a.email, str(a.pk)), ("ghost@x.org", str(other.pk))}


def test_a_crash_before_the_entry_is_removed_leaves_an_orphan_reads_survive(monkeypatch):
    a, b = members_on_distinct_shards(2)
    a_key = str(a.pk)
    with monkeypatch.context() as patch:
        patch.setattr(lookup_index, "release", lambda releases: None)  # died after the delete
        a.delete()
    assert (a.email, a_key) in entries(field="email")
    with pytest.raises(Member.DoesNotExist):
        Member.objects.get(email=a.email)
    assert list(Member.objects.filter(email__in=[a.email, b.email])) == [b]


def test_checks_report_bad_lookups():
    from django.db import models

    from django_shards import ShardedManager, SnowflakeField
    from django_shards.checks.lookups import check_lookups
    from django_shards.keys import _registry

    class Bad(models.Model):
        id = SnowflakeField(primary_key=True)
        body = models.TextField()
        email = models.EmailField()
        objects = ShardedManager(group="users", key="id", lookups=["emial", "id", "body"])

        class Meta:
            app_label = "testapp"

    try:
        ids = [m.id for m in check_lookups() if m.obj is Bad]
        assert ids == ["django_shards.E040", "django_shards.E041", "django_shards.E043"]
    finally:
        del _registry[Bad]
        from django.apps import apps

        del apps.all_models["testapp"]["bad"]
        apps.clear_cache()


def test_check_lookup_alias(settings):
    from django_shards.checks.lookups import check_lookup_alias

    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "LOOKUP_ALIAS": "nope"}
    assert [m.id for m in check_lookup_alias()] == ["django_shards.E042"]
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "LOOKUP_ALIAS": "s0_r1"}
    assert [m.id for m in check_lookup_alias()] == ["django_shards.E042"]
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "LOOKUP_ALIAS": None}
    settings.DATABASES = {
        **settings.DATABASES,
        "default": {**settings.DATABASES["default"], "ATOMIC_REQUESTS": True},
    }
    assert [m.id for m in check_lookup_alias()] == ["django_shards.W005"]


def test_get_or_create_and_update_or_create_by_a_looked_up_value(monkeypatch):
    (a,) = members_on_distinct_shards(1)
    got, created = Member.objects.get_or_create(email=a.email, defaults={"handle": "x"})
    assert (got, created) == (a, False)
    new, created = Member.objects.get_or_create(email="fresh@x.org", defaults={"handle": "f"})
    assert created and Member.objects.get(email="fresh@x.org") == new
    got, created = Member.objects.update_or_create(email=a.email, defaults={"city": "Rome"})
    assert (got, created) == (a, False)
    assert Member.objects.get(pk=a.pk).city == "Rome"
    # a stale entry names a's shard for "old@..."; the new row goes where its own key says
    with connections[shard_for(Member, a.pk).primary].cursor() as cursor:
        cursor.execute(
            f"UPDATE {Member._meta.db_table} SET email = %s WHERE id = %s", ["raw@x.org", a.pk]
        )
    monkeypatch.setattr(lookup_index, "ORPHAN_GRACE_SECONDS", 0.0)  # an old orphan
    made, created = Member.objects.update_or_create(email=a.email, defaults={"handle": "n"})
    assert created and made.pk != a.pk
    assert Member.objects.on_shard(shard_for(Member, made.pk).name).filter(pk=made.pk).exists()
    assert Member.objects.strong().get(email=a.email) == made


def test_migrate_creates_the_index_on_lookup_alias_only(settings):
    from django_shards.router import ShardRouter

    router = ShardRouter()
    assert router.allow_migrate("default", "django_shards", "lookupentry") is True
    assert router.allow_migrate("s5", "django_shards", "lookupentry") is False
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "LOOKUP_ALIAS": "s5"}
    assert router.allow_migrate("s5", "django_shards", "lookupentry") is True
    assert router.allow_migrate("default", "django_shards", "lookupentry") is False
    assert router.allow_migrate("default", "django_shards", "shardmapversion") is True
    assert router.allow_migrate("s5", "django_shards", "shardmapversion") is False
    assert lookup_index.alias() == "s5"
