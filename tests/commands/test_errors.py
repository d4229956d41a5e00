"""Every command answers bad input and dead databases with one ``CommandError`` sentence
that names the culprit, a non-zero exit, nothing changed, and never a traceback or a
password. ``shard_status`` is the exception: a dead database, or an alias that the shard map
names but ``DATABASES`` lacks, is something it reports (``--check`` exits 1).

The failures are real. On SQLite an alias is pointed at a file in a directory that does
not exist. On MariaDB a server is killed with ``scripts/mariadb-topology kill`` and started
again afterwards (p0 holds the catalog, s0 and s3; p1 holds s1 and s4; r<i> replicates
p<i>). The command-line tests run ``python -m django ...`` in a subprocess on this run's
test databases, with the settings changed there only (an alias dead or missing).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import RequestFactory

from django_shards import shard_for
from django_shards.conf import Shard, get_config
from django_shards.health import monitor
from django_shards.models import ShardMapVersion, SplitJob
from django_shards.replicas import pool
from django_shards.resharding import create_job, plan_split
from django_shards.shardmap import get_map, registry, write_version
from django_shards.views import status as status_view
from tests.support import backend
from tests.support.backend import MARIADB, settings_changed, wait_for_replicas
from tests.testapp.models import Author, Event, Post

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "scripts" / "mariadb-topology"
#: the MariaDB server each alias lives on (scripts/mariadb-topology: s<i> -> p<i % 3>)
SERVER = {"default": "p0", **{f"s{i}": f"p{i % 3}" for i in range(6)}}
SERVER |= {f"s{i}_r1": f"r{i % 3}" for i in range(6)}
PLANTED_PASSWORD = "pl4nted-Secret-7c1e"


# -- running a command ---------------------------------------------------------------------


@dataclass
class Outcome:
    code: int
    out: str
    message: str  # the CommandError's sentence, or what went to stderr


def run(*argv: str) -> Outcome:
    """``call_command(*argv)``: its exit code, output and error sentence. Anything but a
    ``CommandError`` or an exit propagates, so a traceback fails the test."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*argv, stdout=out, stderr=err)
    except CommandError as exc:
        return Outcome(exc.returncode, out.getvalue(), str(exc))
    except SystemExit as exc:
        return Outcome(int(exc.code or 0), out.getvalue(), err.getvalue())
    return Outcome(0, out.getvalue(), err.getvalue())


def passwords() -> set[str]:
    return {PLANTED_PASSWORD} | {
        str(db["PASSWORD"]) for db in settings.DATABASES.values() if db.get("PASSWORD")
    }


def assert_clean(text: str) -> None:
    """No traceback and no password in what a command printed."""
    assert "Traceback" not in text, text
    for password in passwords():
        assert password not in text


def refused(*argv: str, code: int = 1) -> str:
    """The one sentence ``argv`` stops with (exit ``code``)."""
    outcome = run(*argv)
    assert outcome.code == code, outcome
    assert outcome.message and "\n" not in outcome.message.strip(), outcome
    assert_clean(outcome.message + outcome.out)
    return outcome.message


def catalog_state() -> tuple[list, list]:
    """What a command must not change when it refuses: split jobs and map versions."""
    catalog = get_config().catalog
    return (
        list(SplitJob.objects.using(catalog).values_list("id", "phase", "frozen")),
        list(ShardMapVersion.objects.using(catalog).values_list("group", "version")),
    )


def tables(alias: str) -> set[str]:
    with connections[alias].cursor() as cursor:
        return set(connections[alias].introspection.table_names(cursor))


# -- dead databases, for real ----------------------------------------------------------------


def forget_health() -> None:
    for conn in connections.all(initialized_only=True):
        conn.close()
    pool.reset()
    monitor.forget()
    registry.reset()


@contextlib.contextmanager
def unreachable(*aliases: str) -> Iterator[None]:
    """``aliases`` cannot be opened while inside; what probes learnt is forgotten after."""
    try:
        with backend.unreachable(*aliases):
            yield
    finally:
        forget_health()


