"""Fan-out benchmark: parallel speed-up, per-fan-out overhead and merge memory.

Run from the project root::

    python -m benchmarks.fanout                        # SQLite, 8 shards, 500k rows, ~2 min
    python -m benchmarks.fanout --rows 1000000         # the issue's 1M rows (~4-8 min)
    source /tmp/django_shards_mariadb/env
    python -m benchmarks.fanout --backend mariadb      # 8 shards on 3 primaries, 200k rows, ~4 min
    python -m benchmarks.fanout --rows 100000          # smaller table, faster
    python -m benchmarks.fanout --skip-memory          # (a) and the overhead only, < 1 min
    python -m benchmarks.fanout --profile              # + cProfile of a cheap fan-out

The row count only changes how long loading and iterating take: the memory peaks do not
depend on it (that is the point of the goal).

Goals (the issue), as ratios:

(a) **Parallelism.** 8 shards, a query that takes ~50 ms on each (``SLEEP(0.05)`` in the
    WHERE clause of a table with one row per shard; SQLite gets a ``SLEEP`` function
    through ``connection_created``): the fan-out ``list(Author.objects.extra(where=[...]))``
    over the slowest single shard (each shard alone through ``on_shard()``, same round).
    Median of ``--rounds`` per-round ratios; goal <= 1.3 (sequential would be ~8).
(b) **Memory.** tracemalloc peak (Python allocations, all threads) of
    ``list(Reading.objects.order_by("-value")[:20])`` across the shards over the peak of
    the same 20 rows from one shard (goal: <= 1.25 x shards), and of
    ``Reading.objects.iterator(chunk_size=2000)`` consumed to the end over shards x the
    peak of one chunk (``list(qs.on_shard(s).order_by("pk")[:2000])``; goal <= 1.25) and a
    flat peak: at the end no more than 1.1 x the peak once every shard paged twice
    (``max(10 %, 3 x shards x chunk)`` rows).

Also measured, for information: the fan-out of a cheap query (one row per shard) over one
shard's query and over the 8 queries run one after the other, i.e. the overhead of a
fan-out in microseconds, split into its steps (planning, SQL compilation per shard, the
executor's threads, merging); the same with ``CONN_MAX_AGE = 0`` (Django's default: a new
connection per shard per fan-out); the heavy real query ``order_by("-value")[:20]`` timed
like (a); the iterator's throughput and the cost of its OFFSET pages on ordered querysets.

Method: ``benchmarks.fanout_settings`` (N aliases ``f0``.. on the 3 MariaDB primaries or
N SQLite files, no replicas, ``CONN_MAX_AGE`` 600, ``FANOUT_WORKERS`` 8) and Django's
test-database machinery (``setup_databases``/``teardown_databases``, ``test_fanout_*``
databases), so real databases are never touched. Prints tables with PASS/FAIL and writes
``benchmarks/results/fanout-<backend>.json`` (``--profile``: also
``fanout-<backend>-profile.txt``).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import itertools
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.topology import databases_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_PARALLEL = 1.3  # fan-out time / slowest single shard
GOAL_MEMORY = 1.25  # peak / (shards x one shard's peak)
GOAL_FLAT = 1.1  # iterator peak at the end / peak once every shard paged twice
THROUGHPUT_ROWS = 100_000  # rows timed for the iterators' throughput
WARMUP_ROUNDS = 3
MB = 1024 * 1024

# --- output ----------------------------------------------------------------------------


def _verdict(ok: bool | None) -> str:
    return "info" if ok is None else ("PASS" if ok else "FAIL")


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- databases -------------------------------------------------------------------------


def _configure(args: argparse.Namespace) -> str | None:
    """Point Django at ``benchmarks.fanout_settings``; the SQLite temp dir, if any."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.fanout_settings"
    os.environ["FANOUT_BENCH_BACKEND"] = args.backend
    os.environ["FANOUT_BENCH_SHARDS"] = str(args.shards)
    os.environ["FANOUT_BENCH_WORKERS"] = str(args.workers)
    os.environ["FANOUT_BENCH_CONN_MAX_AGE"] = str(args.conn_max_age)
    return databases_dir(
        args.backend,
        ("DATABASE_URL", "S0_URL", "S1_URL", "S2_URL"),
        "FANOUT_BENCH_DIR",
        "shards-fanout-bench-",
    )


def _git_state() -> dict[str, Any]:
    """The commit measured and whether ``django_shards/`` had uncommitted changes."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "django_shards"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "django_shards_changed": None}
    return {
        "commit": commit,
        "django_shards_changed": sorted(line[3:] for line in dirty if line.strip()),
    }


def _sleep_seconds(seconds: float) -> int:
    time.sleep(seconds)
    return 0


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    """SQLite: a ``SLEEP(seconds)`` function like MariaDB's, and unsynced writes (a
    throwaway test database: only the load gets faster)."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("SLEEP", 1, _sleep_seconds)
        connection.connection.execute("PRAGMA synchronous = OFF")


def _shard_names() -> list[str]:
    from django_shards.shardmap import get_map

    return [s.name for s in get_map("metrics").owning_shards]


def _close_worker_connections(workers: int) -> None:
    """Close the database connections of every thread of the fan-out executor.

    One task per worker thread, held at a barrier so that each thread runs exactly one.
    """
    from django.db import connections

    from django_shards.fanout import get_executor

    executor = get_executor()
    barrier = threading.Barrier(workers)

    def close() -> None:
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        connections.close_all()

    futures = [executor._executor.submit(close) for _ in range(workers)]
    for f in futures:
        f.result(timeout=30)


