"""``manage.py shard_status [GROUP] [--json] [--counts] [--check]``: the state of the shards.

Per group: strategy, map version, balance and splits in progress; per shard: its aliases,
what it owns, the health of each alias (replica lag included), rows per model, its load
over ``LOAD_WINDOW_SECONDS`` (reads/s, writes/s, share of the group's queries) and whether
it is hot, and why (``rows``, ``load``); then every problem, with the suggested split for a
hot shard. Reads what
:func:`django_shards.status.collect_status` gathers. Only database aliases are printed,
never a host, user or password.

Exit codes: 0, also when something is unhealthy, unless ``--check`` is given: then 1 when
an alias is unreachable, a primary is read-only, a replica is stopped or lags past
``MAX_REPLICA_LAG_SECONDS``, or a split failed (the report is printed first, then one
``CommandError`` sentence). A hot shard is a warning, not unhealthy. 2 for bad input (an
unknown group).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from django_shards.management.commands._base import (
    ShardsCommand,
    Unhealthy,
    cell_text,
    format_columns,
    group_names,
)
from django_shards.status import ClusterStatus, GroupStatus, ShardStatus, collect_status


class Command(ShardsCommand):
    help = (
        "Show each shard group: strategy, map version, balance, splits in progress, and per "
        "shard its primary and replicas, what it owns, health (replica lag included), rows "
        "per model, load (reads/s, writes/s, share) and hot shards (by rows or load). --check "
        "exits 1 when something is unhealthy."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "group", nargs="?", metavar="GROUP", help="Show only this shard group (default: all)."
        )
        parser.add_argument(
            "--json", action="store_true", help="Print the status as JSON, for programs."
        )
        parser.add_argument(
            "--counts",
            action="store_true",
            help="Count rows exactly (COUNT(*) on every shard primary). Default: the "
            "database's estimates, marked ~ (exact counts on SQLite anyway).",
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit 1 when something is unhealthy (an unreachable alias, a read-only "
            "primary, a stopped or lagging replica, a failed split); hot shards only warn.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        groups = group_names(options["group"])
        status = collect_status(groups, exact_counts=options["counts"])
        if options["json"]:
            self.write_json(status.as_dict())
        else:
            self.write_status(status)
        if options["check"] and not status.healthy:
            raise Unhealthy("Something is unhealthy: the report lists the problems.")

    # -- the table -----------------------------------------------------------------------

    def write_status(self, status: ClusterStatus) -> None:
        self.stdout.write(f"catalog: {status.catalog}")
        estimated = False
        for group in status.groups:
            self.stdout.write("")
            self.stdout.write(group_line(group))
            for job in group.splits:
                self.stdout.write(f"  {split_line(job)}")
            columns, rows, right = shard_table(group)
            self.stdout.write(format_columns(columns, rows, right))
            estimated = estimated or any(shows_estimates(s) for s in group.shards)
        if estimated:
            self.stdout.write("")
            self.stdout.write(
                "~ estimated from the database's statistics; --counts counts exactly."
            )
        self.stdout.write("")
        problems = status.problems
        if problems:
            self.stdout.write("problems:")
            for problem in problems:
                self.stdout.write(f"  {problem}")
        else:
            self.stdout.write("problems: none")
        if status.healthy:
            self.stdout.write(self.style.SUCCESS("overall: healthy"))
        else:
            self.stdout.write(self.style.ERROR("overall: UNHEALTHY"))


def group_line(group: GroupStatus) -> str:
    """``group events: range, map version 2, 3 shards, balance 1.12 (max/mean rows), ...``"""
    balance = group.balance
    owners = [s for s in group.shards if not s.pending]
    if balance is not None:
        approx = "~" if any(shows_estimates(s) for s in owners) else ""
        balance_text = f"balance {approx}{balance:.2f} (max/mean rows)"
    elif any(s.total_rows is None for s in owners):
        balance_text = "balance unknown (rows unreadable)"
    else:
        balance_text = "balance n/a (no rows)"
    splits = len(group.splits)
    split_text = "no split in progress" if not splits else f"splits in progress: {splits}"
    count = len(group.shards)
    return (
        f"group {group.name}: {group.strategy}, map version {group.version}, "
        f"{count} shard{'' if count == 1 else 's'}, {balance_text}, {split_text}"
    )


def split_line(job: dict[str, Any]) -> str:
    """``split s0 -> s4: catching_up (online), 5000 rows copied, catch-up lag 3
    transactions (0.12s) (job 7)``"""
    parts = [f"{job['phase']} ({job.get('mode', 'frozen')})"]
    copy = job.get("copy") or {}
    if copy.get("tables"):
        done = "" if copy["tables_done"] == copy["tables"] else ", copy in progress"
        parts.append(f"{copy['rows']} rows copied{done}")
    if job.get("lag_events") is not None:
        seconds = job.get("lag_seconds")
        when = "" if seconds is None else f" ({seconds:.2f}s)"
        parts.append(f"catch-up lag {job['lag_events']} transactions{when}")
    if job["frozen"]:
        parts.append("writes to moving keys frozen")
    if job["error"]:
        parts.append("FAILED (see problems)")
    return f"split {job['source']} -> {job['target']}: {', '.join(parts)} (job {job['id']})"


def shard_table(group: GroupStatus) -> tuple[list[str], list[list[str]], list[int]]:
    """The group's shards as (columns, text rows, right-aligned column indexes)."""
    with_share = any(s.share is not None for s in group.shards)
    columns = ["shard", "primary", "replicas", "owns"]
    if with_share:
        columns.append("share")
    columns += ["health", "lag", *group.models, "total", *LOAD_COLUMNS, "hot"]
    rows = []
    for shard in group.shards:
        serving = [*shard.replicas, *(f"{alias} (demoted)" for alias in shard.demoted)]
        row = [shard.name, shard.primary, ", ".join(serving) or "-", shard.owns]
        if with_share:
            row.append("-" if shard.share is None else f"{100 * shard.share:.1f}%")
        row += [health_text(shard), lag_text(shard)]
        row += [rows_text(shard.rows[label], shard.rows_exact) for label in group.models]
        row += [rows_text(shard.total_rows, shard.rows_exact), *load_cells(shard)]
        row.append(f"HOT: {', '.join(shard.hot)}" if shard.hot else "")
        rows.append([cell_text(cell) for cell in row])
    first_count = columns.index("lag") + 1
    numbers = len(group.models) + 1 + len(LOAD_COLUMNS)
    return columns, rows, list(range(first_count, first_count + numbers))


