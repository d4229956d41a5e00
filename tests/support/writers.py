"""A writer thread for failover tests and benchmarks: creates ``Deposit`` rows through the
ORM as fast as it can, retrying the retryable ``ShardUnavailable``, and records every write
the database acknowledged and the longest time one write took (first attempt to success).
"""

from __future__ import annotations

import threading
import time

from django.db import connections

from django_shards.exceptions import ShardUnavailable
from tests.testapp.models import Deposit

DEADLINE = 60.0
#: how long a refused write waits before it tries again
RETRY_SECONDS = 0.005


class Writer(threading.Thread):
    """Creates deposits through the ORM as fast as it can, retrying ``ShardUnavailable``;
    records each one the database acknowledged and the longest time one write took from
    its first attempt to its success."""

    def __init__(self, account: int = 7) -> None:
        super().__init__(daemon=True)
        self.account = account
        self.acked: list[int] = []
        self.failed_attempts = 0
        self.longest = 0.0
        self.stop = threading.Event()
        self.stop_retrying = threading.Event()  # a dead primary: give up the current write
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                n += 1
                started = time.monotonic()
                while not self.stop.is_set():
                    try:
                        deposit = Deposit.objects.create(account=self.account, amount=n)
                    except ShardUnavailable:
                        self.failed_attempts += 1
                        if self.stop_retrying.is_set():
                            break
                        time.sleep(RETRY_SECONDS)
                        continue
                    self.acked.append(deposit.pk)
                    self.longest = max(self.longest, time.monotonic() - started)
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            connections.close_all()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + DEADLINE
        while len(self.acked) < count:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {len(self.acked)} writes acknowledged"
            time.sleep(0.01)

    def finish(self) -> None:
        self.stop.set()
        self.stop_retrying.set()
        self.join(timeout=DEADLINE)
        assert not self.is_alive()
        assert self.error is None, self.error


def ids_held(alias: str, ids: list[int]) -> set[int]:
    """Which of the deposits ``ids`` the server of ``alias`` holds (read as the operator,
    no routing)."""
    from django_shards.operator import operator_connect

    conn = operator_connect(alias)
    found: set[int] = set()
    try:
        with conn.cursor() as cursor:
            for start in range(0, len(ids), 1000):
                chunk = ids[start : start + 1000]
                cursor.execute(
                    f"SELECT id FROM {Deposit._meta.db_table} WHERE id IN "
                    f"({', '.join(['%s'] * len(chunk))})",
                    chunk,
                )
                found |= {int(r[0]) for r in cursor.fetchall()}
    finally:
        conn.close()
    return found
