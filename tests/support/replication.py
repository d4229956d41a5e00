"""Helpers for tests that break replication on the real MariaDB topology: run the topology
script, find a replica's server, create a row on a chosen shard, wait on a condition."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from django.db import connections

from django_shards import context, shard_for
from django_shards.health import monitor
from django_shards.replicas import pool
from tests.support.backend import wait_for_replicas
from tests.testapp.models import Author

T = TypeVar("T")

TOPOLOGY = Path(__file__).resolve().parents[2] / "scripts" / "mariadb-topology"
# which server each alias lives on (scripts/mariadb-topology: s<i> -> p<i % 3>)
SERVER_OF_REPLICA = {f"s{i}_r1": f"r{i % 3}" for i in range(6)}


def topology(*args: str) -> str:
    """Run ``scripts/mariadb-topology ARGS``; its stdout."""
    done = subprocess.run(
        [str(TOPOLOGY), *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


def wait_until(condition: Callable[[], T | None], timeout: float = 15.0, what: str = "") -> T:
    """Poll ``condition`` until it returns something other than None or False; return that.
    Fails the test after ``timeout`` seconds, naming ``what`` it waited for."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout:g}s in vain for {what or condition}")
        time.sleep(0.05)


def author_on(shard_name: str) -> Author:
    """A saved author whose key lands on ``shard_name``, replicated everywhere."""
    while True:
        a = Author(email=f"{shard_name}@x.org")
        if shard_for(Author, a.pk).name == shard_name:
            a.save()
            context.clear_pins()
            wait_for_replicas()
            return a


def fresh_health() -> None:
    """Forget cached probes, cool-downs and positions, as a new process would start."""
    pool.reset()
    monitor.forget()


def read_lands_on(alias: str, pk: int, **expected: object) -> Author | None:
    """The author read by a default (eventual) read if it came from ``alias`` with the
    ``expected`` field values, else None (for :func:`wait_until`)."""
    got = Author.objects.get(pk=pk)
    if got._state.db != alias or any(getattr(got, k) != v for k, v in expected.items()):
        return None
    return got


def can_show_slave_status(alias: str) -> bool:
    """Whether the database user of ``alias`` may run ``SHOW SLAVE STATUS``."""
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SHOW SLAVE STATUS")
            cursor.fetchall()
    except Exception:  # noqa: BLE001 - refused: the privilege is missing
        return False
    return True


def operator_credentials() -> tuple[str, str]:
    """The topology's operator account: from SHARDS_OPERATOR_USER / SHARDS_OPERATOR_PASSWORD,
    else from ``scripts/mariadb-topology env`` (tox does not pass those variables on)."""
    user = os.environ.get("SHARDS_OPERATOR_USER")
    password = os.environ.get("SHARDS_OPERATOR_PASSWORD")
    if user and password:
        return user, password
    found = {}
    for line in topology("env").splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            found[name] = value
    user, password = found.get("SHARDS_OPERATOR_USER"), found.get("SHARDS_OPERATOR_PASSWORD")
    assert user and password, (
        "the topology has no operator account: run scripts/mariadb-topology up"
    )
    return user, password


@contextmanager
def connecting_as(alias: str, user: str, password: str) -> Iterator[None]:
    """This thread's connection of ``alias`` logs in as ``user`` (on the same server and
    database) inside the block, and as the configured user again after it."""
    conn = connections[alias]
    saved = conn.settings_dict["USER"], conn.settings_dict["PASSWORD"]
    conn.close()
    conn.settings_dict["USER"], conn.settings_dict["PASSWORD"] = user, password
    try:
        yield
    finally:
        conn.close()
        conn.settings_dict["USER"], conn.settings_dict["PASSWORD"] = saved