def topology(*args: str) -> None:
    subprocess.run([str(TOPOLOGY), *args], check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def killed(*servers: str) -> Iterator[None]:
    """Kill MariaDB ``servers`` (SIGKILL) for the block, then start them again."""
    forget_health()
    try:
        for server in servers:
            topology("kill", server)
        yield
    finally:
        for server in servers:
            topology("start", server)
        forget_health()
        wait_for_replicas()


def dead(*aliases: str) -> contextlib.AbstractContextManager[None]:
    """The aliases' databases down: their MariaDB servers killed, or their SQLite files
    unreachable."""
    if MARIADB:
        return killed(*sorted({SERVER[a] for a in aliases}))
    return unreachable(*aliases)


# -- the command line --------------------------------------------------------------------------

# ``python -m django ARGV`` on this run's test databases, with DATABASES changed first as
# CMDERR_DATABASES says: {"dead": [aliases], "missing": [aliases]}. The replicas keep their
# TEST["MIRROR"] (tests/settings.py clears it under SHARDS_USE_TEST_DATABASES; E007 wants it).
BOOTSTRAP = """
import json, os, sys
from tests import settings
change = json.loads(os.environ["CMDERR_DATABASES"])
for alias, cfg in settings.DATABASES.items():
    if alias.endswith("_r1"):
        cfg["TEST"] = {**cfg.get("TEST", {}), "MIRROR": alias[: -len("_r1")]}
for alias in change.get("dead", []):
    cfg = settings.DATABASES[alias]
    if cfg["ENGINE"].endswith("sqlite3"):
        cfg["NAME"] = f"/nonexistent-django-shards-dir/{alias}.sqlite3"
    else:
        cfg.update(HOST="127.0.0.1", PORT=1)
for alias in change.get("missing", []):
    del settings.DATABASES[alias]
from django.core.management import execute_from_command_line
execute_from_command_line(["django", *sys.argv[1:]])
"""


def cli(*argv: str, dead: tuple[str, ...] = (), missing: tuple[str, ...] = ()) -> Outcome:
    """``manage.py argv`` in a subprocess: exit code, stdout and stderr."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "SHARDS_USE_TEST_DATABASES": "1",
        "CMDERR_DATABASES": json.dumps({"dead": list(dead), "missing": list(missing)}),
    }
    if not MARIADB:
        env["SHARDS_SQLITE_DIR"] = os.path.dirname(settings.DATABASES["default"]["NAME"])
    connections.close_all()  # no connection of ours holds a lock
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            [sys.executable, "-c", BOOTSTRAP, *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            timeout=120,
        )
        out.seek(0)
        err.seek(0)
        return Outcome(proc.returncode, out.read(), err.read())


def assert_unhealthy_sentence(stderr: str) -> None:
    """``shard_status --check`` on the command line: the report went to stdout, and stderr
    ends with one sentence (after the system checks' warnings about the test settings)."""
    assert_clean(stderr)
    lines = stderr.splitlines()
    errors = [line for line in lines if "Error" in line]
    assert (
        errors
        == lines[-1:]
        == ["CommandError: Something is unhealthy: the report lists the problems."]
    ), stderr


def cli_refused(*argv: str, dead: tuple[str, ...] = ()) -> str:
    """The one ``CommandError:`` line ``manage.py argv`` ends with on stderr, exit 1 (after
    the system checks' warnings about the test settings, if any)."""
    outcome = cli(*argv, dead=dead)
    assert outcome.code == 1, outcome
    assert_clean(outcome.message + outcome.out)
    lines = outcome.message.splitlines()
    errors = [line for line in lines if line.startswith("CommandError: ")]
    assert errors == lines[-1:], outcome
    return errors[0].removeprefix("CommandError: ")


# -- data -----------------------------------------------------------------------------------


def authors_on(*shards: str) -> list[Author]:
    """One author with a post on each named shard, committed (and replicated)."""
    made = []
    for name in shards:
        while True:
            author = Author(email=f"{name}@example.org")
            if shard_for(Author, author.pk).name == name:
                author.save()
                Post.objects.create(author=author, title=f"on {name}")
                made.append(author)
                break
    Event.objects.bulk_create([Event(account=a, kind="open") for a in (5, 1200, 1500, 2500)])
    wait_for_replicas()
    return made


SPLIT = ("shard_split", "users", "s1", "--to", "s9", "--primary", "s5", "--replica", "s5_r1")


# -- item 4: shard_split with a dead source ----------------------------------------------------


def test_split_dry_run_with_the_source_primary_down_is_one_sentence_on_the_command_line():
    """The issue's report: a traceback from plan.count_moving_rows."""
    authors_on("s0", "s1")
    before = catalog_state()
    if MARIADB:
        with killed("p1"):
            message = cli_refused(*SPLIT, "--dry-run")
    else:
        message = cli_refused(*SPLIT, "--dry-run", dead=("s1",))
    assert message.startswith(
        "Cannot count the rows that move: shard 's1' of group 'users' (primary s1) failed: "
    ), message
    assert message.endswith("Nothing was changed.")
    assert catalog_state() == before


def test_a_dead_source_stops_every_way_of_planning_a_split_naming_it_and_changes_nothing():
    authors_on("s0", "s1")
    before = catalog_state()
    target_tables = tables("s5")
    with dead("s1"):
        for argv in (
            [*SPLIT, "--dry-run"],
            [*SPLIT, "--no-input"],  # the real split stops at the plan too
        ):
            message = refused(*argv)
            assert "count the rows that move: shard 's1' of group 'users' (primary s1)" in message
        events = ("shard_split", "events", "s1", "--to", "s9", "--primary", "s5", "--dry-run")
        message = refused(*events)  # no --at: the median key is read from the source
        assert "find the median key to split at: shard 's1' of group 'events' (primary s1)" in (
            message
        )
        message = refused(*events, "--at", "1500")
        assert "count the rows that move: shard 's1' of group 'events' (primary s1)" in message
    assert catalog_state() == before
    assert tables("s5") == target_tables


def test_resuming_a_split_whose_source_is_down_stops_naming_the_source_and_how_to_go_on():
    authors_on("s0", "s1")
    plan = plan_split("users", "s1", "s9", "s5", ["s5_r1"])
    job = create_job(plan)
    with dead("s1"):
        outcome = run("shard_split", "users", "s1", "--resume", "--no-input")
    assert outcome.code == 1, outcome
    assert_clean(outcome.message + outcome.out)
    message = outcome.message
    assert message.startswith("The split s1 -> s9 of group 'users' stopped at phase "), message
    assert "source primary s1 not answering" in message
    assert "target primary" not in message and "catalog" not in message
    assert "`shard_split users s1 --resume`" in message
    assert SplitJob.objects.get(pk=job.pk).phase != SplitJob.Phase.DONE
    # once the source is back, the split finishes
    assert run("shard_split", "users", "s1", "--resume", "--no-input").code == 0


def test_a_dead_target_is_named_and_nothing_is_planned():
    authors_on("s0", "s1")
    before = catalog_state()
    with dead("s5"):
        # (with --replica s5_r1, MariaDB's replica stops replicating and is named first)
        message = refused(*SPLIT[:7], "--dry-run")
    assert message.startswith("Cannot reach the new primary 's5': "), message
    with dead("s5_r1"):
        message = refused(*SPLIT, "--dry-run")
    assert message.startswith("Replica 's5_r1' of the new shard is not usable: unreachable"), (
        message
    )
    assert catalog_state() == before


# -- item 4: a dead catalog ----------------------------------------------------------------


def test_a_dead_catalog_stops_every_command_naming_it_and_shard_status_reports_it():
    authors_on("s0", "s1")
    plan = plan_split("events", "s1", "s9", "s5", ["s5_r1"], at=1500)
    create_job(plan)  # a split in progress, to resume or abort
    before = catalog_state()
    catalog = get_config().catalog
    with dead(catalog):
        for argv in (
            [*SPLIT, "--dry-run"],
            ["shard_split", "events", "s1", "--resume", "--no-input"],
            ["shard_split", "events", "s1", "--abort"],
            ["shard_query", "testapp.Author"],
            ["shard_query", "testapp.Author", "--count", "--shard", "s0"],
            ["shard_query", "testapp.Author", "--sql", "SELECT id FROM testapp_author"],
            ["shard_migrate"],
        ):
            registry.reset()  # as in a new process: no map held (a held map serves reads)
            message = refused(*argv)
            assert "catalog" in message and repr(catalog) in message.replace(
                f"({catalog})", repr(catalog)
            ), (argv, message)
        message = refused("shard_query", "testapp.Tag")  # unsharded, on the same database
        assert message.startswith(f"The testapp.Tag query failed on database {catalog!r}: ")
        status = run("shard_status", "--check")
        assert status.code == 1
        assert f"catalog {catalog!r} unreadable" in status.out
        assert_clean(status.out + status.message)
    assert catalog_state() == before


def test_the_status_page_shows_a_dead_catalog_instead_of_failing():
    """The page reads the map it reports once: a second read would fail. (Signed in
    without a database, as a staff member's session would be when the catalog is not the
    database of sessions.)"""
    request = RequestFactory().get("/shards/", {"format": "json"})
    request.user = User(username="staff", is_staff=True, is_active=True)
    html_request = RequestFactory().get("/shards/")
    html_request.user = request.user
    with dead(get_config().catalog):
        registry.reset()  # this process holds no map: nothing to route by
        response = status_view(request)
        html = status_view(html_request)
    assert response.status_code == 200
    data = json.loads(response.content)
    assert data["healthy"] is False and data["catalog_error"]
    assert [g["name"] for g in data["groups"]] == list(get_config().groups)
    assert html.status_code == 200
    assert "unreadable" in html.content.decode()


# -- item 4: shard_query, shard_migrate and shard_status with a dead shard -------------------


def test_a_dead_shard_fails_shard_query_naming_it_and_saying_what_a_shell_user_can_do():
    """(shard_migrate names it too and migrates the others; shard_status reports it.)"""
    authors_on("s0", "s1")
    with dead("s1", "s1_r1"):
        migrate = run("shard_migrate", "users")
        assert migrate.code == 1
        assert migrate.message == (
            "migrate failed on 1 of 4 shard primaries: s1; the others are migrated."
        )
        status = run("shard_status", "users", "--check")
        assert status.code == 1
        assert "users/s1: s1 unreachable" in status.out
        assert "users/s0" not in status.out  # the others are fine
        assert_clean(migrate.out + status.out)
        for argv in (
            ["shard_query", "testapp.Post"],
            ["shard_query", "testapp.Post", "--count"],
            ["shard_query", "testapp.Post", "--sql", "SELECT id FROM testapp_post"],
        ):
            message = refused(*argv)
            assert "shard 's1' (s1" in message, message
            assert "allow_partial" not in message
            assert "--shard NAME" in message
        # what the message offers works: the shards that answer, one at a time
        rows = json.loads(run("shard_query", "testapp.Post", "--shard", "s0", "--format=json").out)
        assert [r["title"] for r in rows] == ["on s0"]
        message = refused("shard_query", "testapp.Post", "--shard", "s1")
        assert "'s1'" in message


@pytest.mark.mariadb
def test_no_password_in_any_message_when_a_login_is_refused():
    authors_on("s0", "s1")
    with settings_changed("s1", PASSWORD=PLANTED_PASSWORD):  # Access denied
        message = refused(*SPLIT, "--dry-run")
    assert "Access denied" in message and "(primary s1)" in message


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["shard_split", "events", "s1", "--to", "s9", "--primary", "s5", "--at", "soon"],
            "--at 'soon' is not a valid testapp.Event.account key: “soon” value must be an "
            "integer.",
        ),
        (
            ["shard_query", "testapp.Event", "--sql", "UPDATE testapp_event SET amount = 0"],
            "--sql was refused and nothing was run: it is an UPDATE statement; only a single "
            "SELECT is run.",
        ),
        (
            ["shard_query", "testapp.Event", "--sql", "INSERT INTO testapp_event VALUES (1)"],
            "it is an INSERT statement;",
        ),
    ],
)
def test_bad_input_is_one_sentence_with_exit_code_2_and_changes_nothing(argv, expected):
    authors_on("s0", "s1")
    before = catalog_state()
    message = refused(*argv, code=2)
    assert expected in message, message  # plain words: no Python list, "an UPDATE"
    assert catalog_state() == before


