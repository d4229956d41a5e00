"""What the split tests (``tests/splitting/``) share with each other and with the split's
test entry point (``tests/support/held_split.py``).

Nothing here touches the database when imported, so the entry point can import it before
Django is set up.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db import connections
from django.db.models import Model

#: the spare primaries a split may target, each with its replica ``<name>_r1``
TARGETS = ("s4", "s5")
CATCH_UP_SECONDS = 30.0
#: every split waits two map leases; the tests read maps after ``registry.reset()``, so a
#: short lease changes nothing they observe and saves seconds per split
MAP_LEASE_SECONDS = 0.2
#: how often a held split looks whether it is released
HOLD_POLL_SECONDS = 0.01


class FileHold:
    """A split runner's ``hold`` hook (``SplitRunner(hold=...)``) that holds the split at
    each of ``points``, once per point.

    On reaching such a point the split writes the point's name to ``path`` (whole, by a
    rename) and waits until the file is deleted: the test sees where the split is, does
    its work (writes, a ``SIGKILL``), then releases it with :meth:`release`. Points the
    runner reaches are named in ``django_shards.resharding.runner``'s docstring.
    """

    def __init__(self, points: Iterable[str], path: Path | str) -> None:
        self.points = set(points)
        self.path = Path(path)

    def __call__(self, point: str) -> None:
        if point not in self.points:
            return
        self.points.discard(point)
        announcing = self.path.with_name(f"{self.path.name}.tmp")
        announcing.write_text(point)
        os.replace(announcing, self.path)
        while self.path.exists():  # released by the test, or killed here
            time.sleep(HOLD_POLL_SECONDS)

    def held_at(self) -> str | None:
        """The point the split is held at now, or None."""
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def release(self) -> None:
        self.path.unlink(missing_ok=True)


def wait_for_target_replicas() -> None:
    """Block until each target's replica has applied everything its primary committed.

    A split checks its target's replica before it starts and refuses one whose lag it cannot
    tell (one that has not applied its primary's latest position within a moment). The
    tests' own writes just before a split (seeds, the previous test's flush) must not decide
    that check. SQLite replicas read the primary's file: nothing to wait for.
    """
    if settings.SHARDS_DB != "mariadb":
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


def empty_tables(alias: str, models: Iterable[type[Model]]) -> None:
    """Delete every row of ``models``' tables on ``alias``, children first (give parents
    first), skipping tables it does not have: a split's target between tests."""
    conn = connections[alias]
    with conn.cursor() as cursor:
        existing = set(conn.introspection.table_names(cursor))
        for model in reversed(list(models)):
            if model._meta.db_table in existing:
                cursor.execute(f"DELETE FROM {conn.ops.quote_name(model._meta.db_table)}")
