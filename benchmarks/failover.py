"""Failover benchmark: how long writes wait through a switchover and a failover of a shard's
primary, and how many acknowledged writes are lost, on the MariaDB topology's HA trio.

Run from the project root, with nothing else using the trio (it is reset before and
after, which drops every test database on it)::

    source /tmp/django_shards_mariadb/env
    SHARDS_TEST_SUFFIX=bench .venv/bin/python -m benchmarks.failover   # ~30 s

Method: Django's test-database machinery creates throwaway databases (``benchmarks
.settings``: ``test_bench_*`` names). ``--writers`` threads create deposits in group ``ha``
(one shard, ``h0`` on f0 with f1 and f2 as semi-synchronous replicas, ``AFTER_SYNC``)
through the ORM as fast as they can, each retrying the retryable ``ShardUnavailable``,
with the production map lease (``MAP_LEASE_SECONDS`` 1 s). Each write's time runs from its
first attempt to its success.

1. **Switchover** ``h0 -> h0_r1`` (``shard_failover --switchover``) while they write;
   they go on ``--seconds`` after it. Goal: no write waits more than 1 s; 0 lost.
2. **Failover**: the new primary's server is killed (SIGKILL) while they write, and
   ``shard_failover`` is run at once (as ``shard_watch`` would after its probes). The
   longest write is the shard's write outage as one write sees it (no goal: it is bound
   by the map lease, which processes need to learn of the failover); 0 lost is the goal.

``shard_failover`` runs in a process of its own (as an operator's would): the writers'
process learns of each change from the catalog, within its lease and then
``FENCE_POLL_SECONDS``.

Lost = writes acknowledged to a writer that the new primary does not hold. Prints a table
and PASS/FAIL, writes ``results/failover-mariadb.json``, exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
TOPOLOGY = ROOT / "scripts" / "mariadb-topology"
GROUP, SHARD = "ha", "h0"
SERVER = {"h0": "f0", "h0_r1": "f1", "h0_r2": "f2"}
GOAL_SWITCHOVER_WAIT = 1.0


def topology(*args: str) -> None:
    done = subprocess.run([str(TOPOLOGY), *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"mariadb-topology {' '.join(args)}: {done.stderr.strip()[-500:]}")


def command(*argv: str) -> float:
    """Run ``shard_failover`` in a process of its own, as an operator would (the writers'
    process then learns of the new primary from the catalog, not from this call); its wall
    time, Python's start included."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"}
    env["SHARDS_USE_TEST_DATABASES"] = "1"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "django", "shard_failover", GROUP, SHARD, "--no-input", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    took = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"shard_failover failed: {done.stdout[-500:]}{done.stderr[-500:]}")
    return took


def run_writers(count: int, during: Any, seconds: float) -> dict[str, Any]:
    """``count`` writers; ``during()`` once they have written, then ``seconds`` more."""
    from tests.support.writers import Writer

    writers = [Writer(account=100 + i) for i in range(count)]
    for w in writers:
        w.start()
    for w in writers:
        w.wait_for(50)
    before = sum(len(w.acked) for w in writers)
    took = during()
    after = sum(len(w.acked) for w in writers)
    for w in writers:
        w.wait_for(len(w.acked) + 50)
    time.sleep(seconds)  # writers run on (a measurement window, not a wait for a condition)
    for w in writers:
        w.finish()
    acked = [pk for w in writers for pk in w.acked]
    return {
        "command_seconds": took,
        "longest_write_seconds": max(w.longest for w in writers),
        "refused_attempts": sum(w.failed_attempts for w in writers),
        "acknowledged": len(acked),
        "acknowledged_during_command": after - before,
        "ids": acked,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0, help="writing after each step")
    args = parser.parse_args(argv)
    if os.environ.get("SHARDS_DB") != "mariadb":
        print("the failover benchmark needs the MariaDB topology (source its env)")
        return 2
    os.environ["DJANGO_SETTINGS_MODULE"] = "benchmarks.settings"
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings
    from django.db import connections
    from django.test.utils import setup_databases, teardown_databases

    from django_shards.shardmap import registry
    from tests.support.writers import ids_held

    operator = settings.DJANGO_SHARDS.get("OPERATOR") or {}
    if not operator.get("REPLICATION_USER"):
        print("OPERATOR with REPLICATION_USER is needed (SHARDS_REPLICATION_USER)")
        return 2
    topology("ha-reset")
    config = setup_databases(verbosity=0, interactive=False, aliases=["default", "h0"])
    result: dict[str, Any] = {"writers": args.writers, "lease_seconds": 1.0}
    try:
        switch = run_writers(
            args.writers, lambda: command("--switchover", "--to", "h0_r1"), args.seconds
        )
        primary = registry.refresh(GROUP).shard_named(SHARD).primary
        switch["new_primary"] = primary
        switch["lost"] = len(set(switch["ids"]) - ids_held(primary, switch.pop("ids")))
        result["switchover"] = switch

        def kill_and_fail_over() -> float:
            topology("kill", SERVER[primary])
            return command()

        fail = run_writers(args.writers, kill_and_fail_over, args.seconds)
        after = registry.refresh(GROUP).shard_named(SHARD).primary
        fail["new_primary"] = after
        fail["lost"] = len(set(fail["ids"]) - ids_held(after, fail.pop("ids")))
        result["failover"] = fail
    finally:
        connections.close_all()
        # the trio's roles changed: put it back (which drops its test databases) and drop
        # only the others here
        topology("ha-reset")
        kept = [(conn, name, destroy and conn.alias != "h0") for conn, name, destroy in config]
        teardown_databases(kept, verbosity=0)

    s, f = result["switchover"], result["failover"]
    checks = {
        "switchover longest write <= 1 s": s["longest_write_seconds"] <= GOAL_SWITCHOVER_WAIT,
        "switchover lost 0": s["lost"] == 0,
        "failover lost 0": f["lost"] == 0,
    }
    print(f"{args.writers} writers, map lease 1 s")
    for name, r in (("switchover", s), ("failover", f)):
        print(
            f"  {name:10s} -> {r['new_primary']}: command {r['command_seconds']:.2f}s, "
            f"longest write {r['longest_write_seconds']:.3f}s, {r['refused_attempts']} "
            f"refused attempts, {r['acknowledged']} acknowledged, {r['lost']} lost"
        )
    for name, ok in checks.items():
        print(f"  {name}: {'PASS' if ok else 'FAIL'}")
    result["passed"] = all(checks.values())
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "failover-mariadb.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