# -- item 3: an alias the shard map names but DATABASES lacks --------------------------------


def add_pending_shard(group: str, shard: Shard) -> None:
    """A new version of ``group``'s map naming ``shard`` (owning nothing yet), as a split
    records before it copies."""
    current = get_map(group)
    write_version(group, [*current.shards.values(), shard], current.layout, note="pending")
    registry.reset()


def test_shard_status_reports_an_alias_missing_from_databases_with_the_rest_intact():
    authors_on("s0", "s1")
    add_pending_shard("users", Shard("s9", "s5", ("s5_r9",)))  # a deploy forgot s5_r9
    problem = "users/s9: s5_r9 not in DATABASES"

    outcome = run("shard_status", "--check")
    assert outcome.code == 1
    assert_clean(outcome.out + outcome.message)
    assert problem in outcome.out
    assert "overall: UNHEALTHY" in outcome.out
    for group in get_config().groups:  # every group is still reported
        assert f"group {group}: " in outcome.out
    assert outcome.out.count("not in DATABASES") == 2  # the s9 row and the problem line

    data = json.loads(run("shard_status", "--json").out)
    assert data["healthy"] is False
    assert any(p.startswith(problem) for p in data["problems"])
    users = next(g for g in data["groups"] if g["name"] == "users")
    s9 = next(s for s in users["shards"] if s["name"] == "s9")
    missing = next(h for h in s9["health"] if h["alias"] == "s5_r9")
    assert missing["reachable"] is False and missing["healthy"] is False
    assert missing["problem"].startswith("not in DATABASES")
    assert all(s["healthy"] for s in users["shards"] if s["name"] != "s9")

    # the staff page shares the status
    request = RequestFactory().get("/shards/", {"format": "json"})
    request.user = User(username="staff", is_staff=True, is_active=True)
    page = json.loads(status_view(request).content)
    assert any(p.startswith(problem) for p in page["problems"])
    html_request = RequestFactory().get("/shards/")
    html_request.user = request.user
    html = status_view(html_request)
    assert html.status_code == 200 and "not in DATABASES" in html.content.decode()