#: the load columns, over LOAD_WINDOW_SECONDS: queries per second and share of the group's
LOAD_COLUMNS = ("reads/s", "writes/s", "load")


def load_cells(shard: ShardStatus) -> list[str]:
    """reads/s, writes/s and the share of the group's queries (``?``: unreadable)."""
    if shard.load is None:
        return ["?"] * len(LOAD_COLUMNS)
    return [
        f"{shard.load['reads_per_second']:.1f}",
        f"{shard.load['writes_per_second']:.1f}",
        f"{100 * shard.load['share']:.1f}%",
    ]


def health_text(shard: ShardStatus) -> str:
    """``ok``, or each unhealthy alias with what is wrong with it."""
    problems = [f"{h.alias} {h.problem}" for h in shard.health if h.problem]
    return "; ".join(problems) or "ok"


def lag_text(shard: ShardStatus) -> str:
    """Each replica's lag in seconds (``?``: unknown), ``-`` without replicas."""
    lags = [
        "?" if h.lag_seconds is None else f"{h.lag_seconds:g}s"
        for h in shard.health
        if h.role == "replica"
    ]
    return ", ".join(lags) or "-"


def shows_estimates(shard: ShardStatus) -> bool:
    """True when some of the shard's row counts are printed as ``~`` estimates."""
    return not shard.rows_exact and any(v is not None for v in shard.rows.values())


def rows_text(rows: int | None, exact: bool) -> str:
    if rows is None:
        return "?"
    return str(rows) if exact else f"~{rows}"
