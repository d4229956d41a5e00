"""Split benchmark: the online ``shard_split``'s copy, catch-up and fence, under writers.

Run from the project root on the MariaDB topology::

    source /tmp/django_shards_mariadb/env
    SHARDS_TEST_SUFFIX=bench .venv/bin/python -m benchmarks.split   # ~1-2 min

Goals (issue 11), each figure measured in the same run:

1. **copy rate**: rows per second of the split's copy, as a ratio to a
   ``mysqldump --where ... | mysql`` pipe moving the same rows between the same servers,
   >= 1.0;
2. **catch-up rate** (no goal): source transactions read from the binlog per second, and
   moving rows' transactions applied to the new shard per second, while writers run;
3. **longest stall** of a single write to a moving key, from its first attempt to its
   success (``ShardMoving`` retries included), through the whole split, <= 1 s;
4. **throughput on keys that do not move** during the split, as a ratio to the same
   writers without a split, >= 0.9.

Method: Django's test-database machinery creates throwaway databases
(``benchmarks.settings``: ``test_bench_*`` names, plus ``SHARDS_TEST_SUFFIX``). ``--rows``
events are inserted into shard s1 of the range group ``events`` (accounts 1000..1999, as
many rows each). Both splits run ``shard_split`` in a process of their own (as an operator
would: the writers' process is not slowed by the split's Python, nor the split by theirs).

- **Split 1, the copy** (no writers): the pipe first moves ``account >= 1500`` from s1 to
  a fresh table on s5 (the same servers the split uses), timed end to end; the table is
  dropped. It runs ``--pipe-runs`` times (3) and its median time is the pipe's. Before
  each timed run every replica has applied its primary's binlog (``MASTER_GTID_WAIT``), so
  no run pays for the replication of the one before. Then s1 is split at 1500 onto s5;
  its copy time is the job's ``progress.copy[...].seconds`` (selecting the moving rows in
  the snapshot, writing them).
- **Split 2, under writers**: ``--writers`` threads write to keys that stay
  (``[1500, 1750)``) and as many to keys that move (``[1750, 2000)``), each at ``--rate``
  writes per second (0: as fast as it can; a write late on its schedule does not make up
  for it later), half inserts and half ``UPDATE ... amount = amount + 1`` of a row of the
  key. They run ``--baseline-seconds`` before the split and as long after it; then s5 is
  split at 1750 onto s4. The split is held ``--backlog-seconds`` after its copy, so the
  binlog holds a known backlog; its first catch-up pass over that backlog gives the
  catch-up rate (the number of source transactions is the GTID distance the pass covered).
  Throughput ratio: writes/s completed on staying keys while the split ran, over the mean
  of the two windows without it. Afterwards the group's fan-out count and sum must equal
  what the writers were told succeeded (no write lost or applied twice).

Passwords go to the clients through ``MYSQL_PWD`` and are never printed. On SQLite (no
change stream, no dump) only split 1 runs, as the frozen copy: its rate and freeze time are
printed, with no goal. ``--profile`` writes a cProfile of split 1's process to
``results/split-<backend>-profile.txt``. Prints PASS/FAIL per goal, writes
``results/split-<backend>.json`` and exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
GOAL_COPY_RATIO = 1.0
GOAL_STALL_SECONDS = 1.0
GOAL_THROUGHPUT_RATIO = 0.9
#: how long a write refused with ShardMoving waits before it tries again
RETRY_SLEEP_SECONDS = 0.005
#: the first split's point, the second's, and the keys each writer side writes to
FIRST_AT, SECOND_AT = 1500, 1750
STAYING_KEYS, MOVING_KEYS = range(1500, 1750), range(1750, 2000)
TABLE_LABEL = "testapp.Event"


# --- the split's own process ------------------------------------------------------------


def _split_child(argv: list[str]) -> int:
    """``shard_split ARGV`` on the benchmark's test databases, held after its copy for
    ``BENCH_BACKLOG_SECONDS``; prints one ``BENCH {json}`` line about the first catch-up
    pass after the hold. With ``BENCH_PROFILE`` set, a cProfile of the command goes there."""
    import cProfile
    import pstats

    import django

    django.setup()
    from django_shards.management.commands.shard_split import Command
    from django_shards.models import SplitJob
    from django_shards.resharding.stream import transactions_behind

    backlog = float(os.environ.get("BENCH_BACKLOG_SECONDS") or 0)
    first_pass: dict[str, Any] = {}

    def job() -> SplitJob:
        return SplitJob.objects.using("default").filter(group="events").order_by("-pk")[0]

    def hold(point: str) -> None:
        if point == "catching_up" and "released" not in first_pass:
            time.sleep(backlog)  # the writers fill the binlog meanwhile
            first_pass["gtid"] = job().progress["gtid"]
            first_pass["released"] = time.monotonic()
        elif point == "catching up" and "released" in first_pass and "seconds" not in first_pass:
            seconds = time.monotonic() - first_pass["released"]
            progress = job().progress
            first_pass.update(
                seconds=seconds,
                source_transactions=transactions_behind(first_pass["gtid"], progress["gtid"]),
                applied=progress["catch_up"]["applied"],
            )
            print("BENCH " + json.dumps(first_pass), flush=True)

    command = Command()
    command.hold = hold
    profile_path = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_path else None
    if profiler is not None:
        profiler.enable()
    command.run_from_argv([sys.argv[0], "shard_split", *argv])
    if profiler is not None:
        profiler.disable()
        with open(profile_path, "w") as out:  # type: ignore[arg-type]
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("cumulative").print_stats(45)
            stats.sort_stats("tottime").print_stats(30)
    return 0


def _run_split(argv: list[str], *, backlog: float = 0.0, profile: Path | None = None) -> str:
    """Run the split child; its output. Raises RuntimeError when the split fails."""
    from django.db import connections

    from tests.support.splitting import wait_for_target_replicas

    wait_for_target_replicas()
    connections.close_all()
    env = {
        **os.environ,
        "SHARDS_USE_TEST_DATABASES": "1",
        "BENCH_BACKLOG_SECONDS": str(backlog),
        "BENCH_PROFILE": str(profile or ""),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.split", "--split-child", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(
            f"shard_split {' '.join(argv)} failed ({proc.returncode}):\n"
            + (proc.stdout + proc.stderr)[-3000:]
        )
    return proc.stdout


# --- writers -----------------------------------------------------------------------------


class Writers:
    """Writer threads on keys that stay and keys that move, each write timed from its first
    attempt to its success (``ShardMoving`` retried)."""

    def __init__(self, per_side: int, rate: float, rows: dict[int, list[int]]) -> None:
        self.rate = rate
        self.rows = rows  # account -> pks of its seeded events (for updates)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        #: (side, started, ended, refusals) per write
        self.writes: list[tuple[str, float, float, int]] = []
        self.inserted = self.updated = 0
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._run, args=(side, keys), daemon=True)
            for side, keys in (("staying", STAYING_KEYS), ("moving", MOVING_KEYS))
            for _ in range(per_side)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _run(self, side: str, keys: range) -> None:
        from django.db import connections
        from django.db.models import F

        from django_shards.exceptions import ShardMoving
        from tests.testapp.models import Event

        rng = random.Random()
        interval = 1 / self.rate if self.rate else 0.0
        due = time.monotonic()
        done: list[tuple[str, float, float, int]] = []
        inserted = updated = 0
        try:
            while not self.stop.is_set():
                if interval:
                    due += interval
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    else:
                        due = now  # late: no burst to make up for it
                account = rng.choice(keys)
                insert = rng.random() < 0.5
                pk = rng.choice(self.rows[account])
                started, refusals = time.monotonic(), 0
                while True:
                    try:
                        if insert:
                            Event.objects.create(account=account, kind="write", amount=1)
                        else:
                            changed = Event.objects.filter(account=account, pk=pk).update(
                                amount=F("amount") + 1
                            )
                            if changed != 1:
                                raise AssertionError(f"update of event {pk} changed {changed}")
                        break
                    except ShardMoving:
                        refusals += 1
                        time.sleep(RETRY_SLEEP_SECONDS)
                done.append((side, started, time.monotonic(), refusals))
                if insert:
                    inserted += 1
                else:
                    updated += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the benchmark
            self.errors.append(exc)
        finally:
            with self.lock:
                self.writes += done
                self.inserted += inserted
                self.updated += updated
            connections.close_all()

    def window(self, side: str, start: float, end: float) -> dict[str, Any]:
        """Writes of ``side`` that ended in [start, end): their rate and latencies."""
        took = [e - s for k, s, e, _ in self.writes if k == side and start <= e < end]
        if not took:
            return {"writes": 0, "per_second": 0.0, "p50_ms": None, "p99_ms": None}
        took.sort()
        return {
            "writes": len(took),
            "per_second": len(took) / (end - start),
            "p50_ms": 1000 * statistics.median(took),
            "p99_ms": 1000 * took[min(len(took) - 1, int(0.99 * len(took)))],
        }

    def longest(self, side: str, start: float, end: float) -> tuple[float, int]:
        """The longest write of ``side`` overlapping [start, end], and all its refusals."""
        chosen = [(e - s, r) for k, s, e, r in self.writes if k == side and e >= start and s <= end]
        return max((t for t, _ in chosen), default=0.0), sum(r for _, r in chosen)


# --- steps -------------------------------------------------------------------------------


def _seed(rows: int) -> None:
    from tests.testapp.models import Event

    batch: list[Any] = []
    for n in range(rows):
        batch.append(Event(account=1000 + n % 1000, kind="pay", amount=n % 100))
        if len(batch) == 10_000:
            Event.objects.bulk_create(batch, batch_size=2000)
            batch = []
    if batch:
        Event.objects.bulk_create(batch, batch_size=2000)


def _totals() -> tuple[int, int]:
    """The events group's row count and sum of amounts, by fan-out on the primaries."""
    from django.db.models import Count, Sum

    from tests.testapp.models import Event

    got = Event.objects.fanout().strong().aggregate(n=Count("pk"), total=Sum("amount"))
    return got["n"], got["total"] or 0


