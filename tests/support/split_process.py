"""``shard_split`` in a subprocess of its own, on the test run's databases, optionally held
at a point (``tests/support/held_split.py``'s hook), for tests that watch a split from the
outside: fan-outs read while it runs, or while it lies killed at a point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from django.db import connections

from tests.support.backend import REPO, test_process_env
from tests.support.splitting import FileHold, wait_for_target_replicas

POLL_SECONDS = 0.02
DEADLINE_SECONDS = 60.0


class SplitProcess:
    """``python -m tests.support.held_split ARGV`` (``shard_split ...``), held at
    ``hold_at`` if given (a point named in ``django_shards.resharding.runner``)."""

    def __init__(self, argv: list[str], hold_at: str | None = None) -> None:
        self.hold_at = hold_at
        self.dir = tempfile.TemporaryDirectory(prefix="split-process-")
        self.held = FileHold([hold_at] if hold_at else [], Path(self.dir.name) / "held")
        env = test_process_env(SPLIT_HOLD_AT=hold_at or "", SPLIT_HOLD_FILE=str(self.held.path))
        self.out = tempfile.TemporaryFile(mode="w+")
        wait_for_target_replicas()
        connections.close_all()  # no connection of ours holds a lock or a snapshot
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.held_split", *argv],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.out.seek(0)
        return self.out.read()

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (if still running) and wait for it."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        connections.close_all()
        self.dir.cleanup()

    def wait_held(self) -> None:
        """Wait (with a deadline) until the split says it is held at its point."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while self.held.held_at() is None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"shard_split exited ({self.proc.returncode}) before {self.hold_at!r}:\n"
                    + self.output()
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"shard_split did not reach {self.hold_at!r}")
            time.sleep(POLL_SECONDS)
        assert self.held.held_at() == self.hold_at

    def kill_when_held(self) -> None:
        """Wait until held at the point, then SIGKILL the split there."""
        self.wait_held()
        self.kill()
        assert self.proc.returncode == -signal.SIGKILL, self.output()

    def wait(self) -> int:
        """Wait (with a deadline) for the split to end; its exit status."""
        try:
            return self.proc.wait(timeout=DEADLINE_SECONDS)
        finally:
            self.kill()
