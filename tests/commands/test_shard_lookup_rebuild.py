"""``manage.py shard_lookup_rebuild [MODEL [FIELD]] [--check]``: orphan and missing lookup
entries reported, repaired (a backfill included), conflicts reported, bad input refused.

``Member`` (key id) has lookups on ``email`` (unique across the cluster) and ``handle``;
``Note`` (key member) on ``title``, one entry per (title, key). Rows are changed behind the
ORM with raw SQL on the shard primaries, as a crash or a script would leave them.
Transactional tests: the index drops values on commit.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.utils import timezone

from django_shards import lookup_index, lookup_rebuild, shard_for
from django_shards.models import LookupEntry
from tests.support.backend import MARIADB, unreachable
from tests.support.members import members_on_distinct_shards
from tests.testapp.models import Member, Note

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

MEMBERS = Member._meta.db_table
NOTES = Note._meta.db_table


def run(*argv: str) -> tuple[int, str, str]:
    """The exit code of ``shard_lookup_rebuild argv``, its output and its message (or
    stderr)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("shard_lookup_rebuild", *argv, stdout=out, stderr=err)
    except CommandError as exc:
        assert "\n" not in str(exc)
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


def index() -> object:
    return LookupEntry.objects.using(lookup_index.alias())


def entries(model: str = "testapp.member", field: str = "email") -> set[tuple[str, str]]:
    return set(index().filter(model=model, field=field).values_list("value", "key"))


def age_entries() -> None:
    """Make every entry an hour old (a crash a while ago)."""
    index().update(created=timezone.now() - timedelta(hours=1))


def young_entries() -> None:
    """Make every entry young however slow the machine: written a minute from now (the
    command's wait is a patched no-op in the tests that use this)."""
    index().update(created=timezone.now() + timedelta(minutes=1))


def raw(model_key: object, sql: str, params: list) -> None:
    """Run ``sql`` on the primary of the shard owning ``model_key``, behind the ORM."""
    with connections[shard_for(Member, model_key).primary].cursor() as cursor:
        cursor.execute(sql, params)


def insert_raw(email: str, handle: str) -> Member:
    """A member written by raw SQL on its shard: no index entry."""
    m = Member(email=email, handle=handle)
    raw(
        m.pk,
        f"INSERT INTO {MEMBERS} (id, email, handle, city) VALUES (%s, %s, %s, %s)",
        [m.pk, email, handle, ""],
    )
    return m


# -- clean, backfill ----------------------------------------------------------------------


def test_check_on_a_clean_index_exits_0_and_writes_nothing():
    members = members_on_distinct_shards(4)
    Note.objects.create(member=members[0], title="hello")
    before = set(index().values_list("pk", "value", "key"))
    code, out, _ = run("--check")
    assert code == 0, out
    assert "The lookup index is clean." in out
    for name in ("testapp.Member.email", "testapp.Member.handle", "testapp.Note.title"):
        assert name in out
    assert set(index().values_list("pk", "value", "key")) == before


def test_backfill_writes_every_missing_entry_in_batches():
    members = [Member(email=f"b{i}@x.org", handle=f"h{i % 3}") for i in range(23)]
    Member.objects.bulk_create(members)
    members.append(insert_raw("raw@x.org", "raw"))
    index().all().delete()  # as for a lookup added to a model with rows

    code, out, message = run("--check", "--batch-size", "5")
    assert code == 1
    assert message.startswith("The lookup index is not clean: 0 orphan entries, 48 missing")
    assert "testapp.Member.email: missing entries (value -> key) (first 10 of 24):" in out
    assert not index().exists()  # --check writes nothing

    code, out, message = run("testapp.member", "--batch-size", "5")
    assert code == 0, message
    assert "48 entries added, 0 removed, 0 conflicts." in out
    assert entries() == {(m.email, str(m.pk)) for m in members}
    assert entries(field="handle") == {(m.handle, str(m.pk)) for m in members}
    assert Member.objects.get(email="raw@x.org").pk == members[-1].pk
    assert run("--check", "--batch-size", "5")[0] == 0


def test_rebuilding_twice_changes_nothing_the_second_time():
    members_on_distinct_shards(3)
    index().filter(field="handle").delete()
    assert run("testapp.Member", "handle")[0] == 0
    before = set(index().values_list("pk", "value", "key"))
    code, out, _ = run()
    assert code == 0
    assert "0 entries added, 0 removed, 0 conflicts." in out
    assert set(index().values_list("pk", "value", "key")) == before


