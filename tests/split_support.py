"""Helpers shared by the split tests (``test_split.py``, ``test_split_crash.py``)."""

from __future__ import annotations

from django.db import connections

from tests.conftest import MARIADB

#: the spare primaries a split may target, each with its replica ``<name>_r1``
TARGETS = ("s4", "s5")
CATCH_UP_SECONDS = 30.0


def wait_for_target_replicas() -> None:
    """Block until each target's replica has applied everything its primary committed.

    A split checks its target's replica before it starts and refuses one whose lag it cannot
    tell (one that has not applied its primary's latest position within a moment). The
    tests' own writes just before a split (seeds, the previous test's flush) must not decide
    that check. SQLite replicas read the primary's file: nothing to wait for.
    """
    if not MARIADB:
        return
    for target in TARGETS:
        with connections[target].cursor() as cursor:
            cursor.execute("SELECT @@gtid_binlog_pos")
            (position,) = cursor.fetchone()
        replica = f"{target}_r1"
        with connections[replica].cursor() as cursor:
            cursor.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [position, CATCH_UP_SECONDS])
            (result,) = cursor.fetchone()
        assert result == 0, f"{replica} did not apply {position} in {CATCH_UP_SECONDS}s"