def _wait_for_replicas(timeout: float = 120.0) -> str:
    """MariaDB: the primaries replicate the test databases too; wait until the replica
    servers applied the load, so replication does not compete for CPU with the timings."""
    import environ
    import MySQLdb

    env = environ.Env()
    waited = []
    for i in range(3):
        primary_var, replica_var = f"S{i}_URL", f"S{i}_R1_URL"
        if not os.environ.get(replica_var):
            continue
        try:
            p, r = env.db(primary_var), env.db(replica_var)
            with MySQLdb.connect(
                host=p["HOST"], port=int(p["PORT"]), user=p["USER"], passwd=p["PASSWORD"]
            ) as conn:
                cur = conn.cursor()
                cur.execute("SELECT @@gtid_binlog_pos")
                (pos,) = cur.fetchone()
            started = time.perf_counter()
            with MySQLdb.connect(
                host=r["HOST"], port=int(r["PORT"]), user=r["USER"], passwd=r["PASSWORD"]
            ) as conn:
                cur = conn.cursor()
                cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [pos, timeout])
                (result,) = cur.fetchone()
            waited.append(
                f"p{i}: {'caught up' if result == 0 else 'timed out'} "
                f"in {time.perf_counter() - started:.1f}s"
            )
        except Exception as exc:  # noqa: BLE001 - informational only
            waited.append(f"p{i}: not checked ({exc.__class__.__name__})")
    return ", ".join(waited) or "no replicas configured"


def _seed_one_author_per_shard() -> dict[str, int]:
    """One Author row on each shard; shard name -> its pk."""
    import django_shards
    from tests.testapp.models import Author

    names = _shard_names()
    chosen: dict[str, Author] = {}
    for i in range(100_000):
        author = Author(email=f"fanout{i}@example.org", name=f"Fanout {i}", score=i)
        chosen.setdefault(django_shards.shard_for(Author, author.pk).name, author)
        if len(chosen) == len(names):
            break
    Author.objects.bulk_create(list(chosen.values()))
    return {name: a.pk for name, a in chosen.items()}


def _load_readings(rows: int, batch: int, seed: int = 3) -> dict[str, Any]:
    """``rows`` Reading rows through the sharded ``bulk_create`` (grouped by shard)."""
    from tests.testapp.models import Reading

    rng = random.Random(seed)
    started = time.perf_counter()
    done = 0
    while done < rows:
        n = min(batch, rows - done)
        Reading.objects.bulk_create(
            [Reading(sensor_id=rng.randrange(1_000_000), value=rng.random()) for _ in range(n)]
        )
        done += n
        if done % (batch * 10) == 0 or done == rows:
            _log(f"  loaded {done:,} / {rows:,} rows")
    elapsed = time.perf_counter() - started
    per_shard = {name: Reading.objects.on_shard(name).count() for name in _shard_names()}
    return {
        "rows": rows,
        "seconds": round(elapsed, 1),
        "rows_per_second": round(rows / elapsed),
        "per_shard": per_shard,
    }


# --- (a) parallelism -------------------------------------------------------------------


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def _time_singles(single: Callable[[str], list], names: list[str], out: dict[str, float]) -> None:
    for name in names:
        out[name], _ = _timed(lambda n=name: single(n))


def measure_parallel(
    label: str,
    fanout: Callable[[], list],
    single: Callable[[str], list],
    rounds: int,
    expect_rows: int | None,
    goal: float | None,
) -> dict[str, Any]:
    """Per round: the fan-out, and every shard alone; ratio fan-out / slowest shard."""
    names = _shard_names()
    fan_s: list[float] = []
    slowest_s: list[float] = []
    seq_s: list[float] = []
    per_shard: dict[str, list[float]] = {n: [] for n in names}
    for r in range(-WARMUP_ROUNDS, rounds):
        gc.collect()
        singles: dict[str, float] = {}
        order = names if r % 2 else names[::-1]
        if r % 2:
            _time_singles(single, order, singles)
            fan, rows = _timed(fanout)
        else:
            fan, rows = _timed(fanout)
            _time_singles(single, order, singles)
        if expect_rows is not None and len(rows) != expect_rows:
            raise RuntimeError(f"{label}: fan-out returned {len(rows)} rows, not {expect_rows}")
        if r < 0:
            continue
        fan_s.append(fan)
        slowest_s.append(max(singles.values()))
        seq_s.append(sum(singles.values()))
        for name, t in singles.items():
            per_shard[name].append(t)
    ratios = [f / s for f, s in zip(fan_s, slowest_s, strict=True)]
    speedups = [q / f for q, f in zip(seq_s, fan_s, strict=True)]
    median_ratio = statistics.median(ratios)
    return {
        "name": label,
        "rounds": rounds,
        "median_ratio": round(median_ratio, 4),
        "ratio_p10": round(_quantile(ratios, 0.1), 4),
        "ratio_p90": round(_quantile(ratios, 0.9), 4),
        "fanout_ms_median": round(statistics.median(fan_s) * 1000, 2),
        "slowest_shard_ms_median": round(statistics.median(slowest_s) * 1000, 2),
        "sequential_ms_median": round(statistics.median(seq_s) * 1000, 2),
        "sequential_over_slowest": round(
            statistics.median(q / s for q, s in zip(seq_s, slowest_s, strict=True)), 3
        ),
        "speedup_over_sequential": round(statistics.median(speedups), 3),
        "overhead_ms_median": round(
            statistics.median(f - s for f, s in zip(fan_s, slowest_s, strict=True)) * 1000, 2
        ),
        "per_shard_ms_median": {
            n: round(statistics.median(v) * 1000, 2) for n, v in per_shard.items()
        },
        "goal": goal,
        "pass": None if goal is None else median_ratio <= goal,
    }


