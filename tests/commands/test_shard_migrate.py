"""``manage.py shard_migrate``: ``migrate`` on every shard primary in parallel, one line per
primary as it finishes, idempotent, a failing primary named while the others go on.

Transactional: the migrations run on worker threads with connections of their own.
"""

import contextlib
import io
import re
import uuid

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.db.migrations.loader import MigrationLoader

from tests.support.backend import MARIADB, settings_changed

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

LINE = re.compile(r"^\[(\d+)/(\d+)\] (\w+): (.*)$", re.M)
SHARD_PRIMARIES = {"s0", "s1", "s2", "s3", "h0"}  # the primaries of every group's map


def shard_migrate(*argv: str) -> str:
    out = io.StringIO()
    call_command("shard_migrate", *argv, stdout=out)
    return out.getvalue()


def failed_migrate(*argv: str) -> tuple[CommandError, str]:
    out = io.StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("shard_migrate", *argv, stdout=out)
    return excinfo.value, out.getvalue()


def reports(output: str) -> dict[str, str]:
    """alias -> what its ``[i/n] alias: ...`` line says; checks the counter runs 1..n."""
    lines = LINE.findall(output)
    assert [int(i) for i, _n, _alias, _text in lines] == list(range(1, len(lines) + 1))
    assert {int(n) for _i, n, _alias, _text in lines} == {len(lines)}
    return {alias: text for _i, _n, alias, text in lines}


def applied(text: str) -> int:
    match = re.fullmatch(r"ok \((\d+) migrations? applied\)", text)
    assert match, text
    return int(match.group(1))


@contextlib.contextmanager
def fresh_databases(aliases, tmp_path):
    """Point each alias at a new, empty database: a new SQLite file, or a new database on
    the alias's MariaDB server (dropped on exit)."""
    with contextlib.ExitStack() as stack:
        for alias in aliases:
            if MARIADB:
                name = f"test_fresh_{alias}_{uuid.uuid4().hex[:8]}"
                with connections[alias].cursor() as cursor:
                    cursor.execute(f"CREATE DATABASE `{name}`")
                stack.callback(_drop_database, alias, name)
                stack.enter_context(settings_changed(alias, NAME=name))
            else:
                path = tmp_path / f"fresh_{alias}.sqlite3"
                stack.enter_context(settings_changed(alias, NAME=str(path)))
        yield


def _drop_database(alias: str, name: str) -> None:
    with connections[alias].cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


def unreachable(alias: str):
    if MARIADB:
        return settings_changed(alias, PORT=1)  # nothing listens there
    return settings_changed(alias, NAME="/nonexistent-dir/primary.sqlite3")


def tables(alias: str) -> set[str]:
    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.table_names(cursor))


def test_migrates_every_shard_primary_and_reports_each_and_running_again_changes_nothing():
    output = shard_migrate()
    assert output.splitlines()[0] == (
        "Migrating 5 shard primaries (s0, s1, s2, s3, h0); not the catalog (default)."
    )
    done = reports(output)
    assert set(done) == SHARD_PRIMARIES  # no catalog, no replica, no spare alias
    assert all(applied(text) == 0 for text in done.values())  # the test databases are current
    assert output.rstrip().endswith("All 5 shard primaries migrated (0 migrations applied in all).")


def test_fresh_primaries_get_every_migration_in_parallel_and_only_their_groups_tables(tmp_path):
    every_migration = len(MigrationLoader(None, ignore_no_migrations=True).graph.nodes)
    with fresh_databases(sorted(SHARD_PRIMARIES), tmp_path):
        done = reports(shard_migrate())
        assert set(done) == SHARD_PRIMARIES
        assert {alias: applied(text) for alias, text in done.items()} == dict.fromkeys(
            SHARD_PRIMARIES, every_migration
        )
        # s0 serves every group but ha; s3 serves users and metrics, not events or legacy; h0
        # serves ha alone
        s0, s3, h0 = tables("s0"), tables("s3"), tables("h0")
        assert {"testapp_author", "testapp_post", "testapp_event", "testapp_reading"} <= s0
        assert {"testapp_legacycode", "django_migrations"} <= s0
        assert {"testapp_author", "testapp_reading"} <= s3
        assert not {"testapp_event", "testapp_legacycode"} & s3
        assert not {"auth_user", "django_shards_shardmapversion", "testapp_tag"} & (s0 | s3 | h0)
        assert {"testapp_deposit", "django_migrations"} <= h0
        assert "testapp_deposit" not in s0 | s3 and not {"testapp_author", "testapp_event"} & h0

        again = reports(shard_migrate())
        assert all(applied(text) == 0 for text in again.values())


def test_group_argument_migrates_only_that_groups_primaries():
    assert set(reports(shard_migrate("legacy"))) == {"s0", "s1"}
    assert set(reports(shard_migrate("events"))) == {"s0", "s1", "s2"}


def test_a_failing_primary_is_named_and_the_others_still_migrate(tmp_path):
    with fresh_databases(["s0", "s2", "s3"], tmp_path), unreachable("s1"):
        error, output = failed_migrate()
    assert error.returncode == 1
    assert "migrate failed on 1 of 5 shard primaries: s1; the others are migrated." in str(error)
    done = reports(output)
    assert set(done) == SHARD_PRIMARIES
    assert done["s1"].startswith("FAILED: OperationalError: ")
    assert all(applied(done[alias]) > 0 for alias in ("s0", "s2", "s3"))
    assert "All 5" not in output


def test_unknown_group_is_a_usage_error_and_migrates_nothing():
    out = io.StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("shard_migrate", "nope", stdout=out)
    assert excinfo.value.returncode == 2
    groups = "users, events, metrics, members, legacy, ha"
    assert str(excinfo.value) == f"Shard group 'nope' does not exist (groups: {groups})."
    assert out.getvalue() == ""


def test_no_password_in_a_failure_report():
    if MARIADB:
        changed = settings_changed("s2", PASSWORD="pl4nted-Secret-9f2c")  # login refused
    else:
        changed = unreachable("s2")
    with changed:
        error, output = failed_migrate("events")
    assert "FAILED" in reports(output)["s2"]
    passwords = {"pl4nted-Secret-9f2c"} | {
        db["PASSWORD"] for db in settings.DATABASES.values() if db.get("PASSWORD")
    }
    for password in passwords:
        assert password not in output and password not in str(error)