def _dump_pipe(databases: dict[str, Any], runs: int) -> dict[str, Any]:
    """Time ``mysqldump --where | mysql`` moving the split's rows from s1 into a fresh table
    on s5 (the servers split 1 copies between), ``runs`` times; the table is dropped after
    each. The pipe's time is the median run (one run is at the mercy of the machine's
    noise, and the split's copy is compared with it)."""
    from django.db import connections

    from tests.support.backend import wait_for_replicas
    from tests.testapp.models import Event

    source, target = databases["s1"], databases["s5"]
    env = {**os.environ, "MYSQL_PWD": source["PASSWORD"]}

    def client_args(db: dict[str, Any]) -> list[str]:
        return [f"-h{db['HOST']}", f"-P{db['PORT']}", f"-u{db['USER']}"]

    dump = [
        "mysqldump",
        *client_args(source),
        "--no-create-info",
        "--skip-triggers",
        "--single-transaction",
        f"--where=account >= {FIRST_AT}",
        source["NAME"],
        Event._meta.db_table,
    ]
    load = ["mysql", *client_args(target), target["NAME"]]
    times: list[float] = []
    rows = 0
    for _ in range(runs):
        with connections["s5"].schema_editor() as editor:
            editor.create_model(Event)
        wait_for_replicas(timeout=120)  # no replica still applying the last run
        started = time.perf_counter()
        producer = subprocess.Popen(dump, stdout=subprocess.PIPE, env=env)
        consumer = subprocess.run(load, stdin=producer.stdout, env=env, capture_output=True)
        producer.stdout.close()  # type: ignore[union-attr]
        producer.wait()
        times.append(time.perf_counter() - started)
        if producer.returncode or consumer.returncode:
            raise RuntimeError(f"dump pipe failed: {consumer.stderr.decode()[-500:]}")
        with connections["s5"].cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {Event._meta.db_table}")
            (rows,) = cursor.fetchone()
        with connections["s5"].schema_editor() as editor:
            editor.delete_model(Event)
    seconds = statistics.median(times)
    return {
        "pipe_rows": rows,
        "pipe_seconds": seconds,
        "pipe_seconds_each": [round(t, 4) for t in times],
        "pipe_rows_per_second": rows / seconds,
    }