# --- cheap fan-out: overhead ---------------------------------------------------------------


def _best_us(fn: Callable[[], Any], loops: int, repeat: int = 5) -> float:
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            started = time.perf_counter_ns()
            for _ in range(loops):
                fn()
            best = min(best, time.perf_counter_ns() - started)
    finally:
        gc.enable()
    return best / loops / 1000


def _set_conn_max_age(seconds: int | None, workers: int) -> dict[str, Any]:
    """Set ``CONN_MAX_AGE`` of the shard aliases (the dicts every thread's connection
    shares) and close the executor threads' connections so they reconnect under it.
    Returns the previous values."""
    from django.db import connections

    aliases = [a for a in connections if a != "default"]
    saved = {a: connections[a].settings_dict["CONN_MAX_AGE"] for a in aliases}
    for a in aliases:
        connections[a].settings_dict["CONN_MAX_AGE"] = seconds
    _close_worker_connections(workers)
    return saved


def measure_cheap(rounds: int, block: int, workers: int) -> dict[str, Any]:
    """``list(Author.objects.all())`` (one row per shard) against one shard's query and
    the N shard queries in a row; microseconds per call, median of per-round block means.

    Each round also runs the fan-out block with ``CONN_MAX_AGE = 0`` (Django's default)
    on the shard aliases: the executor's ``close_old_connections`` then closes every
    worker connection after its task, so each fan-out connects once per shard.
    """
    from django.db import connections

    from tests.testapp.models import Author

    names = _shard_names()
    objects = Author.objects
    max_age = connections[names[0]].settings_dict["CONN_MAX_AGE"]

    def fan() -> None:
        for _ in range(block):
            list(objects.all())

    def fan_reconnecting() -> float:
        _set_conn_max_age(0, workers)
        try:
            started = time.perf_counter()
            fan()
            elapsed = time.perf_counter() - started
        finally:
            _set_conn_max_age(max_age, workers)
            list(objects.all())  # reconnect the workers, untimed
        return elapsed

    def single() -> None:
        for i in range(block):
            list(objects.on_shard(names[i % len(names)]).all())

    def sequential() -> None:
        for _ in range(block):
            for name in names:
                list(objects.on_shard(name).all())

    if len(list(objects.all())) != len(names):
        raise RuntimeError("cheap query: expected one Author per shard")
    times: dict[str, list[float]] = {
        "fanout": [],
        "single": [],
        "sequential": [],
        "fanout_conn_max_age_0": [],
    }
    for r in range(-WARMUP_ROUNDS, rounds):
        gc.collect()
        gc.disable()
        try:
            order = [
                ("fanout", fan),
                ("single", single),
                ("sequential", sequential),
                ("fanout_conn_max_age_0", fan_reconnecting),
            ]
            if r % 2:
                order.reverse()
            for key, fn in order:
                t, value = _timed(fn)
                t = value if isinstance(value, float) else t
                if r >= 0:
                    times[key].append(t / block * 1e6)
        finally:
            gc.enable()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "query": "list(Author.objects.all())  (1 row per shard)",
        "rounds": rounds,
        "block": block,
        "conn_max_age": max_age,
        "fanout_us": round(med["fanout"], 1),
        "single_shard_us": round(med["single"], 1),
        "sequential_us": round(med["sequential"], 1),
        "fanout_conn_max_age_0_us": round(med["fanout_conn_max_age_0"], 1),
        "overhead_over_single_us": round(med["fanout"] - med["single"], 1),
        "fanout_over_single": round(med["fanout"] / med["single"], 3),
        "fanout_over_sequential": round(med["fanout"] / med["sequential"], 3),
        "samples_us": times,
    }