# -- a row changed behind the ORM -----------------------------------------------------------


def test_a_raw_update_is_one_orphan_and_one_missing_entry_and_is_repaired():
    a, b = members_on_distinct_shards(2)
    raw(a.pk, f"UPDATE {MEMBERS} SET email = %s WHERE id = %s", ["new@x.org", a.pk])
    age_entries()

    code, out, message = run("--check", "testapp.Member", "email")
    assert code == 1
    assert message.startswith("The lookup index is not clean: 1 orphan entry, 1 missing entry")
    assert f"  {a.email!r} -> {a.pk}" in out  # the orphan
    assert f"  'new@x.org' -> {a.pk}" in out  # the missing one
    assert "testapp.Member.handle" not in out

    code, out, message = run("testapp.Member", "email")
    assert code == 0, message
    assert "1 entry added, 1 removed, 0 conflicts." in out
    assert entries() == {("new@x.org", str(a.pk)), (b.email, str(b.pk))}
    assert run("--check")[0] == 0
    assert Member.objects.get(email="new@x.org").pk == a.pk


def test_a_young_orphan_is_looked_at_again_then_reported_and_repaired(monkeypatch):
    (a,) = members_on_distinct_shards(1)
    raw(a.pk, f"UPDATE {MEMBERS} SET email = %s WHERE id = %s", ["new@x.org", a.pk])
    young_entries()
    waits: list[float] = []
    monkeypatch.setattr(lookup_rebuild, "time", SimpleNamespace(sleep=waits.append))
    code, _out, message = run("--check", "testapp.Member", "email")
    assert code == 1
    assert message.startswith("The lookup index is not clean: 1 orphan entry, 1 missing entry")
    assert len(waits) == 1 and waits[0] > 0
    assert run("testapp.Member", "email")[0] == 0
    assert entries() == {("new@x.org", str(a.pk))}
    assert run("--check")[0] == 0


def test_a_write_in_flight_is_waited_for_and_left_alone(monkeypatch):
    (email,) = lookup_index.lookups_of(Member)[:1]
    m = Member(email="flight@x.org", handle="f")
    lookup_index.claim([(email, str(m.pk), "flight@x.org")], fresh=True)  # its first step
    young_entries()

    def the_row_lands(seconds: float) -> None:  # while the command waits
        m.save()

    monkeypatch.setattr(lookup_rebuild, "time", SimpleNamespace(sleep=the_row_lands))
    code, out, message = run("testapp.Member", "email")
    assert code == 0, message
    assert "0 removed" in out
    assert entries() == {("flight@x.org", str(m.pk))}
    assert Member.objects.get(email="flight@x.org") == m


def test_a_value_in_another_case_is_covered_under_a_case_insensitive_collation():
    (a,) = members_on_distinct_shards(1)
    raw(a.pk, f"UPDATE {MEMBERS} SET email = %s WHERE id = %s", [a.email.upper(), a.pk])
    age_entries()
    code, out, message = run("--check", "testapp.Member", "email")
    if MARIADB:  # utf8mb4 *_ci: the entry 'm0@x.org' covers the row 'M0@X.ORG'
        assert code == 0, out
    else:  # SQLite compares bytes: another value
        assert code == 1
        assert "1 orphan entry, 1 missing entry" in message
        assert run("testapp.Member", "email")[0] == 0
        assert entries() == {(a.email.upper(), str(a.pk))}
    assert Member.objects.get(email=a.email.upper()).pk == a.pk


# -- conflicts ------------------------------------------------------------------------------


def test_a_cluster_unique_value_on_two_shards_is_reported_as_a_conflict():
    first = insert_raw("dup@x.org", "one")
    second = Member(email="dup@x.org", handle="two")
    while shard_for(Member, second.pk) == shard_for(Member, first.pk):
        second = Member(email="dup@x.org", handle="two")
    raw(
        second.pk,
        f"INSERT INTO {MEMBERS} (id, email, handle, city) VALUES (%s, %s, %s, %s)",
        [second.pk, "dup@x.org", "two", ""],
    )
    code, out, message = run()
    assert code == 1
    assert message.startswith("1 row could not be indexed")
    assert "CONFLICT 'dup@x.org' of key" in out
    assert "a human must change one of them" in out
    assert "3 entries added, 0 removed, 1 conflict." in out  # the rest is repaired
    (held,) = entries()
    assert held[0] == "dup@x.org" and held[1] in {str(first.pk), str(second.pk)}
    assert entries(field="handle") == {("one", str(first.pk)), ("two", str(second.pk))}
    code, _, message = run("--check")
    assert code == 1 and "1 missing entry" in message


