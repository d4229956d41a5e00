"""Read-your-writes benchmark: ``READ_YOUR_WRITES = "gtid"`` against ``"time"``.

Run from the project root on the MariaDB topology (real primaries with GTID replicas)::

    source /tmp/django_shards_mariadb/env
    python -m benchmarks.gtid --rounds 300

A read-heavy loop: each round writes one author (an update on her shard's primary) and
then reads authors ``--reads`` times with default reads: the one just written, and others
on the same shard (in a request, a page shows more than what was just changed). It
reports the share of those reads served by replicas, in each mode, with the same data in
the same process.

- ``time`` pins the shard to its primary for ``PIN_AFTER_WRITE_SECONDS``: every read
  right after a write goes to the primary (what Rails, django-multidb-router and Vitess
  do).
- ``gtid`` remembers the write's GTID; a read may use any replica that has applied it
  (checked without waiting), otherwise the primary. Replication on loopback takes a few
  hundred microseconds, so most reads after the first find the replica caught up.

Every read is also checked for correctness: the row just written must show the written
value (read-your-writes must hold in both modes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--reads", type=int, default=10, help="reads after each write")
    args = parser.parse_args(argv)
    if os.environ.get("SHARDS_DB") != "mariadb":
        print("needs the MariaDB topology: source /tmp/django_shards_mariadb/env", file=sys.stderr)
        return 2
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import django

    django.setup()
    from django.conf import settings
    from django.test import override_settings
    from django.test.utils import setup_databases, teardown_databases

    from django_shards import context, shard_for
    from tests.support.backend import wait_for_replicas
    from tests.testapp.models import Author

    config = setup_databases(verbosity=0, interactive=False, aliases=list(settings.DATABASES))
    results: dict[str, Any] = {"rounds": args.rounds, "reads_per_write": args.reads}
    try:
        authors = Author.objects.bulk_create([Author(email=f"a{i}@x.org") for i in range(400)])
        shard = shard_for(Author, authors[0].pk)
        same_shard = [a for a in authors if shard_for(Author, a.pk) == shard][: args.reads]
        wait_for_replicas()
        for mode in ("time", "gtid"):
            shards = {
                **settings.DJANGO_SHARDS,
                "READ_YOUR_WRITES": mode,
                "PIN_AFTER_WRITE_SECONDS": 2.0,
            }
            with override_settings(DJANGO_SHARDS=shards):
                context.clear_pins()
                on_replica = total = stale = 0
                started = time.perf_counter()
                for n in range(args.rounds):
                    target = same_shard[n % len(same_shard)]
                    value = f"v{mode}{n}"
                    Author.objects.filter(pk=target.pk).update(name=value)
                    for i in range(args.reads):
                        pk = target.pk if i == 0 else same_shard[(n + i) % len(same_shard)].pk
                        got = Author.objects.get(pk=pk)
                        total += 1
                        on_replica += got._state.db in shard.replicas
                        if pk == target.pk and got.name != value:
                            stale += 1
                elapsed = time.perf_counter() - started
            results[mode] = {
                "reads": total,
                "replica_reads": on_replica,
                "replica_share": on_replica / total,
                "stale_reads_of_the_write": stale,
                "seconds": elapsed,
            }
            print(
                f"{mode:>5}: {on_replica}/{total} reads on replicas "
                f"({on_replica / total:.1%}), stale reads of the write: {stale}, "
                f"{elapsed:.1f}s"
            )
    finally:
        teardown_databases(config, verbosity=0)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "gtid-mariadb.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = (
        results["gtid"]["stale_reads_of_the_write"]
        == 0
        == results["time"]["stale_reads_of_the_write"]
    )
    print(f"read-your-writes held in both modes: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
