"""Test-only entry point: ``python -m tests.support.held_split shard_split ARGS...`` runs
``manage.py shard_split ARGS...`` on the test settings, with a split runner that holds at
the points the environment names (``shard_failover ARGS...`` likewise holds a failover at
the phases named):

- ``SPLIT_HOLD_AT``: comma-separated points (``frozen``, ``copy testapp.Post``, ...; see
  ``django_shards.resharding.runner``);
- ``SPLIT_HOLD_FILE``: the file the split writes the point's name to when it is held there,
  and waits to see deleted (:class:`tests.support.splitting.FileHold`).

``tests/splitting/test_split_crash.py`` runs it in a subprocess to ``SIGKILL`` a split at a
point. The library itself reads no environment for this: the hook is handed to the runner.
The map lease is the split tests' short one (``MAP_LEASE_SECONDS``).
"""

from __future__ import annotations

import os
import sys

import django

from tests import settings as test_settings
from tests.support.splitting import MAP_LEASE_SECONDS, FileHold


def main(argv: list[str]) -> None:
    if argv[:1] not in (["shard_split"], ["shard_failover"]):
        sys.exit(
            "usage: python -m tests.support.held_split shard_split|shard_failover ARGS... "
            f"(not {argv[:1]})"
        )
    test_settings.DJANGO_SHARDS["MAP_LEASE_SECONDS"] = MAP_LEASE_SECONDS
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    django.setup()
    from django.core.management import load_command_class

    command = load_command_class("django_shards", argv[0])
    points = [p for p in os.environ.get("SPLIT_HOLD_AT", "").split(",") if p]
    if points:
        command.hold = FileHold(points, os.environ["SPLIT_HOLD_FILE"])
    command.run_from_argv([sys.argv[0], *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
