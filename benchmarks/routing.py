"""Routing benchmark: what a sharded ``get(pk)`` costs over Django's own ``using(alias).get(pk)``.

Run from the project root::

    python -m benchmarks.routing                       # SQLite, ~1.5 min
    source /tmp/django_shards_mariadb/env
    python -m benchmarks.routing --backend mariadb     # real primaries and GTID replicas
    python -m benchmarks.routing --profile             # + steps and cProfile of the routed path
    python -m benchmarks.routing --instructions        # + instruction counts (valgrind)

Goal (the issue): routing overhead, the ratio of a sharded ``Author.objects.get(pk=k)`` to
a plain ``Author.objects.using(alias).get(pk=k)`` on the same database in one process,
is <= 1.03. With ``using()`` the sharded queryset skips routing, so the baseline is the
plain Django path on the alias the sharded call picked.

Method: Django's test-database machinery (``setup_databases``) creates throwaway databases
(``benchmarks.settings``: the test project's settings, ``test_bench_*`` names on MariaDB),
``--n`` authors are inserted, then every round times blocks of ``--block`` calls of each
sharded read and of its baseline on the same keys, in alternating order, with the garbage
collector off (ABBA order over rounds; ``--max-seconds`` caps the rounds on a busy
machine). The result is the median of the per-round ratios (machine noise moves both
halves of a round alike), with min/median microseconds per call. Also shown: ``total``
(sum over sum, which includes what the router does once a second, e.g. renewing the map
lease or probing replica health), ``min`` (fastest block over fastest block) and ``cpu``
(the median ratio of this thread's CPU time, immune to being descheduled; on SQLite all
the work is in-process, so it is the cleaner number when the machine is busy; on MariaDB
it leaves out the servers' time and overstates the ratio). Two sharded reads:

- ``eventual``: ``Author.objects.get(pk=k)`` (the default; a replica), baseline
  ``Author.objects.using(<that replica>).get(pk=k)``;
- ``strong``: ``Author.objects.strong().get(pk=k)`` (the primary), baseline
  ``Author.objects.using(<that primary>).get(pk=k)``.

Load counting (``django_shards.load``) is on, as in production, flushed every 10 s in the
background (the test settings' hour is overridden). Its cost, for information:
``eventual, counting off`` and ``strong, counting off`` are the two reads above with
``load.record`` swapped for a no-op (the clock reads that time each query stay), and
``counting on/off`` is the default read with counting against the same read without;
``--profile``'s steps table times ``load.record()`` itself.

For information: ``eventual()``, i.e. ``Author.objects.eventual().get(pk=k)`` against the
same baseline; ``qs.eventual()``, i.e. ``qs.eventual().get(pk=k)`` against
``qs.using(replica).get(pk=k)`` for ``qs = Author.objects.all()``, like for like in clones
(``using()`` clones the queryset once, and so does ``qs.eventual()``, while the default
``get()`` and the manager's ``strong()``/``eventual()``, which set the consistency on the
manager's new queryset, do not: the ``eventual``, ``strong`` and ``eventual()`` rows save
the clone the baseline makes); and ``Author.objects.using(primary)`` against Django's plain
``QuerySet`` on the same alias: what the ``ShardedQuerySet`` class costs when it does not
route. Then the pure
routing cost in microseconds: ``qs.db`` (and ``target_shards()`` where the query spans
shards) minus building the same queryset, for a key lookup, a foreign-key lookup, an
``__in`` and range predicates (range pruning).

On MariaDB, eventual reads go to the real replica servers by default (the test databases
replicate like any other; the benchmark waits for the replicas with ``MASTER_GTID_WAIT``);
``--replicas mirror`` uses Django's test mirrors instead (the replica alias then opens a
second connection to the primary). On SQLite a replica alias reads the primary's file.

``--instructions`` also counts instructions per call under valgrind's callgrind, in a child
process on the same test databases (each measured loop between two ``os.getppid()`` calls,
which make callgrind dump its counters): exact, and independent of the machine's load.

Prints tables and PASS/FAIL, writes ``benchmarks/results/routing-<backend>.json``
(``--profile`` also ``routing-<backend>-profile.txt``, ``--instructions``
``routing-<backend>-instructions.json``).
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.topology import databases_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 1.03
WARMUP_ROUNDS = 10


# --- output ----------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


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


# --- databases -------------------------------------------------------------------------


def _configure(backend: str) -> str | None:
    """Point Django at ``benchmarks.settings`` for ``backend``; the SQLite temp dir, if any."""
    os.environ["SHARDS_DB"] = backend
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    return databases_dir(
        backend, ("DATABASE_URL", "S0_URL", "S0_R1_URL"), "SHARDS_SQLITE_DIR", "shards-bench-"
    )


def _replica_aliases() -> dict[str, str]:
    """replica alias -> the primary alias it mirrors in tests."""
    from django.db import connections

    return {
        alias: connections[alias].settings_dict["TEST"]["MIRROR"]
        for alias in connections
        if connections[alias].settings_dict["TEST"].get("MIRROR")
    }


def _use_real_replicas(original: dict[str, dict[str, Any]]) -> None:
    """Undo Django's test mirrors: each replica alias reads its own server's copy of the
    primary's test database (created there by replication)."""
    from django.db import connections

    for alias, primary in _replica_aliases().items():
        conn = connections[alias]
        conn.close()
        conn.settings_dict = {
            **original[alias],
            "NAME": connections[primary].settings_dict["NAME"],
        }