def measure_steps(loops: int) -> list[dict[str, Any]]:
    """Microseconds of each step of one cheap fan-out (internal API: best effort)."""
    from concurrent.futures import wait

    from django.db import close_old_connections, connections

    from django_shards import merge, shapes
    from django_shards.conf import get_config
    from django_shards.fanout import get_executor
    from django_shards.routing import read_alias
    from tests.testapp.models import Author

    qs = Author.objects.all()
    shards = qs._route()
    assert shards is not None
    spec = shapes.merge_spec(qs)
    shard_qs, order_names = shapes.per_shard_rows(qs, spec)
    targets = [(s, read_alias(s, None)) for s in shards]
    timeout = get_config().fanout_timeout_seconds
    executor = get_executor()
    per_shard = [list(shard_qs.using(alias)) for _, alias in targets]
    backend = merge.Backend.of(targets[0][1])

    def compile_all() -> None:
        for _, alias in targets:
            q = shard_qs.using(alias).query
            q.get_compiler(alias).as_sql()

    def execute_all_raw() -> None:
        # the SQL compiled once, then only executed and fetched on every shard (no models)
        sql, params = shard_qs.query.get_compiler(targets[0][1]).as_sql()
        for _, alias in targets:
            with connections[alias].cursor() as cur:
                cur.execute(sql, params)
                cur.fetchall()

    def one_shard_query() -> None:
        list(shard_qs.using(targets[0][1]))

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("qs._route()  [routing, config]", lambda: Author.objects.all()._route()),
        (
            "shapes.per_shard_rows(qs, merge_spec(qs))  [plan + clone]",
            lambda: shapes.per_shard_rows(qs, shapes.merge_spec(qs)),
        ),
        (f"read_alias() x {len(shards)}", lambda: [read_alias(s, None) for s in shards]),
        (f"compile SQL x {len(shards)}  [.using(a) + as_sql]", compile_all),
        (
            f"executor.run(no-op) over {len(shards)} shards  [threads, close_old_connections]",
            lambda: executor.run(targets, lambda alias: None, timeout=timeout),
        ),
        (
            f"raw ThreadPoolExecutor: {len(shards)} no-op futures + wait",
            lambda: wait([executor._executor.submit(int) for _ in targets]),
        ),
        ("close_old_connections()  [one call, all aliases open]", close_old_connections),
        (
            "connections[alias].close_if_unusable_or_obsolete()  [one alias]",
            lambda: connections[targets[0][1]].close_if_unusable_or_obsolete(),
        ),
        (
            f"merge.merge_rows({len(shards)} lists of 1 row)",
            lambda: merge.merge_rows(spec, order_names, per_shard, backend),
        ),
        ("one shard's query  [list(shard_qs.using(a))]", one_shard_query),
        (f"{len(shards)} shards' SQL executed raw, sequentially", execute_all_raw),
        ("whole fan-out  [list(Author.objects.all())]", lambda: list(Author.objects.all())),
    ]
    rows = []
    for name, fn in steps:
        try:
            fn()
            rows.append({"step": name, "us": round(_best_us(fn, loops), 2)})
        except Exception as exc:  # noqa: BLE001 - internal API may have moved on
            rows.append({"step": name, "us": None, "error": repr(exc)})

    # where a worker's time goes: its task time (FanoutResult.elapsed) vs the same query
    # in the calling thread, and the wall time of run() over the slowest task
    walls, slowest, means = [], [], []
    for _ in range(loops):
        started = time.perf_counter()
        results = executor.run(targets, lambda alias: list(shard_qs.using(alias)), timeout=timeout)
        walls.append(time.perf_counter() - started)
        slowest.append(max(r.elapsed for r in results))
        means.append(statistics.fmean(r.elapsed for r in results))
    rows.append(
        {
            "step": "executor.run(real task): wall",
            "us": round(statistics.median(walls) * 1e6, 2),
        }
    )
    rows.append(
        {
            "step": "  its slowest task (FanoutResult.elapsed)",
            "us": round(statistics.median(slowest) * 1e6, 2),
        }
    )
    rows.append(
        {
            "step": "  its mean task (FanoutResult.elapsed)",
            "us": round(statistics.median(means) * 1e6, 2),
        }
    )
    return rows


def count_worker_connections(workers: int) -> dict[str, Any]:
    """Open database connections held by the executor's threads (after the cheap runs)."""
    from django.db import connections

    from django_shards.fanout import get_executor

    executor = get_executor()
    barrier = threading.Barrier(workers)

    def count() -> int:
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        return sum(1 for c in connections.all(initialized_only=True) if c.connection is not None)

    counts = [
        f.result(timeout=30) for f in [executor._executor.submit(count) for _ in range(workers)]
    ]
    return {"total": sum(counts), "per_thread": counts}


