"""The example project's own tests pass: ``manage.py test social`` in ``example_project/``.

They check its lookup index (``Author.email``): ``/find/?email=...`` reads the index, then
exactly one shard (queries counted per alias, on every thread), an unknown address is
answered by the index alone, and an e-mail is unique across the cluster. Run in a
subprocess of the current interpreter, with Django's in-memory SQLite test databases:
independent of ``SHARDS_DB``, and ``example_project/var/`` is left alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_user_project import TIMEOUT, clean_environment, report

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def test_example_project_tests_pass() -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "test", "social", "--noinput"],
        cwd=EXAMPLE,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, report(done)
    assert "Ran 5 tests" in done.stderr, report(done)