def _wait_for_replicas(timeout: float = 30.0) -> None:
    """Block until every replica applied everything its primary committed (MariaDB GTID)."""
    from django.db import connections

    for replica, primary in _replica_aliases().items():
        if connections[replica].settings_dict is connections[primary].settings_dict:
            continue  # a test mirror: nothing to wait for
        with connections[primary].cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos")
            (pos,) = cur.fetchone()
        with connections[replica].cursor() as cur:
            cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [pos, timeout])
            (result,) = cur.fetchone()
        if result != 0:
            raise RuntimeError(f"replica {replica} did not catch up with {primary} ({pos})")


def _insert_authors(count: int) -> list[int]:
    from tests.testapp.models import Author

    authors = [Author(email=f"bench{i}@example.org", name=f"Bench {i}") for i in range(count)]
    for start in range(0, count, 500):
        Author.objects.bulk_create(authors[start : start + 500])
    return [a.pk for a in authors]


# --- the ratio -------------------------------------------------------------------------


def _run_block(fn: Callable[[Sequence[tuple[int, str]]], None], pairs: Any) -> tuple[int, int]:
    """Wall-clock and this thread's CPU nanoseconds of one block."""
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    fn(pairs)
    return time.perf_counter_ns() - wall, time.thread_time_ns() - cpu


def _not_counted(*args: Any, **kwargs: Any) -> None:
    """``load.record`` switched off: what the routed path costs without counting."""


def _without_counting(
    fn: Callable[[Sequence[tuple[int, str]]], None],
) -> Callable[[Sequence[tuple[int, str]]], None]:
    """``fn`` run with ``django_shards.load.record`` a no-op (the routed path calls it as
    ``load.record``, so swapping the module's attribute switches counting off; the clock
    reads that time each query stay)."""
    from django_shards import load

    def run(pairs: Sequence[tuple[int, str]]) -> None:
        counting = load.record
        load.record = _not_counted
        try:
            fn(pairs)
        finally:
            load.record = counting

    return run


def _comparisons() -> list[dict[str, Any]]:
    """(name, sharded/candidate call, baseline call, which alias the baseline uses)."""
    from django.db.models import QuerySet

    from tests.testapp.models import Author

    objects = Author.objects

    def sharded_eventual(pairs: Sequence[tuple[int, str]]) -> None:
        get = objects.get
        for key, _ in pairs:
            get(pk=key)

    def sharded_explicit_eventual(pairs: Sequence[tuple[int, str]]) -> None:
        eventual = objects.eventual
        for key, _ in pairs:
            eventual().get(pk=key)

    def sharded_strong(pairs: Sequence[tuple[int, str]]) -> None:
        strong = objects.strong
        for key, _ in pairs:
            strong().get(pk=key)

    every = objects.all()

    def sharded_queryset_eventual(pairs: Sequence[tuple[int, str]]) -> None:
        eventual = every.eventual
        for key, _ in pairs:
            eventual().get(pk=key)

    def baseline_queryset_using(pairs: Sequence[tuple[int, str]]) -> None:
        using = every.using
        for key, alias in pairs:
            using(alias).get(pk=key)

    def baseline_using(pairs: Sequence[tuple[int, str]]) -> None:
        using = objects.using
        for key, alias in pairs:
            using(alias).get(pk=key)

    def plain_queryset(pairs: Sequence[tuple[int, str]]) -> None:
        for key, alias in pairs:
            QuerySet(model=Author).using(alias).get(pk=key)

    return [
        {
            "name": "eventual",
            "sharded": "Author.objects.get(pk=k)",
            "baseline": "Author.objects.using(replica).get(pk=k)",
            "run": sharded_eventual,
            "base": baseline_using,
            "alias": "eventual",
            "goal": GOAL_RATIO,
        },
        {
            "name": "strong",
            "sharded": "Author.objects.strong().get(pk=k)",
            "baseline": "Author.objects.using(primary).get(pk=k)",
            "run": sharded_strong,
            "base": baseline_using,
            "alias": "strong",
            "goal": GOAL_RATIO,
        },
        {
            "name": "eventual, counting off",
            "sharded": "Author.objects.get(pk=k), load.record a no-op",
            "baseline": "Author.objects.using(replica).get(pk=k)",
            "run": _without_counting(sharded_eventual),
            "base": baseline_using,
            "alias": "eventual",
            "goal": None,
        },
        {
            "name": "strong, counting off",
            "sharded": "Author.objects.strong().get(pk=k), load.record a no-op",
            "baseline": "Author.objects.using(primary).get(pk=k)",
            "run": _without_counting(sharded_strong),
            "base": baseline_using,
            "alias": "strong",
            "goal": None,
        },
        {
            # the cost of counting itself: the same routed read with counting on and off
            "name": "counting on/off",
            "sharded": "Author.objects.get(pk=k)",
            "baseline": "Author.objects.get(pk=k), load.record a no-op",
            "run": sharded_eventual,
            "base": _without_counting(sharded_eventual),
            "alias": "eventual",
            "goal": None,
        },
        {
            "name": "eventual()",
            "sharded": "Author.objects.eventual().get(pk=k)",
            "baseline": "Author.objects.using(replica).get(pk=k)",
            "run": sharded_explicit_eventual,
            "base": baseline_using,
            "alias": "eventual",
            "goal": None,
        },
        {
            # like for like in clones: qs.eventual() clones the queryset once, as using()
            # does; the rows above make one clone fewer than their baseline (the default
            # get() makes none, the manager's strong()/eventual() set the manager's new
            # queryset in place)
            "name": "qs.eventual()",
            "sharded": "qs.eventual().get(pk=k)",
            "baseline": "qs.using(replica).get(pk=k)",
            "run": sharded_queryset_eventual,
            "base": baseline_queryset_using,
            "alias": "eventual",
            "goal": None,
        },
        {
            "name": "using() vs QuerySet",
            "sharded": "Author.objects.using(primary).get(pk=k)",
            "baseline": "QuerySet(Author).using(primary).get(pk=k)",
            "run": baseline_using,
            "base": plain_queryset,
            "alias": "strong",
            "goal": None,  # informational: the class's cost when it does not route
        },
    ]


