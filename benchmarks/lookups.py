"""Lookup-index benchmark: a read by a looked-up value against a sharded ``get(pk)`` and a fan-out.

Run from the project root::

    python -m benchmarks.lookups                           # SQLite, 8 shards, for information
    source /tmp/django_shards_mariadb/env
    SHARDS_TEST_SUFFIX=lkbench python -m benchmarks.lookups --backend mariadb --shards 8 4

Goal (issue 14): a read by a looked-up value, ``Member.objects.strong().get(email=v)`` (one
read of the lookup index on ``LOOKUP_ALIAS``, then one query on the owner's shard), takes
at most 2.5 x a sharded ``Member.objects.strong().get(pk=k)`` (one query), measured on
MariaDB in one process, and the ratio does not grow with the number of shards.

Three reads of the same random existing members, ``Member`` being
``ShardedManager(key="id", lookups=["email", "handle"])`` with ``email``
unique:

- ``lookup``: ``Member.objects.strong().get(email=v)``, routed by the index;
- ``fan-out``: the very same call with ``django_shards.lookup_index.shards_for`` swapped for
  a function that returns None (as for a field without a lookup), so it runs on all N
  shards through the fan-out executor;
- ``get(pk)``: ``Member.objects.strong().get(pk=k)``, the sharded read by key.

Reported: lookup / get(pk) (the goal), fan-out / get(pk) and lookup / fan-out.

Why ``strong()``: the benchmark's topology (``benchmarks.lookup_settings``) has primaries
only, as the MariaDB topology has replicas for its six ``s<i>`` databases, not for eight
shard databases of one group; and the index is always read on ``LOOKUP_ALIAS``'s connection
(the catalog's primary here). With every read on a primary the three reads differ only in
what the issue is about: the index read and the shards touched, not in replica choice.

Method (as ``benchmarks/routing.py``): Django's test-database machinery
(``setup_databases``) creates throwaway databases, ``--n`` members are inserted (through
the ORM, so the index is written as in production), a check counts the queries each read
makes per alias, then every round times a block of ``--block`` calls of each of the three
reads on the same random members, in the order A B C in even rounds and C B A in odd ones,
with the garbage collector off (``--max-seconds`` caps the rounds). The result is the
median of the per-round ratios, with p10-p90, sum over sum, and median microseconds per
call. ``--shards`` runs each shard count in a process of its own (the settings are read
once per process) and prints the ratios side by side.

On MariaDB the topology has three primary servers for ``S0_URL`` .. ``S5_URL``, so the N
shard databases (distinct names) are spread over them round-robin; the output lists where
each alias lives. Prints tables and PASS/FAIL, writes
``benchmarks/results/lookups-<backend>-<N>shards.json`` per shard count.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.routing import _quantile, _source_state, _table, _verdict
from benchmarks.topology import databases_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GOAL_RATIO = 2.5
WARMUP_ROUNDS = 5
READS = ("lookup", "fan-out", "get(pk)")
RATIOS = (("lookup", "get(pk)"), ("fan-out", "get(pk)"), ("lookup", "fan-out"))


# --- setup -----------------------------------------------------------------------------


def _configure(backend: str, shards: int) -> str | None:
    """Point Django at ``benchmarks.lookup_settings``; the SQLite temp dir, if any."""
    os.environ["LOOKUP_BENCH_BACKEND"] = backend
    os.environ["LOOKUP_BENCH_SHARDS"] = str(shards)
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.lookup_settings"
    return databases_dir(
        backend, ("DATABASE_URL", "S0_URL"), "LOOKUP_BENCH_DIR", "shards-lookup-bench-"
    )


def _insert_members(count: int) -> list[tuple[int, str]]:
    """``count`` members through the ORM (the index entries with them): (pk, email)."""
    from tests.testapp.models import Member

    members = [Member(email=f"lk{i}@example.org", handle=f"lk{i}") for i in range(count)]
    for start in range(0, count, 500):
        Member.objects.bulk_create(members[start : start + 500])
    return [(m.pk, m.email) for m in members]


def _no_index(*args: Any, **kwargs: Any) -> None:
    """``lookup_index.shards_for`` for the fan-out half: the filters name no looked-up value."""
    return None


@contextlib.contextmanager
def _index_off() -> Iterator[None]:
    from django_shards import lookup_index

    shards_for = lookup_index.shards_for
    lookup_index.shards_for = _no_index
    try:
        yield
    finally:
        lookup_index.shards_for = shards_for


def _reads() -> dict[str, Callable[[Sequence[tuple[int, str]]], None]]:
    from tests.testapp.models import Member

    objects = Member.objects

    def lookup(pairs: Sequence[tuple[int, str]]) -> None:
        strong = objects.strong
        for _, email in pairs:
            strong().get(email=email)

    def fanout(pairs: Sequence[tuple[int, str]]) -> None:
        with _index_off():
            lookup(pairs)

    def by_pk(pairs: Sequence[tuple[int, str]]) -> None:
        strong = objects.strong
        for key, _ in pairs:
            strong().get(pk=key)

    return {"lookup": lookup, "fan-out": fanout, "get(pk)": by_pk}


@contextlib.contextmanager
def _queries_per_alias() -> Iterator[dict[str, int]]:
    """{alias: queries} on every connection of every thread (the fan-out uses workers)."""
    from django.db.backends.utils import CursorWrapper

    counts: dict[str, int] = {}
    lock = threading.Lock()
    original = CursorWrapper._execute_with_wrappers  # type: ignore[attr-defined]

    def counted(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
        if "testapp_member" in str(sql) or "lookupentry" in str(sql):
            with lock:
                counts[self.db.alias] = counts.get(self.db.alias, 0) + 1
        return original(self, sql, *args, **kwargs)

    CursorWrapper._execute_with_wrappers = counted  # type: ignore[attr-defined]
    try:
        yield counts
    finally:
        CursorWrapper._execute_with_wrappers = original  # type: ignore[attr-defined]


def check_reads(members: Sequence[tuple[int, str]], shards: int) -> dict[str, dict[str, int]]:
    """Each read returns the member asked for; the queries it makes, per alias, for one
    member (lookup: the index on the catalog + its shard; fan-out: every shard; get(pk):
    its shard). Raises when a read is not what it claims to be."""
    from tests.testapp.models import Member

    reads = _reads()
    for key, email in members[:50]:
        with _index_off():
            fanned = Member.objects.strong().get(email=email)
        assert Member.objects.strong().get(email=email).pk == key == fanned.pk
        assert Member.objects.strong().get(pk=key).email == email
    sample = [members[0]]
    out: dict[str, dict[str, int]] = {}
    for name, fn in reads.items():
        with _queries_per_alias() as counts:
            fn(sample)
        out[name] = dict(sorted(counts.items()))
    expected = {"lookup": (2, 2), "fan-out": (shards, shards), "get(pk)": (1, 1)}
    for name, (aliases, queries) in expected.items():
        got = out[name]
        if len(got) != aliases or sum(got.values()) != queries:
            raise RuntimeError(f"{name}: expected {queries} queries on {aliases} aliases: {got}")
    return out


# --- the ratios ------------------------------------------------------------------------


def _block_ns(fn: Callable[[Sequence[tuple[int, str]]], None], pairs: Any) -> int:
    started = time.perf_counter_ns()
    fn(pairs)
    return time.perf_counter_ns() - started


def measure(
    members: Sequence[tuple[int, str]], rounds: int, block: int, max_seconds: float, seed: int = 7
) -> tuple[dict[str, Any], int]:
    """Per read, its block times and us per call; per ratio, the median of per-round ratios
    and the rest; the rounds run (fewer than ``rounds`` when ``max_seconds`` ran out)."""
    reads = _reads()
    rng = random.Random(seed)
    times: dict[str, list[int]] = {name: [] for name in READS}
    deadline = None
    done = 0
    for r in range(-WARMUP_ROUNDS, rounds):
        if r == 0:
            deadline = time.monotonic() + max_seconds
        elif deadline is not None and time.monotonic() > deadline and done >= 10:
            break
        sample = rng.sample(list(members), min(block, len(members)))
        if r % 20 == 0:
            gc.collect()
        gc.disable()
        try:
            # A B C, then C B A: a drift in machine speed hits the three alike
            for name in READS if r % 2 == 0 else READS[::-1]:
                ns = _block_ns(reads[name], sample)
                if r >= 0:
                    times[name].append(ns)
        finally:
            gc.enable()
        done += r >= 0
    calls = min(block, len(members))
    per_read = {
        name: {
            "us_min": round(min(t) / calls / 1000, 1),
            "us_median": round(statistics.median(t) / calls / 1000, 1),
            "block_ns": t,
        }
        for name, t in times.items()
    }
    ratios = {}
    for a, b in RATIOS:
        per_round = [x / y for x, y in zip(times[a], times[b], strict=True)]
        median = statistics.median(per_round)
        goal = GOAL_RATIO if (a, b) == ("lookup", "get(pk)") else None
        ratios[f"{a} / {b}"] = {
            "median_ratio": round(median, 4),
            "ratio_p10": round(_quantile(per_round, 0.1), 4),
            "ratio_p90": round(_quantile(per_round, 0.9), 4),
            "total_ratio": round(sum(times[a]) / sum(times[b]), 4),
            "min_ratio": round(min(times[a]) / min(times[b]), 4),
            "goal": goal,
            "pass": None if goal is None else median <= goal,
        }
    return {"reads": per_read, "ratios": ratios}, done


# --- one shard count, in this process ---------------------------------------------------


def run_one(args: argparse.Namespace, shards: int, output: Path) -> dict[str, Any]:
    started = time.perf_counter()
    sqlite_dir = _configure(args.backend, shards)
    import django

    django.setup()
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    from benchmarks import lookup_settings as settings  # the settings module itself

    placement = settings.PLACEMENT
    servers = settings.PRIMARY_SERVERS
    print(
        f"django_shards lookup-index benchmark: {args.backend}, {shards} shards, "
        f"Python {platform.python_version()}, Django {django.get_version()}, {args.n} members, "
        f"{args.rounds} rounds x {args.block} calls, strong() reads (primaries only), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    if args.backend == "mariadb":
        print(
            f"  {shards} shard databases on {len(servers)} primary servers (several per "
            "server, distinct database names); the lookup index on the catalog:"
        )
    for alias in ("default", *settings.SHARD_ALIASES):
        print(f"    {alias}: {placement[alias]}")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"  warning: load average above {os.cpu_count()} CPUs: the ratios are noisy")
    old_config = setup_databases(verbosity=0, interactive=False)
    try:
        setup_s = time.perf_counter() - started
        members = _insert_members(args.n)
        insert_s = time.perf_counter() - started - setup_s
        queries = check_reads(members, shards)
        result, rounds = measure(members, args.rounds, args.block, args.max_seconds)
        calls = min(args.block, len(members))
        calls_of = {
            "lookup": "Member.objects.strong().get(email=v)",
            "fan-out": "the same, lookup_index.shards_for -> None (all shards)",
            "get(pk)": "Member.objects.strong().get(pk=k)",
        }
        _table(
            f"{shards} shards: microseconds per call, {rounds} rounds of {calls} calls each",
            ["read", "queries (alias: n)", "us min", "us median"],
            [
                [
                    name,
                    ", ".join(f"{a}: {n}" for a, n in queries[name].items())
                    if name != "fan-out"
                    else f"1 on each of {shards} shards",
                    f"{result['reads'][name]['us_min']:.1f}",
                    f"{result['reads'][name]['us_median']:.1f}",
                ]
                for name in READS
            ],
        )
        for name in READS:
            print(f"  {name}: {calls_of[name]}")
        _table(
            f"{shards} shards: ratios, median of per-round ratios (goal lookup / get(pk) "
            f"<= {GOAL_RATIO})",
            ["ratio", "median", "p10-p90", "total", "min", "result"],
            [
                [
                    name,
                    f"{r['median_ratio']:.3f}",
                    f"{r['ratio_p10']:.3f}-{r['ratio_p90']:.3f}",
                    f"{r['total_ratio']:.3f}",
                    f"{r['min_ratio']:.3f}",
                    "info" if r["pass"] is None else _verdict(r["pass"]),
                ]
                for name, r in result["ratios"].items()
            ],
        )
        elapsed = time.perf_counter() - started
        goal = result["ratios"]["lookup / get(pk)"]
        print(
            f"\nlookup goal (lookup / get(pk) <= {GOAL_RATIO}) at {shards} shards: "
            f"{_verdict(goal['pass'])}  ({goal['median_ratio']:.3f})"
        )
        report = {
            "backend": args.backend,
            "source": _source_state(),
            "python": platform.python_version(),
            "django": django.get_version(),
            "machine": platform.machine(),
            "shards": shards,
            "primary_servers": servers,
            "placement": placement,
            "consistency": "strong",
            "members": args.n,
            "block": calls,
            "rounds": rounds,
            "goal_ratio": GOAL_RATIO,
            "queries_per_read": queries,
            **result,
            "pass": goal["pass"],
            "setup_seconds": round(setup_s, 1),
            "insert_seconds": round(insert_s, 1),
            "seconds": round(elapsed, 1),
            "load_average": os.getloadavg(),
            "cpus": os.cpu_count(),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"wrote {output}\nin {elapsed:.0f} s (setup {setup_s:.0f} s, insert {insert_s:.0f} s)"
        )
        return report
    finally:
        from django_shards import load

        load.flush()  # now, while the test catalog exists (not at exit, once it is gone)
        connections.close_all()
        teardown_databases(old_config, verbosity=0)
        if sqlite_dir:
            shutil.rmtree(sqlite_dir, ignore_errors=True)


# --- main ------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("sqlite", "mariadb"),
        default=os.environ.get("SHARDS_DB", "sqlite"),
        help="databases (default: $SHARDS_DB or sqlite)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        nargs="+",
        default=[8],
        help="shard counts, each run in a process of its own (default 8; e.g. --shards 8 4)",
    )
    parser.add_argument("--n", type=int, default=2000, help="Member rows inserted (default 2000)")
    parser.add_argument("--rounds", type=int, default=500, help="timed rounds (default 500)")
    parser.add_argument("--block", type=int, default=20, help="calls per block (default 20)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help="stop the rounds after this long, per shard count (default 60)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON path, one shard count only (default results/lookups-<backend>-<N>shards.json)",
    )
    args = parser.parse_args(argv)
    if any(n < 2 for n in args.shards):
        parser.error("--shards: at least 2 (the other groups use the first two)")
    if args.output and len(args.shards) > 1:
        parser.error("--output needs a single --shards")

    def output_of(n: int) -> Path:
        return args.output or RESULTS_DIR / f"lookups-{args.backend}-{n}shards.json"

    if len(args.shards) == 1:
        report = run_one(args, args.shards[0], output_of(args.shards[0]))
        return 0 if report["pass"] else 1

    reports = []
    for n in args.shards:
        cmd = [sys.executable, "-m", "benchmarks.lookups", "--backend", args.backend]
        cmd += ["--shards", str(n), "--n", str(args.n), "--rounds", str(args.rounds)]
        cmd += ["--block", str(args.block), "--max-seconds", str(args.max_seconds)]
        code = subprocess.run(cmd, check=False).returncode
        if code not in (0, 1):
            print(f"the {n}-shard run failed (exit {code})")
            return code
        reports.append(json.loads(output_of(n).read_text()))
        print()
    _table(
        "Ratios by shard count (median of per-round ratios; lookup / get(pk) should not "
        "grow with shards)",
        ["shards", *(f"{a} / {b}" for a, b in RATIOS), "lookup us", "get(pk) us", "result"],
        [
            [
                r["shards"],
                *(f"{r['ratios'][f'{a} / {b}']['median_ratio']:.3f}" for a, b in RATIOS),
                f"{r['reads']['lookup']['us_median']:.0f}",
                f"{r['reads']['get(pk)']['us_median']:.0f}",
                _verdict(r["pass"]),
            ]
            for r in reports
        ],
    )
    return 0 if all(r["pass"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
