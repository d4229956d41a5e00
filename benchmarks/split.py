"""Split benchmark: how fast ``shard_split`` copies rows, against ``mysqldump | mysql``.

Run from the project root on the MariaDB topology::

    source /tmp/django_shards_mariadb/env
    python -m benchmarks.split --rows 200000          # about a minute

Goal (the issue): rows per second copied by the split, as a ratio to a
``mysqldump --where ... | mysql`` pipe moving the same rows between the same servers in
the same run, is >= 0.5. Also reported: how long the moving keys were frozen (the split
has no change stream, so they are frozen for the whole copy and verification).

Method: Django's test-database machinery creates throwaway databases
(``benchmarks.settings``: ``test_bench_*`` names). ``--rows`` events are inserted into
shard s1 of the range group ``events`` (accounts 1000..1999); the split moves the upper
half ([1500, 2000)) to s4. The pipe moves the same rows (``account >= 1500``) from s1 to
an empty copy of the table on s5. The split's copy time is taken from its job record
(``progress.copy[...].seconds``: reading, choosing the moving rows, and writing them);
the pipe is timed end to end. Passwords go to the clients through ``MYSQL_PWD`` and are
never printed. On SQLite only the split is timed (there is no dump to compare with).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 0.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args(argv)

    backend = os.environ.get("SHARDS_DB", "sqlite")
    tmp = None
    if backend != "mariadb":
        tmp = tempfile.mkdtemp(prefix="shards-bench-split-")
        os.environ["SHARDS_SQLITE_DIR"] = tmp
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    from django_shards.models import SplitJob
    from tests.testapp.models import Event

    config = setup_databases(verbosity=0, interactive=False, aliases=list(settings.DATABASES))
    try:
        print(f"inserting {args.rows} events on s1 ...", flush=True)
        started = time.perf_counter()
        batch = []
        for n in range(args.rows):
            batch.append(Event(account=1000 + n % 1000, kind="pay", amount=n))
            if len(batch) == 10_000:
                Event.objects.bulk_create(batch, batch_size=2000)
                batch = []
        if batch:
            Event.objects.bulk_create(batch, batch_size=2000)
        print(f"  {time.perf_counter() - started:.1f}s", flush=True)
        moving = Event.objects.on_shard("s1").strong().filter(account__gte=1500).count()

        pipe = None
        if backend == "mariadb":
            pipe = _dump_pipe(settings.DATABASES, connections)

        out = io.StringIO()
        started = time.perf_counter()
        call_command(
            "shard_split",
            "events",
            "s1",
            "--to",
            "s4",
            "--primary",
            "s4",
            "--replica",
            "s4_r1",
            "--at",
            "1500",
            "--no-input",
            "--batch-size",
            str(args.batch_size),
            stdout=out,
        )
        total = time.perf_counter() - started
        job = SplitJob.objects.using("default").get(group="events", target="s4")
        copy = job.progress["copy"]["testapp.Event"]
        result: dict[str, Any] = {
            "backend": backend,
            "rows_on_source": args.rows,
            "rows_moved": copy["rows"],
            "split_copy_seconds": copy["seconds"],
            "split_rows_per_second": copy["rows"] / copy["seconds"],
            "split_total_seconds": total,
            "frozen_seconds": job.progress.get("frozen_seconds"),
            "batch_size": args.batch_size,
        }
        assert copy["rows"] == moving, (copy["rows"], moving)
        if pipe is not None:
            result.update(pipe)
            result["ratio"] = result["split_rows_per_second"] / pipe["pipe_rows_per_second"]
            result["goal"] = GOAL_RATIO
            result["pass"] = result["ratio"] >= GOAL_RATIO
    finally:
        teardown_databases(config, verbosity=0)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    for name, value in result.items():
        shown = f"{value:,.1f}" if isinstance(value, float) else value
        print(f"  {name:<24} {shown}")
    if "ratio" in result:
        verdict = "PASS" if result["pass"] else "FAIL"
        print(
            f"\n  split / pipe rows per second = {result['ratio']:.2f} (goal >= {GOAL_RATIO}) "
            f"{verdict}"
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"split-{backend}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _dump_pipe(databases: dict[str, Any], connections: Any) -> dict[str, Any]:
    """Time ``mysqldump --where | mysql`` moving the same rows from s1 to an empty s5 table."""
    from django.db import connection as _unused  # noqa: F401

    source, target = databases["s1"], databases["s5"]
    with connections["s5"].schema_editor() as editor:
        from tests.testapp.models import Event

        editor.create_model(Event)
    env = {**os.environ, "MYSQL_PWD": source["PASSWORD"]}

    def client_args(db: dict[str, Any]) -> list[str]:
        return [f"-h{db['HOST']}", f"-P{db['PORT']}", f"-u{db['USER']}"]

    dump = [
        "mysqldump",
        *client_args(source),
        "--no-create-info",
        "--skip-triggers",
        "--single-transaction",
        "--where=account >= 1500",
        source["NAME"],
        "testapp_event",
    ]
    load = ["mysql", *client_args(target), target["NAME"]]
    started = time.perf_counter()
    producer = subprocess.Popen(dump, stdout=subprocess.PIPE, env=env)
    consumer = subprocess.run(load, stdin=producer.stdout, env=env, capture_output=True)
    producer.stdout.close()  # type: ignore[union-attr]
    producer.wait()
    seconds = time.perf_counter() - started
    if producer.returncode or consumer.returncode:
        raise RuntimeError(f"dump pipe failed: {consumer.stderr.decode()[-500:]}")
    with connections["s5"].cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM testapp_event")
        rows = cursor.fetchone()[0]
    return {"pipe_rows": rows, "pipe_seconds": seconds, "pipe_rows_per_second": rows / seconds}


if __name__ == "__main__":
    sys.exit(main())