def _aliases_used(keys: Sequence[int]) -> dict[str, dict[int, str]]:
    """For each key, the alias the eventual and the strong sharded read use, checked by
    running the read once and looking at the instance's ``_state.db``."""
    from tests.testapp.models import Author

    out: dict[str, dict[int, str]] = {"eventual": {}, "strong": {}}
    for key in keys:
        out["eventual"][key] = Author.objects.filter(pk=key).db
        out["strong"][key] = Author.objects.strong().filter(pk=key).db
        got_e = Author.objects.get(pk=key)._state.db
        got_s = Author.objects.strong().get(pk=key)._state.db
        if (got_e, got_s) != (out["eventual"][key], out["strong"][key]):
            raise RuntimeError(
                f"key {key}: qs.db says eventual={out['eventual'][key]} "
                f"strong={out['strong'][key]} but get() read {got_e}/{got_s}"
            )
    return out


def measure_ratios(
    keys: Sequence[int], rounds: int, block: int, max_seconds: float, seed: int = 7
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Per comparison: the ratios and per-call times; the aliases read; the rounds run
    (fewer than ``rounds`` when ``max_seconds`` ran out first)."""
    from django_shards import context

    context.clear_pins()  # the inserts pinned every primary for PIN_AFTER_WRITE_SECONDS
    aliases = _aliases_used(keys)
    comparisons = _comparisons()
    rng = random.Random(seed)
    times: dict[str, dict[str, list[int]]] = {
        c["name"]: {"run": [], "base": [], "run_cpu": [], "base_cpu": []} for c in comparisons
    }
    deadline = None
    done = 0
    for r in range(-WARMUP_ROUNDS, rounds):
        if r == 0:
            deadline = time.monotonic() + max_seconds
        elif deadline is not None and time.monotonic() > deadline and done >= 10:
            break
        sample = rng.sample(list(keys), min(block, len(keys)))
        if len(sample) < block:  # fewer keys than calls: repeat them
            sample = (sample * (block // len(sample) + 1))[:block]
        if r % 20 == 0:
            gc.collect()
        gc.disable()
        try:
            for comp in comparisons:
                pairs = [(k, aliases[comp["alias"]][k]) for k in sample]
                # ABBA over consecutive rounds: a drift in machine speed hits both alike
                order = ("run", "base") if r % 4 in (0, 3) else ("base", "run")
                for which in order:
                    wall, cpu = _run_block(comp[which], pairs)
                    if r >= 0:
                        times[comp["name"]][which].append(wall)
                        times[comp["name"]][which + "_cpu"].append(cpu)
        finally:
            gc.enable()
        done += r >= 0

    results = []
    for comp in comparisons:
        run, base = times[comp["name"]]["run"], times[comp["name"]]["base"]
        ratios = [a / b for a, b in zip(run, base, strict=True)]
        t = times[comp["name"]]
        cpu_ratios = [a / b for a, b in zip(t["run_cpu"], t["base_cpu"], strict=True)]
        run_us = [t / block / 1000 for t in run]
        base_us = [t / block / 1000 for t in base]
        median_ratio = statistics.median(ratios)
        min_ratio = min(run) / min(base)
        results.append(
            {
                "name": comp["name"],
                "sharded": comp["sharded"],
                "baseline": comp["baseline"],
                "median_ratio": round(median_ratio, 4),
                "ratio_p10": round(_quantile(ratios, 0.1), 4),
                "ratio_p90": round(_quantile(ratios, 0.9), 4),
                "total_ratio": round(sum(run) / sum(base), 4),
                "min_ratio": round(min_ratio, 4),
                "cpu_median_ratio": round(statistics.median(cpu_ratios), 4),
                "sharded_us_min": round(min(run_us), 2),
                "sharded_us_median": round(statistics.median(run_us), 2),
                "baseline_us_min": round(min(base_us), 2),
                "baseline_us_median": round(statistics.median(base_us), 2),
                "overhead_us_median": round(
                    statistics.median(a - b for a, b in zip(run_us, base_us, strict=True)), 2
                ),
                "goal": comp["goal"],
                "pass": None if comp["goal"] is None else median_ratio <= comp["goal"],
                "block_ns": {"sharded": run, "baseline": base},
                "block_cpu_ns": {"sharded": t["run_cpu"], "baseline": t["base_cpu"]},
            }
        )
    used = {level: sorted(set(by_key.values())) for level, by_key in aliases.items()}
    return results, used, done


# --- pure routing cost -----------------------------------------------------------------


MICRO_REPEAT = 6
MICRO_CHUNK = 25


def _best_us(
    *fns: Callable[[Any], object],
    items: Sequence[Any],
    repeat: int = MICRO_REPEAT,
    chunk: int = MICRO_CHUNK,
) -> list[float]:
    """Per function, microseconds per call: the fastest of many short windows of ``chunk``
    calls (``repeat`` passes over ``items``), in this thread's CPU time, GC off.

    The functions take turns window by window (in alternating order), so a slow spell of
    the machine does not favour one of them, and short windows make it likely that each
    function gets some windows with the machine to itself."""
    windows = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    best = [float("inf")] * len(fns)
    order = list(range(len(fns)))
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeat):
            for window in windows:
                order.reverse()
                for i in order:
                    fn = fns[i]
                    started = time.thread_time_ns()
                    for item in window:
                        fn(item)
                    best[i] = min(best[i], (time.thread_time_ns() - started) / len(window))
    finally:
        gc.enable()
    return [b / 1000 for b in best]


RoutingCase = tuple[str, str, Callable[[Any], Any], Callable[[Any], Any], Sequence[Any]]


def _routing_cases(keys: Sequence[int], loops: int) -> list[RoutingCase]:
    """(queryset, how it is resolved, build it, build and resolve it, the arguments)."""
    from django.db.models import QuerySet

    from tests.testapp.models import Author, Event, Post

    rng = random.Random(11)
    sample = [rng.choice(keys) for _ in range(loops)]
    in_lists = [rng.sample(list(keys), 10) for _ in range(loops)]
    accounts = [rng.randrange(0, 3000) for _ in range(loops)]

    return [
        (
            "Author.objects.filter(pk=k)",
            ".db (eventual: replica)",
            lambda k: Author.objects.filter(pk=k),
            lambda k: Author.objects.filter(pk=k).db,
            sample,
        ),
        (
            "Author.objects.strong().filter(pk=k)",
            ".db (strong: primary)",
            lambda k: Author.objects.strong().filter(pk=k),
            lambda k: Author.objects.strong().filter(pk=k).db,
            sample,
        ),
        (
            "Post.objects.filter(author_id=k)",
            ".db (foreign-key key)",
            lambda k: Post.objects.filter(author_id=k),
            lambda k: Post.objects.filter(author_id=k).db,
            sample,
        ),
        (
            "Author.objects.filter(pk__in=[10 keys])",
            ".target_shards()",
            lambda ks: Author.objects.filter(pk__in=ks),
            lambda ks: Author.objects.filter(pk__in=ks).target_shards(),
            in_lists,
        ),
        (
            "Event.objects.filter(account__gte=1500)",
            ".target_shards() (range: 2 of 3)",
            lambda _: Event.objects.filter(account__gte=1500),
            lambda _: Event.objects.filter(account__gte=1500).target_shards(),
            sample,
        ),
        (
            "Event.objects.filter(account__gte=2500)",
            ".db (range: 1 of 3)",
            lambda _: Event.objects.filter(account__gte=2500),
            lambda _: Event.objects.filter(account__gte=2500).db,
            sample,
        ),
        (
            "Event.objects.filter(account=a)",
            ".db (range key)",
            lambda a: Event.objects.filter(account=a),
            lambda a: Event.objects.filter(account=a).db,
            accounts,
        ),
        (
            "QuerySet(Author).filter(pk=k)",
            ".db (plain Django, router only)",
            lambda k: QuerySet(model=Author).filter(pk=k),
            lambda k: QuerySet(model=Author).filter(pk=k).db,
            sample,
        ),
    ]


def measure_routing_cost(keys: Sequence[int], loops: int) -> list[dict[str, Any]]:
    """``qs.db`` / ``target_shards()`` minus building the queryset, per call."""
    cases = _routing_cases(keys, loops)
    rows = []
    for query, call, build, resolve, items in cases:
        resolve(items[0])  # warm: connections, maps
        build_us, total_us = _best_us(build, resolve, items=items)
        rows.append(
            {
                "query": query,
                "call": call,
                "build_us": round(build_us, 2),
                "build_and_route_us": round(total_us, 2),
                "routing_us": round(total_us - build_us, 2),
            }
        )
    return rows


# --- instruction counts ----------------------------------------------------------------

ICOUNT_STATE_ENV = "ROUTING_ICOUNT_STATE"
#: a C function the measured code never calls: callgrind dumps its counters before each call
ICOUNT_MARKER = "os_getppid"


def _icount_child(calls: int) -> int:
    """Run under callgrind by :func:`measure_instructions`: each measured loop sits between
    two ``os.getppid()`` calls, so each loop's instructions land in a dump of their own."""
    state = json.loads(Path(os.environ[ICOUNT_STATE_ENV]).read_text())
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    import django
    from django.conf import settings

    # Under valgrind a second lasts ~50 times longer: what happens once a second (the map
    # lease, replica health probes, the load flush) would be counted ~50 times too often.
    # Leave it out.
    settings.DJANGO_SHARDS["MAP_LEASE_SECONDS"] = 1e9
    settings.DJANGO_SHARDS["LOAD_FLUSH_SECONDS"] = 1e9
    django.setup()
    from django.db import connections

    try:
        from django_shards import health

        probe = health.monitor.get
        health.monitor.get = lambda alias, role="replica", max_age=None: probe(alias, role, 1e9)
    except (ImportError, AttributeError):
        pass
    for alias, name in state["names"].items():  # the parent's test databases
        connections[alias].settings_dict["NAME"] = name

    from django_shards import context

    context.clear_pins()
    keys = state["keys"]
    aliases = _aliases_used(keys)
    rng = random.Random(5)
    sample = [rng.choice(keys) for _ in range(calls)]
    done: list[list[Any]] = []

    def measure(label: str, fn: Callable[[Any], Any], arg: Any) -> None:
        fn(arg)  # warm
        gc.collect()
        gc.disable()
        os.getppid()  # dump: everything since the last measurement
        fn(arg)
        os.getppid()  # dump: this measurement
        gc.enable()
        done.append([label, calls])

    for comp in _comparisons():
        pairs = [(k, aliases[comp["alias"]][k]) for k in sample]
        measure(f"{comp['name']}|run", comp["run"], pairs)
        measure(f"{comp['name']}|base", comp["base"], pairs)
    for query, call, build, resolve, items in _routing_cases(keys, calls):
        measure(f"{query}|{call}|build", lambda xs, f=build: [f(x) for x in xs], items)
        measure(f"{query}|{call}|route", lambda xs, f=resolve: [f(x) for x in xs], items)
    Path(state["labels"]).write_text(json.dumps(done))
    connections.close_all()
    return 0


def measure_instructions(backend: str, keys: Sequence[int], calls: int) -> dict[str, Any] | None:
    """Instructions per call of each comparison and routing case, counted by callgrind in a
    child process on this run's test databases: exact and independent of machine load.
    The child leaves out what happens once a second; on MariaDB the servers' work is not
    counted (client-side instructions only)."""
    from django.db import connections

    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("\n  --instructions: valgrind is not installed (apt-get install valgrind)")
        return None
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="routing-icount-") as tmp:
        state = {
            "names": {alias: connections[alias].settings_dict["NAME"] for alias in connections},
            "keys": list(keys[:200]),
            "labels": str(Path(tmp) / "labels.json"),
        }
        connections.close_all()
        (Path(tmp) / "state.json").write_text(json.dumps(state))
        cmd = [
            valgrind,
            "--tool=callgrind",
            f"--dump-before={ICOUNT_MARKER}",
            f"--callgrind-out-file={tmp}/cg.%p",
            sys.executable,
            "-m",
            "benchmarks.routing",
            "--backend",
            backend,
            "--icount-child",
            str(calls),
        ]
        env = {**os.environ, ICOUNT_STATE_ENV: str(Path(tmp) / "state.json")}
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        labels_path = Path(state["labels"])
        if proc.returncode != 0 or not labels_path.exists():
            print(f"\n  --instructions: the callgrind run failed:\n{proc.stderr[-3000:]}")
            return None
        labels = json.loads(labels_path.read_text())
        dumps = {int(p.name.rsplit(".", 1)[1]): p for p in Path(tmp).glob("cg.*.*")}
        if len(dumps) < 2 * len(labels):
            print(
                f"\n  --instructions: callgrind wrote {len(dumps)} dumps for {len(labels)} "
                f"measurements: is {ICOUNT_MARKER} a symbol of this Python build?"
            )
            return None
        per_call: dict[str, float] = {}
        for n, (label, count) in enumerate(labels, start=1):
            text = dumps[2 * n].read_text()
            total = next(
                int(line.split()[1]) for line in text.splitlines() if line.startswith("totals:")
            )
            per_call[label] = total / count
    comparisons = []
    for comp in _comparisons():
        run, base = per_call[f"{comp['name']}|run"], per_call[f"{comp['name']}|base"]
        comparisons.append(
            {
                "name": comp["name"],
                "sharded": round(run),
                "baseline": round(base),
                "ratio": round(run / base, 4),
                "extra": round(run - base),
                "goal": comp["goal"],
                "pass": None if comp["goal"] is None else run / base <= comp["goal"],
            }
        )
    routing = []
    for query, call, *_ in _routing_cases(keys, 1):
        build, route = per_call[f"{query}|{call}|build"], per_call[f"{query}|{call}|route"]
        routing.append(
            {
                "query": query,
                "call": call,
                "build": round(build),
                "build_and_route": round(route),
                "routing": round(route - build),
            }
        )
    return {
        "calls": calls,
        "seconds": round(seconds, 1),
        "comparisons": comparisons,
        "routing_cost": routing,
    }