def _job(target: str) -> Any:
    from django_shards.models import SplitJob

    return SplitJob.objects.using("default").get(group="events", target=target)


def _split_argv(source: str, target: str, at: int, batch_size: int | None) -> list[str]:
    return [
        "events",
        source,
        "--to",
        target,
        "--primary",
        target,
        "--replica",
        f"{target}_r1",
        "--at",
        str(at),
        "--no-input",
        *(["--batch-size", str(batch_size)] if batch_size else []),
    ]


def _split_under_writers(args: argparse.Namespace) -> dict[str, Any]:
    """Split 2: s5 at SECOND_AT onto s4 while the writers run."""
    from tests.testapp.models import Event

    rows: dict[int, list[int]] = {}
    for account, pk in (
        Event.objects.strong().filter(account__gte=FIRST_AT).values_list("account", "pk")
    ):
        rows.setdefault(account, []).append(pk)
    count_before, sum_before = _totals()
    writers = Writers(args.writers, args.rate, rows)
    writers.start()
    try:
        time.sleep(args.baseline_seconds)
        split_started = time.monotonic()
        output = _run_split(
            _split_argv("s5", "s4", SECOND_AT, args.batch_size), backlog=args.backlog_seconds
        )
        split_ended = time.monotonic()
        time.sleep(args.baseline_seconds)
    finally:
        writers.finish()
    if writers.errors:
        raise RuntimeError(f"a writer failed: {writers.errors[0]!r}")
    job = _job("s4")
    first_pass = next(
        (json.loads(line[6:]) for line in output.splitlines() if line.startswith("BENCH ")), None
    )
    before = writers.window("staying", split_started - args.baseline_seconds, split_started)
    during = writers.window("staying", split_started, split_ended)
    after = writers.window("staying", split_ended, split_ended + args.baseline_seconds)
    without = (before["per_second"] + after["per_second"]) / 2
    stall, refusals = writers.longest("moving", split_started, split_ended)
    staying_stall, staying_refusals = writers.longest("staying", split_started, split_ended)
    count_after, sum_after = _totals()
    lost = {
        "rows": count_before + writers.inserted - count_after,
        "amount": sum_before + writers.inserted + writers.updated - sum_after,
    }
    copy = job.progress["copy"][TABLE_LABEL]
    result: dict[str, Any] = {
        "mode": job.progress.get("mode"),
        "writers_per_side": args.writers,
        "rate_per_writer": args.rate,
        "split_seconds": split_ended - split_started,
        "rows_moved": copy["rows"],
        "copy_seconds": copy["seconds"],
        "copy_rows_per_second": copy["rows"] / copy["seconds"] if copy["seconds"] else None,
        "frozen_seconds": job.progress.get("frozen_seconds"),
        "catch_up": job.progress.get("catch_up"),
        "reverified_rows": job.progress.get("reverified_rows"),
        "staying_before": before,
        "staying_during": during,
        "staying_after": after,
        "throughput_ratio": during["per_second"] / without if without else None,
        "longest_moving_stall_seconds": stall,
        "moving_refusals": refusals,
        "longest_staying_write_seconds": staying_stall,
        "staying_refusals": staying_refusals,
        "writes": {"inserted": writers.inserted, "updated": writers.updated},
        "lost_or_doubled": lost,
    }
    if first_pass and first_pass.get("seconds"):
        result["first_catch_up_pass"] = {
            **first_pass,
            "backlog_seconds": args.backlog_seconds,
            "source_transactions_per_second": first_pass["source_transactions"]
            / first_pass["seconds"],
            "applied_per_second": first_pass["applied"] / first_pass["seconds"],
        }
    return result


