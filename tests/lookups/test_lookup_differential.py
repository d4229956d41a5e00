"""Differential tests of lookup-index reads: every query shape that reads the index answers
exactly as the same query on one database (``MemberTwin``/``NoteTwin`` on ``default``),
before and after writes that move values around (save, update, bulk_update, delete,
cascades).

The data has values shared across shards, values of one key shared by several rows
(``Note.title``), and values differing only in case: MariaDB's ``utf8mb4_general_ci``
matches those, SQLite does not, and the index must follow its database either way.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from django.db.models import Q

from django_shards import shard_for
from tests.testapp.models import Member, MemberTwin, Note, NoteTwin

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

HANDLES = ["ann", "Ann", "bob", "cy", "dee"]
CITIES = ["Lyon", "Oslo", ""]


def seed(rng: random.Random, n: int = 24) -> list[Member]:
    members = []
    for i in range(n):
        email = f"user{i}@x.org" if i % 5 else f"User{i}@X.org"
        m = Member(email=email, handle=rng.choice(HANDLES), city=rng.choice(CITIES))
        members.append(m)
    Member.objects.bulk_create(members)
    MemberTwin.objects.bulk_create(
        MemberTwin(id=m.pk, email=m.email, handle=m.handle, city=m.city) for m in members
    )
    notes = []
    for m in members:
        for _ in range(rng.randrange(3)):
            notes.append(Note(member=m, title=rng.choice(["hi", "Hi", "news", "x"])))
    Note.objects.bulk_create(notes)
    NoteTwin.objects.bulk_create(
        NoteTwin(id=n.pk, member_id=n.member_id, title=n.title) for n in notes
    )
    assert len({shard_for(Member, m.pk).name for m in members}) > 1
    return members


def member_rows(qs: Any) -> list[tuple]:
    return sorted(qs.values_list("id", "email", "handle", "city"))


def shapes(emails: list[str]) -> list[tuple[str, Q | dict]]:
    """(description, filter kwargs) of every shape a lookup serves."""
    missing = "nobody@x.org"
    return [
        *[(f"email={e}", {"email": e}) for e in emails],
        ("email upper", {"email": emails[1].upper()}),
        ("email missing", {"email": missing}),
        ("email__in", {"email__in": [*emails[:4], missing]}),
        ("email__in empty", {"email__in": []}),
        *[(f"handle={h}", {"handle": h}) for h in HANDLES],
        ("handle__in", {"handle__in": ["ann", "cy"]}),
        ("handle+city", {"handle": "bob", "city": "Lyon"}),
        ("email+handle", {"email": emails[2], "handle": "nope"}),
        ("handle Q and", Q(handle="dee") & Q(city="Oslo")),
    ]


def compare_reads() -> None:
    emails = list(MemberTwin.objects.order_by("id").values_list("email", flat=True))
    for label, spec in shapes(emails):
        if isinstance(spec, Q):
            sharded, twin = Member.objects.strong().filter(spec), MemberTwin.objects.filter(spec)
        else:
            sharded = Member.objects.strong().filter(**spec)
            twin = MemberTwin.objects.filter(**spec)
        assert member_rows(sharded) == member_rows(twin), label
        assert sharded.count() == twin.count(), label
        assert sharded.exists() == twin.exists(), label
        assert list(sharded.order_by("-id").values_list("id", flat=True)[:2]) == list(
            twin.order_by("-id").values_list("id", flat=True)[:2]
        ), label
        if isinstance(spec, dict) and "email" in spec:
            got = _get(Member.objects.strong(), spec)
            want = _get(MemberTwin.objects, spec)
            assert got == want, label
    for title in ["hi", "Hi", "news", "x", "none"]:
        sharded = sorted(Note.objects.strong().filter(title=title).values_list("id", "title"))
        twin = sorted(NoteTwin.objects.filter(title=title).values_list("id", "title"))
        assert sharded == twin, title
        both = sorted(
            Note.objects.strong().filter(title__in=[title, "x"]).values_list("id", flat=True)
        )
        assert both == sorted(
            NoteTwin.objects.filter(title__in=[title, "x"]).values_list("id", flat=True)
        )


def _get(manager: Any, spec: dict) -> Any:
    try:
        found = manager.get(**spec)
    except manager.model.DoesNotExist:
        return "DoesNotExist"
    except manager.model.MultipleObjectsReturned:
        return "MultipleObjectsReturned"
    return (found.pk, found.email)


def test_reads_answer_like_one_database():
    seed(random.Random(14))
    compare_reads()


def test_reads_answer_like_one_database_after_writes():
    rng = random.Random(41)
    members = seed(rng)
    # save a changed e-mail and handle
    for m in rng.sample(members, 5):
        m.email = f"new-{m.pk}@x.org"
        m.handle = rng.choice(HANDLES)
        m.save()
        MemberTwin.objects.filter(pk=m.pk).update(email=m.email, handle=m.handle)
    # update() of a looked-up field over several shards
    Member.objects.filter(handle="cy").update(handle="dee")
    MemberTwin.objects.filter(handle="cy").update(handle="dee")
    # bulk_update
    chosen = rng.sample(members, 6)
    for m in chosen:
        m.refresh_from_db()
        m.handle = "bob"
    Member.objects.bulk_update(chosen, ["handle"])
    MemberTwin.objects.filter(pk__in=[m.pk for m in chosen]).update(handle="bob")
    # delete, with cascades to notes
    for m in rng.sample(members, 4):
        pk = m.pk
        Member.objects.filter(pk=pk).delete()
        MemberTwin.objects.filter(pk=pk).delete()
    # notes: retitle some, delete some
    for n in list(Note.objects.all())[::3]:
        n.title = "moved"
        n.save()
        NoteTwin.objects.filter(pk=n.pk).update(title="moved")
    Note.objects.filter(title="x").delete()
    NoteTwin.objects.filter(title="x").delete()
    compare_reads()