def _print_instructions(result: dict[str, Any]) -> None:
    _table(
        f"Instructions per call (callgrind, {result['calls']} calls each; client side only on "
        f"MariaDB; goal <= {GOAL_RATIO})",
        ["read", "sharded", "baseline", "ratio", "extra", "result"],
        [
            [
                r["name"],
                f"{r['sharded']:,}",
                f"{r['baseline']:,}",
                f"{r['ratio']:.4f}",
                f"{r['extra']:+,}",
                "info" if r["pass"] is None else _verdict(r["pass"]),
            ]
            for r in result["comparisons"]
        ],
    )
    _table(
        "Routing cost in instructions per call (routing = build+route - build)",
        ["queryset", "resolved by", "build", "build+route", "routing"],
        [
            [
                r["query"],
                r["call"],
                f"{r['build']:,}",
                f"{r['build_and_route']:,}",
                f"{r['routing']:,}",
            ]
            for r in result["routing_cost"]
        ],
    )


# --- profile ---------------------------------------------------------------------------


def _breakdown(keys: Sequence[int], loops: int) -> list[dict[str, Any]]:
    """Microseconds of each step of the routed path (internal API: best effort)."""
    from django.db import connections

    from django_shards import context, load, routing
    from django_shards.conf import get_config
    from django_shards.keys import key_for_model
    from django_shards.replicas import pool
    from django_shards.shardmap import get_map, registry
    from django_shards.where import shards_from_where
    from tests.testapp.models import Author

    sk = key_for_model(Author)
    shard_map = get_map(sk.group)
    sample = [keys[i % len(keys)] for i in range(loops)]
    shards = [shard_map.shard_for_key(sk.normalize(k)) for k in sample]
    querysets = [Author.objects.filter(pk=k) for k in sample]
    steps: list[tuple[str, Callable[[Any], Any], Sequence[Any]]] = [
        ("get_config()", lambda _: get_config(), sample),
        ("key_for_model(Author)", lambda _: key_for_model(Author), sample),
        ("get_map(group)  [lease check]", lambda _: get_map("users"), sample),
        ("ShardKey.normalize(k)", sk.normalize, sample),
        ("ShardMap.shard_for_key(k)", shard_map.shard_for_key, sample),
        (
            "shards_from_where(qs.query.where)",
            lambda qs: shards_from_where(qs.query.where, qs.query.base_table, sk, shard_map),
            querysets,
        ),
        ("ShardMap.owning_shards", lambda _: shard_map.owning_shards, sample),
        ("qs._target_shards()", lambda qs: qs._target_shards(), querysets),
        ("routing.read_alias(shard)  [eventual]", routing.read_alias, shards),
        ("routing.read_alias(shard, 'strong')", lambda s: routing.read_alias(s, "strong"), shards),
        ("pool.choose(shard)", pool.choose, shards),
        ("context.pinned(primary)", lambda s: context.pinned(s.primary), shards),
        (
            "connections[primary].in_atomic_block",
            lambda s: connections[s.primary].in_atomic_block,
            shards,
        ),
        (
            "ShardMap.shard_for_alias(replica)",
            lambda s: shard_map.shard_for_alias(s.replicas[-1]),
            shards,
        ),
        ("qs.db  [whole routing]", lambda qs: qs.db, querysets),
        (
            "load.record(group, shard, rows=1, seconds=s, point=k)",
            lambda k: load.record("users", "s0", rows=1, seconds=0.0002, point=k),
            sample,
        ),
        ("time.perf_counter()  [x2 per counted query]", lambda _: time.perf_counter(), sample),
    ]
    rows = []
    for name, fn, items in steps:
        try:
            fn(items[0])
            rows.append({"step": name, "us": round(_best_us(fn, items=items)[0], 3)})
        except Exception as exc:  # noqa: BLE001 - internal API may have moved on
            rows.append({"step": name, "us": None, "error": repr(exc)})
    # one lease renewal: a catalog query per group every MAP_LEASE_SECONDS
    started = time.perf_counter_ns()
    for _ in range(50):
        registry.refresh("users")
    refresh_us = (time.perf_counter_ns() - started) / 50 / 1000  # wall: it waits on the catalog
    lease = get_config().map_lease_seconds
    rows.append(
        {
            "step": f"map lease renewal (catalog read, every {lease:g} s per group)",
            "us": round(refresh_us, 1),
        }
    )
    return rows