# -- non-unique: one entry per (value, key) -------------------------------------------------


def test_a_title_shared_by_notes_of_one_key_is_one_entry_per_key():
    a, b = members_on_distinct_shards(2)
    notes = [
        Note.objects.create(member=a, title="shared"),
        Note.objects.create(member=a, title="shared"),
        Note.objects.create(member=b, title="shared"),
        Note.objects.create(member=a, title="alone"),
    ]
    index().filter(model="testapp.note").delete()
    code, out, message = run("testapp.note", "title", "--batch-size", "1")
    assert code == 0, message
    assert "3 entries added" in out
    expected = {("shared", str(a.pk)), ("shared", str(b.pk)), ("alone", str(a.pk))}
    assert entries("testapp.note", "title") == expected

    # one of a's two "shared" notes changes behind the ORM: the other still needs the entry
    raw(a.pk, f"UPDATE {NOTES} SET title = %s WHERE id = %s", ["other", notes[0].pk])
    # a's only "alone" note changes: its entry is an orphan
    raw(a.pk, f"UPDATE {NOTES} SET title = %s WHERE id = %s", ["other", notes[3].pk])
    age_entries()
    code, out, message = run("--check", "testapp.Note")
    assert code == 1
    assert "1 orphan entry, 1 missing entry" in message
    assert f"  'alone' -> {a.pk}" in out
    assert run("testapp.Note")[0] == 0
    assert entries("testapp.note", "title") == {
        ("shared", str(a.pk)),
        ("shared", str(b.pk)),
        ("other", str(a.pk)),
    }
    assert set(Note.objects.filter(title="other", member=a)) == {notes[0], notes[3]}


# -- output, bad input, failures ------------------------------------------------------------


def test_json_report():
    (a,) = members_on_distinct_shards(1)
    index().filter(field="handle").delete()
    code, out, _ = run("--check", "--json", "testapp.Member")
    assert code == 1
    data = json.loads(out)
    assert data["check"] is True and data["clean"] is False
    by_name = {d["lookup"]: d for d in data["lookups"]}
    assert by_name["testapp.Member.email"]["missing"] == 0
    assert by_name["testapp.Member.handle"]["missing"] == 1
    assert by_name["testapp.Member.handle"]["missing_examples"] == [
        {"value": a.handle, "key": str(a.pk)}
    ]
    data = json.loads(run("--json", "testapp.Member")[1])
    assert data["clean"] is True
    assert {d["lookup"]: d["added"] for d in data["lookups"]} == {
        "testapp.Member.email": 0,
        "testapp.Member.handle": 1,
    }


def test_progress_goes_to_stderr_with_verbosity_2():
    members_on_distinct_shards(2)
    code, out, err = run("--check", "--verbosity", "2", "testapp.Member", "email")
    assert code == 0
    assert "testapp.Member.email: 2 index entries read" in err
    assert "rows read" in err
    assert "rows read" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope.Member"], "Unknown model 'nope.Member': there is no installed app 'nope'."),
        (["testapp.Author"], "testapp.Author has no lookups (models with lookups: "),
        (["testapp.Member", "city"], "testapp.Member has no lookup 'city' (its lookups: email,"),
        (["--check", "testapp.Note", "nope"], "testapp.Note has no lookup 'nope' (its lookups"),
        (["--batch-size", "0"], "--batch-size must be 1 or more, not 0."),
    ],
)
def test_bad_arguments_exit_2_and_change_nothing(argv, message):
    members_on_distinct_shards(1)
    index().filter(field="handle").delete()
    code, _, text = run(*argv)
    assert code == 2
    assert text.startswith(message), text
    if "lookups: " in message and "Author" in message:
        assert "testapp.Member, testapp.Note" in text
    assert entries(field="handle") == set()


def test_a_dead_shard_is_one_sentence_and_exit_1():
    (a,) = members_on_distinct_shards(1)
    primary = shard_for(Member, a.pk).primary
    with unreachable(primary):
        code, _, message = run("--check", "testapp.Member", "email")
    assert code == 1
    assert f"'{primary}'" in message or f"({primary})" in message, message
    assert "Traceback" not in message