class _ProfilingExecutor:
    """Wraps the fan-out executor's tasks in a cProfile per task (worker threads)."""

    def __init__(self) -> None:
        self.profiles: list[cProfile.Profile] = []
        self._lock = threading.Lock()

    def wrap(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            prof = cProfile.Profile()
            prof.enable()
            try:
                return fn()
            finally:
                prof.disable()
                with self._lock:
                    self.profiles.append(prof)

        return run


def profile_cheap(calls: int, out: Path) -> dict[str, Any]:
    """cProfile of ``list(Author.objects.all())`` fan-outs: the calling thread and, merged,
    every worker task. Writes the text report to ``out``."""
    from django_shards import fanout
    from tests.testapp.models import Author

    executor = fanout.get_executor()
    wrapper = _ProfilingExecutor()
    original_submit = executor.submit
    executor.submit = lambda fn: original_submit(wrapper.wrap(fn))  # type: ignore[method-assign]
    report = io.StringIO()
    summary: dict[str, Any] = {}
    try:
        main = cProfile.Profile()
        main.enable()
        for _ in range(calls):
            list(Author.objects.all())
        main.disable()
    finally:
        executor.submit = original_submit  # type: ignore[method-assign]
    for label, stats in (
        ("calling thread", pstats.Stats(main, stream=report)),
        (
            "worker tasks (merged)",
            pstats.Stats(*wrapper.profiles, stream=report) if wrapper.profiles else None,
        ),
    ):
        if stats is None:
            continue
        report.write(f"\n===== {label}: {calls} fan-outs =====\n")
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(40)
        total = stats.total_tt
        by_func = {
            (file, f"{Path(file).name}:{line}({func})"): (tt, ct)
            for (file, line, func), (_, _, tt, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
        }
        top_cum = sorted(
            ((k, v) for k, v in by_func.items() if f"django_shards{os.sep}" in k[0]),
            key=lambda kv: kv[1][1],
            reverse=True,
        )[:12]
        top_own = sorted(by_func.items(), key=lambda kv: kv[1][0], reverse=True)[:12]
        summary[label] = {
            "total_s": round(total, 4),
            "top_own_us_per_fanout": {k[1]: round(v[0] / calls * 1e6, 2) for k, v in top_own},
            "django_shards_cumulative_us_per_fanout": {
                k[1]: round(v[1] / calls * 1e6, 2) for k, v in top_cum
            },
        }
    out.write_text(report.getvalue())
    return summary


# --- (b) memory --------------------------------------------------------------------------


def _peak(fn: Callable[[], Any], repeat: int = 3) -> tuple[int, Any]:
    """Smallest tracemalloc peak of ``fn()`` over ``repeat`` runs (bytes above the start)."""
    fn()  # warm: worker threads, connections, caches
    best, value = None, None
    for _ in range(repeat):
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        value = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        best = peak if best is None else min(best, peak)
    assert best is not None
    return best, value


def measure_limit_memory(limit: int, rounds: int) -> dict[str, Any]:
    from tests.testapp.models import Reading

    names = _shard_names()
    fan_peak, _fan_rows = _peak(lambda: list(Reading.objects.order_by("-value")[:limit]))
    single_peaks = {
        name: _peak(lambda n=name: list(Reading.objects.on_shard(n).order_by("-value")[:limit]))[0]
        for name in names
    }
    # correctness: the merged top rows are the top of the union of each shard's top rows
    expected = sorted(
        (
            r.value
            for name in names
            for r in Reading.objects.on_shard(name).order_by("-value")[:limit]
        ),
        reverse=True,
    )[:limit]
    got = [r.value for r in list(Reading.objects.order_by("-value")[:limit])]
    if got != expected:
        raise RuntimeError("ordered merge returned the wrong rows")
    single = statistics.median(single_peaks.values())
    ratio = fan_peak / (len(names) * single)
    timing = measure_parallel(
        f'Reading.objects.order_by("-value")[:{limit}]  (real query, no index)',
        lambda: list(Reading.objects.order_by("-value")[:limit]),
        lambda n: list(Reading.objects.on_shard(n).order_by("-value")[:limit]),
        rounds,
        limit,
        None,
    )
    return {
        "query": f'list(Reading.objects.order_by("-value")[:{limit}])',
        "fanout_peak_bytes": fan_peak,
        "single_shard_peak_bytes_median": single,
        "single_shard_peak_bytes": single_peaks,
        "shards": len(names),
        "ratio_to_shards_x_single": round(ratio, 3),
        "goal": GOAL_MEMORY,
        "pass": ratio <= GOAL_MEMORY,
        "timing": timing,
    }


def measure_iterator_memory(chunk: int, rows: int, backend: str) -> dict[str, Any]:
    from django.db.models import QuerySet

    from tests.testapp.models import Reading

    names = _shard_names()
    one_chunk_peaks = {
        name: _peak(lambda n=name: list(Reading.objects.on_shard(n).order_by("pk")[:chunk]))[0]
        for name in names
    }
    one_chunk = statistics.median(one_chunk_peaks.values())
    bound = len(names) * one_chunk

    # the fan-out iterator to the end, peaks recorded on the way; "early" is once every
    # shard has paged at least twice (a shard holds two pages while it fetches the next)
    early = max(rows // 10, 3 * len(names) * chunk)
    checkpoints = {early: "early", max(1, rows // 2): "50%"}
    peaks: dict[str, int] = {}
    it = Reading.objects.iterator(chunk_size=chunk)
    next(it)  # warm (threads, connections): not measured
    del it
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    count = 0
    for _row in Reading.objects.iterator(chunk_size=chunk):
        count += 1
        if count in checkpoints:
            peaks[checkpoints[count]] = tracemalloc.get_traced_memory()[1] - base
    elapsed = time.perf_counter() - started
    peaks["100%"] = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    if count != rows:
        raise RuntimeError(f"iterator yielded {count} rows, not {rows}")
    ratio = peaks["100%"] / bound
    flat = peaks["100%"] / peaks["early"] if "early" in peaks and early < rows else None

    # Django's own iterator on one shard (plain QuerySet on the alias), for comparison
    name = names[0]
    shard_rows = Reading.objects.on_shard(name).count()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    started1 = time.perf_counter()
    n1 = sum(1 for _ in QuerySet(model=Reading).using(name).iterator(chunk_size=chunk))
    elapsed1 = time.perf_counter() - started1
    plain_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert n1 == shard_rows

    # throughput without tracemalloc, over the first rows only (time): the fan-out
    # iterator against the shards' plain Django iterators one after the other
    sample = min(rows, THROUGHPUT_ROWS)
    started = time.perf_counter()
    n_fan = sum(1 for _ in itertools.islice(Reading.objects.iterator(chunk_size=chunk), sample))
    fan_s = time.perf_counter() - started
    per = -(-sample // len(names))
    started = time.perf_counter()
    n_plain = sum(
        sum(
            1
            for _ in itertools.islice(
                QuerySet(model=Reading).using(n).iterator(chunk_size=chunk), per
            )
        )
        for n in names
    )
    plain_s = time.perf_counter() - started
    return {
        "query": f"Reading.objects.iterator(chunk_size={chunk})  (all rows; keyset pages on pk)",
        "rows": rows,
        "chunk_size": chunk,
        "one_chunk_peak_bytes_median": one_chunk,
        "one_chunk_peak_bytes": one_chunk_peaks,
        "shards_x_one_chunk_bytes": bound,
        "fanout_peak_bytes": peaks,
        "ratio_to_shards_x_chunk": round(ratio, 3),
        "early_checkpoint_rows": early,
        "peak_100_over_early": None if flat is None else round(flat, 3),
        "goal": GOAL_MEMORY,
        "goal_flat": GOAL_FLAT,
        "pass": ratio <= GOAL_MEMORY and (flat is None or flat <= GOAL_FLAT),
        "estimated_all_rows_bytes": round(one_chunk / chunk * rows),
        "traced_rows_per_second": round(rows / elapsed),
        "throughput_rows": sample,
        "rows_per_second": round(n_fan / fan_s),
        "plain_iterators_rows_per_second": round(n_plain / plain_s),
        "plain_one_shard": {
            "query": f"QuerySet(Reading).using({name!r}).iterator(chunk_size={chunk})",
            "rows": shard_rows,
            "peak_bytes": plain_peak,
            "rows_per_second_traced": round(shard_rows / elapsed1),
            "note": (
                "mysqlclient buffers the whole result (client-side cursor), so Django's "
                "own iterator holds the shard's rows as Python tuples"
                if backend == "mariadb"
                else "sqlite3 steps the cursor: Django's iterator holds about one chunk"
            ),
        },
    }


def measure_offset_pages(chunk: int) -> dict[str, Any]:
    """The ordered fan-out iterator pages each shard with OFFSET: the first page against
    the last page of one shard (``order_by("-value", "pk")``, no index on ``value``), a
    keyset page of the same ordering (``(value, pk)`` after a middle row) and a keyset
    page on ``pk`` (what the unordered iterator runs)."""
    from django.db.models import Q

    from tests.testapp.models import Reading

    name = _shard_names()[0]
    qs = Reading.objects.on_shard(name)
    shard_rows = qs.count()
    last_offset = max(0, (shard_rows // chunk) * chunk - chunk)
    ordered = qs.order_by("-value", "pk")
    mid_pk = qs.order_by("pk").values_list("pk", flat=True)[shard_rows // 2]

    def best_ms(fn: Callable[[], Any], repeat: int = 3) -> float:
        fn()
        return min(_timed(fn)[0] for _ in range(repeat)) * 1000

    mid = ordered[shard_rows // 2]  # a keyset page of the same ordering: after this row
    after_mid = qs.filter(Q(value__lt=mid.value) | Q(value=mid.value, pk__gt=mid.pk))
    first = best_ms(lambda: list(ordered[:chunk]))
    last = best_ms(lambda: list(ordered[last_offset : last_offset + chunk]))
    keyset_ordered = best_ms(lambda: list(after_mid.order_by("-value", "pk")[:chunk]))
    keyset = best_ms(lambda: list(qs.order_by("pk").filter(pk__gt=mid_pk)[:chunk]))
    pages = -(-shard_rows // chunk)
    shards = len(_shard_names())
    return {
        "shard": name,
        "shard_rows": shard_rows,
        "chunk_size": chunk,
        "ordered_first_page_ms": round(first, 2),
        "ordered_last_page_ms": round(last, 2),
        "ordered_keyset_page_ms": round(keyset_ordered, 2),
        "pk_keyset_page_ms": round(keyset, 2),
        "pages_per_shard": pages,
        "ordered_iterator_estimated_s": round(shards * pages * (first + last) / 2 / 1000, 1),
        "ordered_keyset_estimated_s": round(shards * pages * keyset_ordered / 1000, 1),
    }


# --- main ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("sqlite", "mariadb"),
        default=os.environ.get("SHARDS_DB", "sqlite"),
        help="databases (default: $SHARDS_DB or sqlite)",
    )
    parser.add_argument("--shards", type=int, default=8, help="shard aliases (default 8)")
    parser.add_argument("--workers", type=int, default=8, help="FANOUT_WORKERS (default 8)")
    parser.add_argument(
        "--conn-max-age", type=int, default=600, help="CONN_MAX_AGE of the aliases (default 600)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        help="Reading rows for the memory part (default: 500k on SQLite, 200k on MariaDB)",
    )
    parser.add_argument("--batch", type=int, default=20_000, help="rows per bulk_create call")
    parser.add_argument("--sleep", type=float, default=0.05, help="per-shard query seconds")
    parser.add_argument("--rounds", type=int, default=30, help="rounds of the (a) ratio")
    parser.add_argument("--heavy-rounds", type=int, default=7, help="rounds of the heavy query")
    parser.add_argument("--block", type=int, default=50, help="calls per cheap-query block")
    parser.add_argument("--cheap-rounds", type=int, default=15, help="rounds of cheap blocks")
    parser.add_argument("--loops", type=int, default=100, help="calls per step timing")
    parser.add_argument("--chunk", type=int, default=2000, help="iterator chunk_size")
    parser.add_argument("--limit", type=int, default=20, help="the ordered merge's limit")
    parser.add_argument("--skip-memory", action="store_true", help="only the timing parts")
    parser.add_argument("--profile", action="store_true", help="cProfile a cheap fan-out")
    parser.add_argument(
        "--output", type=Path, help="JSON path (default results/fanout-<backend>.json)"
    )
    args = parser.parse_args(argv)
    if args.shards < 2:
        parser.error("--shards must be at least 2")
    if args.rows is None:
        args.rows = 500_000 if args.backend == "sqlite" else 200_000
    output = args.output or RESULTS_DIR / f"fanout-{args.backend}.json"

    started = time.perf_counter()
    sqlite_dir = _configure(args)
    import django

    django.setup()
    from django.db import connections
    from django.db.backends.signals import connection_created
    from django.test.utils import setup_databases, teardown_databases

    from django_shards import context
    from django_shards.conf import get_config
    from django_shards.fanout import reset_executor

    connection_created.connect(_on_connection_created)
    config = get_config()
    print(
        f"django_shards fan-out benchmark: {args.backend}, Python {platform.python_version()}, "
        f"Django {django.get_version()}, {args.shards} shards, FANOUT_WORKERS "
        f"{config.fanout_workers}, CONN_MAX_AGE {args.conn_max_age}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    _log("creating the test databases")
    old_config = setup_databases(verbosity=0, interactive=False, serialized_aliases=set())
    report: dict[str, Any] = {
        "backend": args.backend,
        "python": platform.python_version(),
        "django": django.get_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "shards": args.shards,
        "fanout_workers": config.fanout_workers,
        "conn_max_age": args.conn_max_age,
        "git": _git_state(),
        "topology": {
            alias: (
                f"{connections[alias].settings_dict['HOST']}:"
                f"{connections[alias].settings_dict['PORT']}/"
                f"{connections[alias].settings_dict['NAME']}"
                if args.backend == "mariadb"
                else Path(connections[alias].settings_dict["NAME"]).name
            )
            for alias in connections
        },
    }
    try:
        setup_s = time.perf_counter() - started
        _seed_one_author_per_shard()
        context.clear_pins()

        # (a) parallelism
        _log(f"(a) SLEEP({args.sleep:g}) on each shard, {args.rounds} rounds")
        where = {"where": ["SLEEP(%s) = 0"], "params": [args.sleep]}
        from tests.testapp.models import Author

        parallel = measure_parallel(
            f"Author.objects.extra(where=['SLEEP({args.sleep:g}) = 0'])",
            lambda: list(Author.objects.extra(**where)),
            lambda n: list(Author.objects.on_shard(n).extra(**where)),
            args.rounds,
            args.shards,
            GOAL_PARALLEL,
        )
        report["parallel"] = parallel
        _table(
            f"(a) fan-out over the slowest single shard, median of {args.rounds} rounds "
            f"(goal <= {GOAL_PARALLEL}; sequential ~{args.shards})",
            [
                "query",
                "ratio",
                "p10-p90",
                "fan-out ms",
                "slowest ms",
                "sequential ms",
                "speed-up",
                "+ms",
                "result",
            ],
            [
                [
                    parallel["name"],
                    f"{parallel['median_ratio']:.3f}",
                    f"{parallel['ratio_p10']:.3f}-{parallel['ratio_p90']:.3f}",
                    f"{parallel['fanout_ms_median']:.1f}",
                    f"{parallel['slowest_shard_ms_median']:.1f}",
                    f"{parallel['sequential_ms_median']:.1f}",
                    f"{parallel['speedup_over_sequential']:.2f}x",
                    f"{parallel['overhead_ms_median']:+.2f}",
                    _verdict(parallel["pass"]),
                ]
            ],
        )

        # cheap fan-out: overhead
        _log(f"cheap fan-out: {args.cheap_rounds} rounds of {args.block} calls")
        cheap = measure_cheap(args.cheap_rounds, args.block, config.fanout_workers)
        steps = measure_steps(args.loops)
        held = count_worker_connections(config.fanout_workers)  # after many fan-outs
        report["cheap"] = {
            **cheap,
            "worker_connections": held,
            "steps": steps,
        }
        _table(
            f"Cheap fan-out ({cheap['query']}), us per call, median of {args.cheap_rounds} "
            f"rounds of {args.block}",
            ["call", "us", "fan-out / it"],
            [
                ["fan-out over all shards", f"{cheap['fanout_us']:.0f}", "1.00"],
                [
                    "one shard (on_shard)",
                    f"{cheap['single_shard_us']:.0f}",
                    f"{cheap['fanout_over_single']:.2f}",
                ],
                [
                    f"{args.shards} shards one after the other",
                    f"{cheap['sequential_us']:.0f}",
                    f"{cheap['fanout_over_sequential']:.2f}",
                ],
                [
                    "fan-out, CONN_MAX_AGE=0 (Django default)",
                    f"{cheap['fanout_conn_max_age_0_us']:.0f}",
                    f"{cheap['fanout_us'] / cheap['fanout_conn_max_age_0_us']:.2f}",
                ],
            ],
        )
        print(
            f"  overhead of a fan-out over one shard's query: "
            f"{cheap['overhead_over_single_us']:+.0f} us\n"
            f"  open connections held by the {config.fanout_workers} executor threads: "
            f"{held['total']} ({held['per_thread']} per thread) for {args.shards} shards"
        )
        _table(
            f"Steps of one cheap fan-out over {args.shards} shards (best of 5 loops of "
            f"{args.loops}; internal API)",
            ["step", "us"],
            [[s["step"], "error" if s["us"] is None else f"{s['us']:.1f}"] for s in steps],
        )
        if args.profile:
            prof_path = output.with_name(output.stem + "-profile.txt")
            profile = profile_cheap(min(args.loops, 500), prof_path)
            report["profile"] = profile
            for label, summary in profile.items():
                _table(
                    f"cProfile, {label}: own time, us per fan-out (profiled)",
                    ["function", "us"],
                    [[f, f"{us:.1f}"] for f, us in summary["top_own_us_per_fanout"].items()],
                )
            print(f"\n  full profile: {prof_path}")

        if not args.skip_memory:
            _log(f"(b) loading {args.rows:,} Reading rows (bulk_create, {args.batch:,} a call)")
            load = _load_readings(args.rows, args.batch)
            report["load"] = load
            if args.backend == "mariadb":
                load["replicas"] = _wait_for_replicas()
                _log(f"  replicas: {load['replicas']}")
            context.clear_pins()
            _log(f"  {load['rows_per_second']:,} rows/s; per shard {load['per_shard']}")

            _log(f"(b) ordered merge [:{args.limit}]")
            limit = measure_limit_memory(args.limit, args.heavy_rounds)
            _log(f"(b) iterator(chunk_size={args.chunk}) over {args.rows:,} rows")
            iterator = measure_iterator_memory(args.chunk, args.rows, args.backend)
            offset = measure_offset_pages(args.chunk)
            report["memory"] = {"limit": limit, "iterator": iterator, "offset_pages": offset}
            it_peaks = iterator["fanout_peak_bytes"]
            _table(
                f"(b) tracemalloc peak, Python allocations, {args.shards} shards, "
                f"{args.rows:,} rows (goal <= {GOAL_MEMORY} x shards x one shard's peak)",
                ["operation", "peak MB", "one shard MB", "x shards MB", "ratio", "result"],
                [
                    [
                        limit["query"],
                        f"{limit['fanout_peak_bytes'] / MB:.3f}",
                        f"{limit['single_shard_peak_bytes_median'] / MB:.3f}",
                        f"{args.shards * limit['single_shard_peak_bytes_median'] / MB:.3f}",
                        f"{limit['ratio_to_shards_x_single']:.3f}",
                        _verdict(limit["pass"]),
                    ],
                    [
                        f"Reading.objects.iterator(chunk_size={args.chunk}), all rows",
                        f"{it_peaks['100%'] / MB:.2f}",
                        f"{iterator['one_chunk_peak_bytes_median'] / MB:.2f}",
                        f"{iterator['shards_x_one_chunk_bytes'] / MB:.2f}",
                        f"{iterator['ratio_to_shards_x_chunk']:.3f}",
                        _verdict(iterator["pass"]),
                    ],
                ],
            )
            plain = iterator["plain_one_shard"]
            print(
                f"  iterator peak after {iterator['early_checkpoint_rows']:,} rows / 50% / 100%: "
                + " / ".join(
                    f"{it_peaks[k] / MB:.2f}" if k in it_peaks else "n/a"
                    for k in ("early", "50%", "100%")
                )
                + f" MB (end/early = {iterator['peak_100_over_early'] or 'n/a: too few rows'}, "
                f"goal <= {GOAL_FLAT}); all rows as models would be "
                f"~{iterator['estimated_all_rows_bytes'] / MB:.0f} MB\n"
                f"  one chunk = list(Reading.objects.on_shard(s).order_by('pk')[:{args.chunk}])\n"
                f"  Django's own iterator on one shard ({plain['rows']:,} rows): "
                f"{plain['peak_bytes'] / MB:.2f} MB ({plain['note']})\n"
                f"  throughput (first {iterator['throughput_rows']:,} rows): fan-out iterator "
                f"{iterator['rows_per_second']:,} rows/s, "
                f"plain per-shard iterators one after the other "
                f"{iterator['plain_iterators_rows_per_second']:,} rows/s"
            )
            print(
                f"  ordered iterator pages (OFFSET) on {offset['shard']} "
                f"({offset['shard_rows']:,} rows): first {offset['ordered_first_page_ms']:.1f} "
                f"ms, last {offset['ordered_last_page_ms']:.1f} ms; a keyset page on "
                f"(value, pk) {offset['ordered_keyset_page_ms']:.1f} ms, on pk "
                f"{offset['pk_keyset_page_ms']:.1f} ms.\n  A full ordered iterator spends "
                f"~{offset['ordered_iterator_estimated_s']:.0f} s in OFFSET page queries "
                f"(keyset pages: ~{offset['ordered_keyset_estimated_s']:.0f} s)"
            )
            t = limit["timing"]
            _table(
                "Heavy real query, fan-out over the slowest single shard (informational: "
                f"{os.cpu_count()} CPUs shared by the databases and Python)",
                ["query", "ratio", "fan-out ms", "slowest ms", "sequential ms", "speed-up"],
                [
                    [
                        t["name"],
                        f"{t['median_ratio']:.3f}",
                        f"{t['fanout_ms_median']:.1f}",
                        f"{t['slowest_shard_ms_median']:.1f}",
                        f"{t['sequential_ms_median']:.1f}",
                        f"{t['speedup_over_sequential']:.2f}x",
                    ]
                ],
            )

        goals = [("(a) parallel fan-out", parallel["pass"])]
        if "memory" in report:
            goals += [
                ("(b) ordered merge memory", report["memory"]["limit"]["pass"]),
                ("(b) iterator memory", report["memory"]["iterator"]["pass"]),
            ]
        overall = all(ok for _, ok in goals)
        elapsed = time.perf_counter() - started
        print("\n" + "  ".join(f"{name}: {_verdict(ok)}" for name, ok in goals))
        report.update(
            {
                "goals": {
                    "parallel_ratio": GOAL_PARALLEL,
                    "memory_ratio": GOAL_MEMORY,
                    "iterator_flat": GOAL_FLAT,
                },
                "pass": overall,
                "results": dict(goals),
                "setup_seconds": round(setup_s, 1),
                "seconds": round(elapsed, 1),
                "load_average": os.getloadavg(),
            }
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {output} in {elapsed:.0f} s (setup {setup_s:.0f} s)")
    finally:
        try:
            _close_worker_connections(get_config().fanout_workers)
        except Exception:  # noqa: BLE001 - best effort before dropping the databases
            pass
        reset_executor()
        connections.close_all()
        teardown_databases(old_config, verbosity=0)
        if sqlite_dir:
            shutil.rmtree(sqlite_dir, ignore_errors=True)
    return 0 if overall else 1


if __name__ == "__main__":
    sys.exit(main())
