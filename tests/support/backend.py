"""The database backend the suite runs on, and waiting for its replicas."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from django_shards.conf import get_config

#: the suite runs on the real MariaDB topology (``SHARDS_DB=mariadb``), not on SQLite files
MARIADB = settings.SHARDS_DB == "mariadb"


def wait_for_replicas(timeout: float = 10.0) -> None:
    """Block until every replica has applied everything its primary committed.

    SQLite replicas read the primary's file, so there is nothing to wait for.
    """
    if not MARIADB:
        return
    for group in get_config().groups.values():
        for spec in group.shards:
            shard = spec.shard
            with connections[shard.primary].cursor() as cur:
                cur.execute("SELECT @@gtid_binlog_pos")
                (pos,) = cur.fetchone()
            for replica in shard.replicas:
                with connections[replica].cursor() as cur:
                    cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [pos, timeout])
                    (result,) = cur.fetchone()
                assert result == 0, f"replica {replica} did not catch up with {pos}"


@contextlib.contextmanager
def settings_changed(alias: str, **changes: Any) -> Iterator[None]:
    """Point ``alias`` somewhere else for every thread (the settings dict is shared by the
    connections of all threads), restoring it on exit."""
    conn = connections[alias]
    saved = dict(conn.settings_dict)
    conn.close()
    conn.settings_dict.update(changes)
    try:
        yield
    finally:
        conn.close()
        conn.settings_dict.clear()
        conn.settings_dict.update(saved)


@contextlib.contextmanager
def unreachable(*aliases: str) -> Iterator[None]:
    """Make ``aliases`` fail to connect, for real, while inside: a port nobody listens on
    (MariaDB: connection refused) or a file in a directory that does not exist (SQLite)."""
    with contextlib.ExitStack() as stack:
        for alias in aliases:
            if MARIADB:
                stack.enter_context(settings_changed(alias, HOST="127.0.0.1", PORT=1))
            else:
                name = f"/nonexistent-django-shards-dir/{alias}.sqlite3"
                stack.enter_context(settings_changed(alias, NAME=name))
        yield


REPO = Path(__file__).resolve().parents[2]


def test_process_env(**extra: str) -> dict[str, str]:
    """The environment of a process a test starts on the test run's databases (a split, a
    watcher, a worker): the test settings, each alias on its test database, this run's
    SQLite directory; plus ``extra``."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "SHARDS_USE_TEST_DATABASES": "1",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    if not MARIADB:
        env["SHARDS_SQLITE_DIR"] = os.path.dirname(settings.DATABASES["default"]["NAME"])
    return env