def profile_sharded(keys: Sequence[int], calls: int, out: Path, runs: int = 3) -> dict[str, Any]:
    """cProfile of the sharded eventual get and of ``qs.db``; full listings to ``out``.

    Per django_shards function: calls per operation (exact), and own and cumulative
    microseconds per operation, the minimum over ``runs`` profiles (cProfile's clock is
    wall time, so a run that was descheduled inside a function overstates it).
    """
    from tests.testapp.models import Author

    sample = [keys[i % len(keys)] for i in range(calls)]
    report = io.StringIO()
    summary: dict[str, Any] = {}
    for label, fn in (
        ("Author.objects.get(pk=k) [eventual]", lambda k: Author.objects.get(pk=k)),
        ("Author.objects.filter(pk=k).db", lambda k: Author.objects.filter(pk=k).db),
    ):
        per_fn: dict[str, list[tuple[int, float, float]]] = {}
        totals = []
        for run in range(runs):
            prof = cProfile.Profile()
            gc.collect()
            gc.disable()
            try:
                prof.enable()
                for k in sample:
                    fn(k)
                prof.disable()
            finally:
                gc.enable()
            stats = pstats.Stats(prof, stream=report)
            totals.append(stats.total_tt)  # type: ignore[attr-defined]
            if run == 0:
                report.write(f"\n===== {label}: {calls} calls =====\n")
                stats.sort_stats("tottime").print_stats(30)
                stats.sort_stats("cumulative").print_stats("django_shards", 40)
            for (file, line, func), (_, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
                if "django_shards" in file:
                    name = f"{Path(file).name}:{line}({func})"
                    per_fn.setdefault(name, []).append((nc, tt, ct))
        rows = {
            name: {
                "calls_per_op": round(samples[0][0] / calls, 2),
                "own_us": round(min(s[1] for s in samples) / calls * 1e6, 3),
                "cum_us": round(min(s[2] for s in samples) / calls * 1e6, 3),
            }
            for name, samples in per_fn.items()
        }
        top = dict(sorted(rows.items(), key=lambda kv: kv[1]["own_us"], reverse=True)[:18])
        summary[label] = {
            "profiled_us_per_op": round(min(totals) / calls * 1e6, 1),
            "django_shards_own_us_per_op": round(sum(r["own_us"] for r in rows.values()), 1),
            "top": top,
        }
    out.write_text(report.getvalue())
    return summary


def _source_state() -> dict[str, Any]:
    """The commit measured, and whether django_shards had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(
                ["git", *cmd], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "django_shards_dirty": bool(git("status", "--porcelain", "--", "django_shards")),
    }


# --- main ------------------------------------------------------------------------------


def _run_timing(args: argparse.Namespace, keys: Sequence[int], output: Path) -> dict[str, Any]:
    """The timed parts: ratios, routing cost, and with ``--profile`` steps and cProfile."""
    ratios, aliases_used, rounds = measure_ratios(keys, args.rounds, args.block, args.max_seconds)
    _table(
        f"Sharded get(pk) / using(alias).get(pk) on the same alias, median of {rounds} "
        f"rounds of {args.block} calls (goal <= {GOAL_RATIO})",
        [
            "read",
            "ratio",
            "p10-p90",
            "total",
            "min",
            "cpu ratio",
            "sharded us min/med",
            "baseline us min/med",
            "+us/call",
            "result",
        ],
        [
            [
                r["name"],
                f"{r['median_ratio']:.4f}",
                f"{r['ratio_p10']:.3f}-{r['ratio_p90']:.3f}",
                f"{r['total_ratio']:.4f}",
                f"{r['min_ratio']:.4f}",
                f"{r['cpu_median_ratio']:.4f}",
                f"{r['sharded_us_min']:.1f} / {r['sharded_us_median']:.1f}",
                f"{r['baseline_us_min']:.1f} / {r['baseline_us_median']:.1f}",
                f"{r['overhead_us_median']:+.1f}",
                "info" if r["pass"] is None else _verdict(r["pass"]),
            ]
            for r in ratios
        ],
    )
    for r in ratios:
        print(f"  {r['name']}: {r['sharded']}  vs  {r['baseline']}")
    print(f"  aliases read: eventual {aliases_used['eventual']}, strong {aliases_used['strong']}")

    routing_cost = measure_routing_cost(keys, args.loops)
    _table(
        f"Pure routing cost: CPU us per call, fastest window of {MICRO_CHUNK} calls, "
        f"{MICRO_REPEAT} x {args.loops} calls (routing = build+route - build)",
        ["queryset", "resolved by", "build us", "build+route us", "routing us"],
        [
            [
                r["query"],
                r["call"],
                f"{r['build_us']:.2f}",
                f"{r['build_and_route_us']:.2f}",
                f"{r['routing_us']:.2f}",
            ]
            for r in routing_cost
        ],
    )

    profile: dict[str, Any] | None = None
    breakdown: list[dict[str, Any]] | None = None
    if args.profile:
        breakdown = _breakdown(keys, args.loops)
        _table(
            f"Steps of the routed path: CPU us per call, fastest window of {MICRO_CHUNK} "
            "calls (internal API)",
            ["step", "us/call"],
            [[b["step"], "error" if b["us"] is None else f"{b['us']:.3f}"] for b in breakdown],
        )
        prof_path = output.with_name(output.stem + "-profile.txt")
        profile = profile_sharded(keys, min(args.loops, 5000), prof_path)
        for label, summary in profile.items():
            _table(
                f"cProfile of {label}: django_shards functions by own time (profiled: "
                f"{summary['profiled_us_per_op']:.0f} us/op, of which django_shards' own "
                f"code {summary['django_shards_own_us_per_op']:.0f}; the profiler inflates "
                "small functions, so rank by these, don't add them up)",
                ["function", "calls/op", "own us/op", "cum us/op"],
                [
                    [f, f"{r['calls_per_op']:g}", f"{r['own_us']:.2f}", f"{r['cum_us']:.2f}"]
                    for f, r in summary["top"].items()
                ],
            )
        print(f"\n  full profile: {prof_path}")
    goal_rows = [r for r in ratios if r["pass"] is not None]
    return {
        "pass": all(r["pass"] for r in goal_rows),
        "verdict_detail": ", ".join(f"{r['name']} {r['median_ratio']:.4f}" for r in goal_rows),
        "rounds": rounds,
        "ratios": ratios,
        "aliases_read": aliases_used,
        "routing_cost": routing_cost,
        "breakdown": breakdown,
        "profile": profile,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("sqlite", "mariadb"),
        default=os.environ.get("SHARDS_DB", "sqlite"),
        help="databases (default: $SHARDS_DB or sqlite)",
    )
    parser.add_argument("--n", type=int, default=1000, help="Author rows inserted (default 1000)")
    parser.add_argument("--rounds", type=int, default=500, help="timed rounds (default 500)")
    parser.add_argument("--block", type=int, default=20, help="calls per block (default 20)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="stop the rounds after this long (default 60; on a busy machine)",
    )
    parser.add_argument("--loops", type=int, default=1000, help="calls per routing-cost loop")
    parser.add_argument(
        "--replicas",
        choices=("real", "mirror"),
        default="real",
        help="MariaDB: eventual reads on the replica servers (real) or test mirrors",
    )
    parser.add_argument("--profile", action="store_true", help="also profile the sharded path")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per call under valgrind (exact; ~3 min more)",
    )
    parser.add_argument(
        "--skip-timing",
        action="store_true",
        help="with --instructions: count instructions only (for a busy machine)",
    )
    parser.add_argument(
        "--icount-calls", type=int, default=100, help="calls per instruction count (default 100)"
    )
    parser.add_argument("--icount-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--output", type=Path, help="JSON path (default results/routing-<backend>.json)"
    )
    args = parser.parse_args(argv)
    if args.icount_child is not None:
        os.environ["SHARDS_DB"] = args.backend
        return _icount_child(args.icount_child)
    if args.skip_timing and not args.instructions:
        parser.error("--skip-timing needs --instructions")
    output = args.output or RESULTS_DIR / f"routing-{args.backend}.json"

    started = time.perf_counter()
    sqlite_dir = _configure(args.backend)
    import django
    from django.conf import settings

    # the test settings flush the load once an hour (the tests flush themselves); time the
    # routed path with the default flush, in the background every 10 s, as in production
    settings.DJANGO_SHARDS["LOAD_FLUSH_SECONDS"] = 10

    django.setup()
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    original = {alias: copy.deepcopy(connections[alias].settings_dict) for alias in connections}
    replicas = "mirror" if args.backend == "sqlite" else args.replicas
    print(
        f"django_shards routing benchmark: {args.backend}, Python {platform.python_version()}, "
        f"Django {django.get_version()}, {args.n} authors, "
        + ("" if args.skip_timing else f"{args.rounds} rounds x {args.block} calls, ")
        + f"replicas: {replicas}, load average {os.getloadavg()[0]:.2f}"
    )
    if not args.skip_timing and os.getloadavg()[0] > (os.cpu_count() or 1):
        print(
            f"  warning: load average above {os.cpu_count()} CPUs: wall-clock ratios are noisy; "
            "compare the cpu ratio (SQLite), count instructions (--instructions) or run "
            "again when the machine is idle"
        )
    old_config = setup_databases(verbosity=0, interactive=False)
    try:
        if replicas == "real":
            _use_real_replicas(original)
        setup_s = time.perf_counter() - started
        keys = _insert_authors(args.n)
        if args.backend == "mariadb":
            _wait_for_replicas()
        report: dict[str, Any] = {
            "backend": args.backend,
            "source": _source_state(),
            "replicas": replicas,
            "python": platform.python_version(),
            "django": django.get_version(),
            "machine": platform.machine(),
            "authors": args.n,
            "goal_ratio": GOAL_RATIO,
        }
        timing = None if args.skip_timing else _run_timing(args, keys, output)
        instructions = None
        if args.instructions:
            instructions = measure_instructions(args.backend, keys, args.icount_calls)
            if instructions is not None:
                _print_instructions(instructions)
        elapsed = time.perf_counter() - started
        print()
        if timing is not None:
            print(
                f"routing overhead goal (median time ratio <= {GOAL_RATIO}): "
                f"{_verdict(timing['pass'])}  ({timing.pop('verdict_detail')})"
            )
        if instructions is not None:
            rows = [r for r in instructions["comparisons"] if r["pass"] is not None]
            print(
                f"routing overhead in instructions (ratio <= {GOAL_RATIO}): "
                f"{_verdict(all(r['pass'] for r in rows))}  ("
                + ", ".join(f"{r['name']} {r['ratio']:.4f}" for r in rows)
                + ")"
            )
        common = {
            "setup_seconds": round(setup_s, 1),
            "seconds": round(elapsed, 1),
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        if timing is not None:
            timing_report = {
                **report,
                **timing,
                "block": args.block,
                "loops": args.loops,
                "instructions": instructions,
                **common,
            }
            output.write_text(json.dumps(timing_report, indent=2) + "\n")
            print(f"wrote {output}")
        if instructions is not None:
            icount_path = output.with_name(output.stem + "-instructions.json")
            icount_path.write_text(
                json.dumps({**report, "instructions": instructions, **common}, indent=2) + "\n"
            )
            print(f"wrote {icount_path}")
        print(f"in {elapsed:.0f} s (setup {setup_s:.0f} s)")
    finally:
        from django_shards import load

        load.flush()  # now, while the test catalog exists (not at exit, once it is gone)
        connections.close_all()
        teardown_databases(old_config, verbosity=0)
        if sqlite_dir:
            shutil.rmtree(sqlite_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