# --- report ------------------------------------------------------------------------------


def _git_state() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "django_shards"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "django_shards_changed": None}
    return {"commit": commit, "django_shards_changed": sorted(line[3:] for line in dirty)}


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("measure", "value", "goal", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for n, row in enumerate([header, *rows]):
        print("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print(("  " + "  ".join("-" * w for w in widths)).rstrip())


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


def _report(result: dict[str, Any]) -> bool:
    """Print the figures next to their goals; True when every goal that applies is met."""
    first = result["first_split"]
    rows: list[tuple[str, str, str, str]] = [
        (
            f"split 1 copy ({first['mode']})",
            f"{first['rows_moved']:,} rows in {first['copy_seconds']:.2f}s = "
            f"{first['split_rows_per_second']:,.0f} rows/s",
            "",
            "",
        ),
    ]
    oks: list[bool] = []
    if "pipe_rows_per_second" in first:
        ratio = first["copy_ratio"]
        oks.append(ratio >= GOAL_COPY_RATIO)
        rows += [
            (
                f"mysqldump | mysql pipe (median of {len(first['pipe_seconds_each'])})",
                f"{first['pipe_rows']:,} rows in {first['pipe_seconds']:.2f}s = "
                f"{first['pipe_rows_per_second']:,.0f} rows/s",
                "",
                "",
            ),
            (
                "1. copy rate split / pipe",
                f"{ratio:.2f}",
                f">= {GOAL_COPY_RATIO}",
                _verdict(oks[-1]),
            ),
        ]
    if first.get("frozen_seconds") is not None:
        rows.append(("split 1 moving keys frozen", f"{first['frozen_seconds']:.2f}s", "", ""))
    second = result.get("second_split")
    if second:
        fp = second.get("first_catch_up_pass")
        if fp:
            rows.append(
                (
                    "2. catch-up (first pass)",
                    f"{fp['source_transactions_per_second']:,.0f} source txn/s read, "
                    f"{fp['applied_per_second']:,.0f} txn/s applied "
                    f"({fp['source_transactions']} / {fp['applied']} in {fp['seconds']:.2f}s)",
                    "(none)",
                    "",
                )
            )
        cu = second.get("catch_up") or {}
        rows.append(
            (
                "   whole catch-up",
                f"{cu.get('applied', 0)} txn applied; lag at the end {cu.get('behind')} txn, "
                f"{cu.get('lag_seconds')}s",
                "",
                "",
            )
        )
        stall = second["longest_moving_stall_seconds"]
        oks.append(stall <= GOAL_STALL_SECONDS)
        rows.append(
            (
                "3. longest moving-key write",
                f"{stall:.3f}s ({second['moving_refusals']} ShardMoving refusals; fence "
                f"{second['frozen_seconds'] or 0:.3f}s)",
                f"<= {GOAL_STALL_SECONDS}s",
                _verdict(oks[-1]),
            )
        )
        ratio = second["throughput_ratio"] or 0.0
        oks.append(ratio >= GOAL_THROUGHPUT_RATIO)
        during, before, after = (
            second["staying_during"],
            second["staying_before"],
            second["staying_after"],
        )
        rows.append(
            (
                "4. staying-key writes/s",
                f"{ratio:.2f} = {during['per_second']:.0f}/s during over "
                f"{(before['per_second'] + after['per_second']) / 2:.0f}/s without "
                f"(p99 {during['p99_ms'] or 0:.1f} ms vs {before['p99_ms'] or 0:.1f}/"
                f"{after['p99_ms'] or 0:.1f} ms)",
                f">= {GOAL_THROUGHPUT_RATIO}",
                _verdict(oks[-1]),
            )
        )
        lost = second["lost_or_doubled"]
        intact = lost["rows"] == 0 and lost["amount"] == 0 and second["staying_refusals"] == 0
        oks.append(intact)
        rows.append(
            (
                "   writes lost or doubled",
                f"rows {lost['rows']}, amount {lost['amount']}; staying refusals "
                f"{second['staying_refusals']}",
                "0",
                _verdict(intact),
            )
        )
    print()
    _print_table(rows)
    return all(oks)


# --- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--split-child"]:
        return _split_child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--pipe-runs", type=int, default=3, help="pipe runs (median taken)")
    parser.add_argument(
        "--batch-size", type=int, help="shard_split's --batch-size (default: the command's)"
    )
    parser.add_argument("--writers", type=int, default=2, help="writer threads per side")
    parser.add_argument("--rate", type=float, default=100, help="writes/s per writer; 0: max")
    parser.add_argument("--baseline-seconds", type=float, default=4.0)
    parser.add_argument("--backlog-seconds", type=float, default=2.0)
    parser.add_argument("--profile", action="store_true", help="cProfile split 1's process")
    args = parser.parse_args(argv)

    backend = os.environ.get("SHARDS_DB", "sqlite")
    tmp = None
    if backend != "mariadb":
        tmp = tempfile.mkdtemp(prefix="shards-bench-split-")
        os.environ["SHARDS_SQLITE_DIR"] = tmp
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    from tests.support.backend import wait_for_replicas
    from tests.testapp.models import Event

    online = backend == "mariadb" and bool(settings.DJANGO_SHARDS.get("OPERATOR"))
    RESULTS_DIR.mkdir(exist_ok=True)
    profile = RESULTS_DIR / f"split-{backend}-profile.txt" if args.profile else None
    started_at = time.monotonic()
    config = setup_databases(verbosity=0, interactive=False, aliases=list(settings.DATABASES))
    try:
        print(f"inserting {args.rows:,} events on s1 ...", flush=True)
        _seed(args.rows)
        moving = Event.objects.on_shard("s1").strong().filter(account__gte=FIRST_AT).count()
        first: dict[str, Any] = {}
        if backend == "mariadb":
            print("mysqldump | mysql pipe s1 -> s5 ...", flush=True)
            first.update(_dump_pipe(settings.DATABASES, args.pipe_runs))
        wait_for_replicas(timeout=120)  # the seed's or the pipe's rows: applied, not in the way
        print(f"split 1: s1 -> s5 at {FIRST_AT} (no writers) ...", flush=True)
        _run_split(_split_argv("s1", "s5", FIRST_AT, args.batch_size), profile=profile)
        job = _job("s5")
        copy = job.progress["copy"][TABLE_LABEL]
        if copy["rows"] != moving:
            raise RuntimeError(f"split 1 copied {copy['rows']} rows, {moving} were to move")
        first.update(
            mode=job.progress.get("mode"),
            rows_on_source=args.rows,
            rows_moved=copy["rows"],
            copy_seconds=copy["seconds"],
            split_rows_per_second=copy["rows"] / copy["seconds"],
            frozen_seconds=job.progress.get("frozen_seconds"),
            batch_size=args.batch_size,
        )
        if "pipe_rows_per_second" in first:
            first["copy_ratio"] = first["split_rows_per_second"] / first["pipe_rows_per_second"]
        result: dict[str, Any] = {"backend": backend, "first_split": first}
        if online:
            print(
                f"split 2: s5 -> s4 at {SECOND_AT} under {2 * args.writers} writers "
                f"({args.rate or 'max'}/s each) ...",
                flush=True,
            )
            result["second_split"] = _split_under_writers(args)
        elif backend == "mariadb":
            print('no DJANGO_SHARDS["OPERATOR"]: the split is the frozen copy; no split 2')
    finally:
        connections.close_all()
        teardown_databases(config, verbosity=0)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    ok = _report(result)
    result.update(
        goals={
            "copy_ratio": GOAL_COPY_RATIO,
            "stall_seconds": GOAL_STALL_SECONDS,
            "throughput_ratio": GOAL_THROUGHPUT_RATIO,
        },
        passed=ok,
        seconds=round(time.monotonic() - started_at, 1),
        load_average=os.getloadavg(),
        cpus=os.cpu_count(),
        argv=argv,
        **_git_state(),
    )
    output = RESULTS_DIR / f"split-{backend}.json"
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {output.relative_to(ROOT)}" + (f" and {profile.name}" if profile else ""))
    if not ok:
        print("a goal was missed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
