"""Placement benchmark: speed per key, balance, and keys moved when the cluster grows.

Run from the project root::

    python -m benchmarks.placement            # 1M keys, about a minute
    python -m benchmarks.placement --keys 100000

Prints a table per measurement and writes ``benchmarks/results/placement.json``. Goals:
placement (hashing included) <= 1 us per key; balance max/mean <= 1.01 for ``hash`` and
<= 1.10 for ``consistent_hash`` with 256 vnodes; adding a shard to a consistent-hash ring
moves <= 1.05 x 1/(N+1) of the keys. No database is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import timeit
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "placement.json"

PLACEMENT_GOAL_US = 1.0
HASH_BALANCE_GOAL = 1.01
RING_BALANCE_GOAL = 1.10
MOVE_GOAL_FACTOR = 1.05
SWEEP_VNODES = (256, 512, 1024, 2048, 4096)


def _strategies() -> dict[str, Any]:
    from django_shards.strategies.consistent_hash import ConsistentHashStrategy
    from django_shards.strategies.hash import HashStrategy
    from django_shards.strategies.modulo import ModuloStrategy
    from django_shards.strategies.range import RangeStrategy

    return {
        "range": RangeStrategy,
        "hash": HashStrategy,
        "consistent_hash": ConsistentHashStrategy,
        "modulo": ModuloStrategy,
    }


def _shards(count: int, ranges: Sequence[tuple[Any, Any]] | None = None) -> list[Any]:
    from django_shards.conf import Shard, ShardSettings

    return [
        ShardSettings(Shard(f"s{i}", f"s{i}"), ranges[i] if ranges else None) for i in range(count)
    ]


def _snowflake_like_keys(count: int, seed: int) -> list[int]:
    """Random 63-bit ints: what SnowflakeField primary keys look like (19 digits)."""
    rng = random.Random(seed)
    return [rng.getrandbits(63) for _ in range(count)]


def _best_us_per_key(fn: Callable[[], object], count: int, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat)) / count * 1e6


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


def _max_over_mean(counts: Counter[str], shards: int) -> float:
    mean = sum(counts.values()) / shards
    return max(counts.values()) / mean


def _time_placement(strategy: Any, layout: Any, keys: Sequence[Any]) -> dict[str, float]:
    """Best-of-5 microseconds per key: whole placement, then point and locate alone."""
    shard_for_key, point, locate = strategy.shard_for_key, strategy.point, strategy.locate
    points = [point(k) for k in keys]

    def placing() -> None:
        for k in keys:
            shard_for_key(layout, k)

    def hashing() -> None:
        for k in keys:
            point(k)

    def locating() -> None:
        for p in points:
            locate(layout, p)

    return {
        "us_per_key": _best_us_per_key(placing, len(keys)),
        "point_us": _best_us_per_key(hashing, len(keys)),
        "locate_us": _best_us_per_key(locating, len(keys)),
    }


def measure_speed(timing_keys: int) -> list[dict[str, Any]]:
    """Microseconds per key for ``shard_for_key`` (point + locate), run on every query."""
    keys = _snowflake_like_keys(timing_keys, seed=1)
    step = 2**63 // 16
    ranges = [
        (None if i == 0 else i * step, None if i == 15 else (i + 1) * step) for i in range(16)
    ]
    results = []
    for name, cls in _strategies().items():
        strategy = cls({})
        layout = strategy.initial_layout(_shards(16, ranges if name == "range" else None))
        timing = _time_placement(strategy, layout, keys)
        results.append(
            {
                "strategy": name,
                "shards": 16,
                **{k: round(v, 3) for k, v in timing.items()},
                "goal_us": PLACEMENT_GOAL_US,
                "pass": timing["us_per_key"] <= PLACEMENT_GOAL_US,
            }
        )
    return results


def measure_balance(
    hash_points: Sequence[int], ring_points: Sequence[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """max/mean keys per shard; for the ring also max/mean ring share (no sampling noise)."""
    strategies = _strategies()
    balance, sweep = [], []
    for n in (4, 16):
        strategy = strategies["hash"]({})
        layout = strategy.initial_layout(_shards(n))
        ratio = _max_over_mean(Counter(map(layout.locate, hash_points)), n)
        balance.append(
            {
                "strategy": "hash",
                "shards": n,
                "vnodes": None,
                "keys_max_over_mean": round(ratio, 4),
                "share_max_over_mean": round(max(strategy.share(layout).values()) * n, 4),
                "goal": HASH_BALANCE_GOAL,
                "pass": ratio <= HASH_BALANCE_GOAL,
            }
        )
    for n in (4, 16):
        for vnodes in SWEEP_VNODES if n == 16 else (256,):
            strategy = strategies["consistent_hash"]({"vnodes": vnodes})
            layout = strategy.initial_layout(_shards(n))
            ratio = _max_over_mean(Counter(map(layout.locate, ring_points)), n)
            share = max(strategy.share(layout).values()) * n
            row = {
                "strategy": "consistent_hash",
                "shards": n,
                "vnodes": vnodes,
                "keys_max_over_mean": round(ratio, 4),
                "share_max_over_mean": round(share, 4),
                "goal": RING_BALANCE_GOAL,
                "pass": ratio <= RING_BALANCE_GOAL,
            }
            if vnodes == 256:
                balance.append(row)
            if n == 16:
                sweep.append(row)
    return balance, sweep


def _moved(before: Any, after: Any, points: Sequence[int]) -> float:
    """Fraction of points whose owner differs between two layouts."""
    return sum(1 for p in points if before.locate(p) != after.locate(p)) / len(points)


def measure_moves(
    hash_points: Sequence[int], ring_points: Sequence[int], modulo_points: Sequence[int]
) -> list[dict[str, Any]]:
    """Fraction of keys whose shard changes when the cluster grows by one shard."""
    strategies = _strategies()
    ring, modulo, hashing = (strategies[s]() for s in ("consistent_hash", "modulo", "hash"))
    rows = []
    for n in (4, 8):
        ideal = 1 / (n + 1)
        grown = ring.initial_layout(_shards(n + 1))
        moved = _moved(ring.initial_layout(_shards(n)), grown, ring_points)
        rows.append(
            {
                "strategy": "consistent_hash",
                "change": f"add 1 shard to {n}",
                "moved": round(moved, 4),
                # every moved key goes to the new shard: moved -> its ring share
                "new_shard_share": round(ring.share(grown)[f"s{n}"], 4),
                "reference": round(ideal, 4),
                "goal": round(MOVE_GOAL_FACTOR * ideal, 4),
                "pass": moved <= MOVE_GOAL_FACTOR * ideal,
            }
        )
        moved = _moved(
            modulo.initial_layout(_shards(n)), modulo.initial_layout(_shards(n + 1)), modulo_points
        )
        rows.append(
            {
                "strategy": "modulo",
                "change": f"add 1 shard to {n}",
                "moved": round(moved, 4),
                "new_shard_share": round(1 / (n + 1), 4),
                "reference": round(n / (n + 1), 4),
                "goal": None,
                "pass": None,
            }
        )
        layout = hashing.initial_layout(_shards(n))
        split = hashing.split(layout, "s0", f"s{n}")
        moved = _moved(layout, split, hash_points)
        rows.append(
            {
                "strategy": "hash",
                "change": f"split 1 of {n}",
                "moved": round(moved, 4),
                "new_shard_share": hashing.share(split)[f"s{n}"],
                "reference": round(1 / (2 * n), 4),
                "goal": None,
                "pass": None,
            }
        )
    return rows


def measure_move_sweep() -> list[dict[str, Any]]:
    """Exact fraction moved by adding shard N to a ring of N (the new shard's ring share)."""
    rows = []
    for n in (4, 8):
        for vnodes in SWEEP_VNODES:
            ring = _strategies()["consistent_hash"]({"vnodes": vnodes})
            share = ring.share(ring.initial_layout(_shards(n + 1)))[f"s{n}"]
            ratio = share * (n + 1)
            rows.append(
                {
                    "change": f"add 1 shard to {n}",
                    "vnodes": vnodes,
                    "moved": round(share, 4),
                    "moved_over_ideal": round(ratio, 4),
                    "pass": ratio <= MOVE_GOAL_FACTOR,
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys for balance and moves")
    parser.add_argument("--timing-keys", type=int, default=200_000, help="keys timed per strategy")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    print(
        f"django_shards placement benchmark: Python {platform.python_version()}, "
        f"{args.keys:,} keys, {args.timing_keys:,} timed keys, "
        f"load average {os.getloadavg()[0]:.2f} (timings are best of 7, wall clock)"
    )

    speed = measure_speed(args.timing_keys)
    _table(
        f"Placement time per key, 16 shards, hashing included (goal <= {PLACEMENT_GOAL_US} us)",
        ["strategy", "us/key", "point us", "locate us", "result"],
        [
            [
                r["strategy"],
                f"{r['us_per_key']:.3f}",
                f"{r['point_us']:.3f}",
                f"{r['locate_us']:.3f}",
                _verdict(r["pass"]),
            ]
            for r in speed
        ],
    )

    # Points are computed once per hash function, then placed under each layout.
    keys = _snowflake_like_keys(args.keys, seed=2)
    strategies = _strategies()
    hash_points = list(map(strategies["hash"]().point, keys))
    ring_points = list(map(strategies["consistent_hash"]().point, keys))
    modulo_points = list(map(strategies["modulo"]().point, keys))
    del keys

    balance, sweep = measure_balance(hash_points, ring_points)
    _table(
        f"Balance over {args.keys:,} keys: max/mean keys per shard",
        ["strategy", "shards", "vnodes", "keys max/mean", "share max/mean", "goal", "result"],
        [
            [
                r["strategy"],
                r["shards"],
                r["vnodes"] or "-",
                f"{r['keys_max_over_mean']:.4f}",
                f"{r['share_max_over_mean']:.4f}",
                f"<= {r['goal']}",
                _verdict(r["pass"]),
            ]
            for r in balance
        ],
    )
    _table(
        "consistent_hash, 16 shards: balance by vnodes (share = exact ring share, no key noise)",
        ["vnodes", "keys max/mean", "share max/mean", f"<= {RING_BALANCE_GOAL}"],
        [
            [
                r["vnodes"],
                f"{r['keys_max_over_mean']:.4f}",
                f"{r['share_max_over_mean']:.4f}",
                _verdict(r["pass"]),
            ]
            for r in sweep
        ],
    )
    enough = [
        r["vnodes"] for r in sweep if r["pass"] and r["share_max_over_mean"] <= RING_BALANCE_GOAL
    ]
    vnodes_needed = min(enough) if enough else None
    print(
        f"  smallest vnodes meeting {RING_BALANCE_GOAL} at 16 shards (keys and ring share): "
        f"{vnodes_needed or f'more than {SWEEP_VNODES[-1]}'}"
    )

    moves = measure_moves(hash_points, ring_points, modulo_points)
    _table(
        f"Keys moved when the cluster grows, over {args.keys:,} keys",
        ["strategy", "change", "moved", "new shard share", "reference", "goal", "result"],
        [
            [
                r["strategy"],
                r["change"],
                f"{r['moved']:.4f}",
                f"{r['new_shard_share']:.4f}",
                f"{r['reference']:.4f}",
                "-" if r["goal"] is None else f"<= {r['goal']:.4f}",
                "-" if r["pass"] is None else _verdict(r["pass"]),
            ]
            for r in moves
        ],
    )

    move_sweep = measure_move_sweep()
    _table(
        "consistent_hash: fraction moved by adding one shard, by vnodes (exact ring share)",
        ["change", "vnodes", "moved", "x 1/(N+1)", f"<= {MOVE_GOAL_FACTOR}"],
        [
            [
                r["change"],
                r["vnodes"],
                f"{r['moved']:.4f}",
                f"{r['moved_over_ideal']:.4f}",
                _verdict(r["pass"]),
            ]
            for r in move_sweep
        ],
    )

    elapsed = time.perf_counter() - started
    report = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "keys": args.keys,
        "timing_keys": args.timing_keys,
        "seconds": round(elapsed, 1),
        "placement": speed,
        "balance": balance,
        "consistent_hash_vnodes_sweep_16_shards": sweep,
        "consistent_hash_vnodes_needed_16_shards": vnodes_needed,
        "moves": moves,
        "consistent_hash_moves_by_vnodes": move_sweep,
        "load_average": os.getloadavg(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.output} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