def test_a_primary_missing_from_databases_is_reported_by_status_and_migrate():
    add_pending_shard("metrics", Shard("s9", "s9", ()))  # no alias s9 at all
    outcome = run("shard_status", "metrics", "--check", "--counts")
    assert outcome.code == 1
    assert "metrics/s9: s9 not in DATABASES" in outcome.out
    migrate = run("shard_migrate", "metrics")
    assert migrate.code == 1
    assert "s9: FAILED: alias 's9' is not in DATABASES" in migrate.out
    assert migrate.message == (
        "migrate failed on 1 of 5 shard primaries: s9; the others are migrated."
    )


def test_shard_status_on_the_command_line_reports_an_alias_the_deploy_forgot():
    """settings.DATABASES lacks s5_r1, which the catalog's map names (a split onto s5)."""
    add_pending_shard("users", Shard("s9", "s5", ("s5_r1",)))
    outcome = cli("shard_status", "--check", missing=("s5_r1",))
    assert outcome.code == 1, outcome
    assert_unhealthy_sentence(outcome.message)
    assert "users/s9: s5_r1 not in DATABASES" in outcome.out
    assert "overall: UNHEALTHY" in outcome.out
    assert_clean(outcome.out)


def test_shard_status_on_the_command_line_reports_a_dead_shard_instead_of_failing():
    """Django 6.1's system checks connect to every alias unless the command says not to: a
    dead shard must not stop shard_status before it can report it."""
    authors_on("s0", "s1")
    if MARIADB:
        with killed("p1"):
            outcome = cli("shard_status", "--check")
    else:
        outcome = cli("shard_status", "--check", dead=("s1",))
    assert outcome.code == 1, outcome
    assert_unhealthy_sentence(outcome.message)
    assert_clean(outcome.out)
    assert "overall: UNHEALTHY" in outcome.out
    assert "unreachable" in outcome.out
