"""``shard_split GROUP SHARD --to NAME --primary ALIAS [--replica ALIAS ...] [--at KEY]
[--dry-run] [--batch-size N] [--resume] [--abort] [--no-input]``: split a shard online.

The work is :mod:`django_shards.resharding`'s; this command checks the input, prints the
plan, and prints the runner's progress events as lines (:func:`event_line`).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_shards.conf import get_config
from django_shards.exceptions import SplitError
from django_shards.health import is_configured, probe
from django_shards.management.commands._base import (
    EXIT_UNHEALTHY,
    ShardsCommand,
    error_reason,
    group_names,
)
from django_shards.resharding import (
    SplitRunner,
    abort,
    active_job,
    count_moving_rows,
    create_job,
    plan_split,
)
from django_shards.resharding.online import online_available
from django_shards.resharding.plan import parse_at
from django_shards.resharding.progress import (
    Aborted,
    BatchCleaned,
    BatchCopied,
    CatchingUp,
    CreatingTables,
    CutOver,
    FenceRetried,
    Hold,
    LeaseWait,
    PhaseRecorded,
    SplitEvent,
    StreamRestarted,
    TablesCreated,
    TableVerified,
    TargetNotEmptied,
)
from django_shards.shardmap import registry


class Command(ShardsCommand):
    help = (
        "Split a shard of a group into a new shard online: plan, copy, verify, cut over, "
        "clean up. Resumable after a crash at any point (--resume); --abort undoes a split "
        "that has not cut over; --dry-run prints the plan and changes nothing."
    )
    #: handed to the split's runner as its ``hold`` hook (see ``SplitRunner``): None but
    #: in tests, which set it on a command instance to hold the split at a named point
    hold: Hold | None = None

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("group", help="the shard group")
        parser.add_argument("shard", help="the shard to split (the source)")
        parser.add_argument("--to", dest="target", help="name of the new shard")
        parser.add_argument("--primary", help="DATABASES alias of the new shard's primary")
        parser.add_argument(
            "--replica",
            dest="replicas",
            action="append",
            default=[],
            help="DATABASES alias of a replica of the new shard (repeatable)",
        )
        parser.add_argument(
            "--at", help="range groups: the split key (default: the median key stored)"
        )
        parser.add_argument("--dry-run", action="store_true", help="print the plan only")
        parser.add_argument(
            "--batch-size",
            type=int,
            help="rows per copy batch (default 1000; the online copy: 1 MiB of rows)",
        )
        parser.add_argument("--resume", action="store_true", help="continue an interrupted split")
        parser.add_argument("--abort", action="store_true", help="undo a split not cut over yet")
        parser.add_argument(
            "--no-input", action="store_false", dest="interactive", help="do not ask to confirm"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        group, source = options["group"], options["shard"]
        group_names(group)  # unknown group: CommandError, exit 2
        if options["batch_size"] is not None and options["batch_size"] < 1:
            self.fail(
                f"--batch-size must be a positive number of rows, not {options['batch_size']}."
            )
        if options["resume"] and options["abort"]:
            self.fail("--resume and --abort cannot be used together.")
        # a SplitError (bad input, exit 2; a database that failed, exit 1) or a database
        # error outside the steps named below becomes one CommandError in the base
        if options["abort"]:
            return self._abort(group, source)
        if options["resume"]:
            return self._resume(group, source, options)
        return self._split(group, source, options)

    def _active_job(self, group: str, source: str | None = None) -> Any:
        catalog = get_config().catalog
        with self.step(f"read the splits of group {group!r} from the catalog ({catalog})"):
            return active_job(group, source)

    # -- the three entry points ------------------------------------------------------------

    def _split(self, group: str, source: str, options: dict[str, Any]) -> None:
        for flag in ("target", "primary"):
            if not options[flag]:
                self.fail(f"--{'to' if flag == 'target' else flag} is required to plan a split.")
        job = self._active_job(group)
        if job is not None:
            self.fail(
                f"A split of group {group!r} is in progress ({job.source} -> {job.target}, "
                f"phase {job.phase}); finish it with --resume or undo it with --abort."
            )
        plan = plan_split(
            group,
            source,
            options["target"],
            options["primary"],
            options["replicas"],
            at=parse_at(group, options["at"]),
        )
        count_moving_rows(plan, batch_size=max(options["batch_size"] or 0, 1000))  # SplitError
        self._print_plan(plan)
        if options["dry_run"]:
            self.stdout.write("dry run: nothing was changed.")
            return
        if options["interactive"] and sys.stdin.isatty():
            answer = input("Proceed with the split? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                self.stdout.write("Nothing was changed.")
                return
        with self.step(f"record the split in the catalog ({get_config().catalog})"):
            job = create_job(plan)
        self._run(job, options["batch_size"])

    def _resume(self, group: str, source: str, options: dict[str, Any]) -> None:
        job = self._active_job(group, source)
        if job is None:
            self.fail(f"No split of shard {source!r} of group {group!r} is in progress.")
        self.stdout.write(f"resuming split {job.source} -> {job.target} at phase {job.phase}")
        self._run(job, options["batch_size"])

    def _abort(self, group: str, source: str) -> None:
        job = self._active_job(group, source)
        if job is None:
            self.fail(f"No split of shard {source!r} of group {group!r} is in progress.")
        try:
            abort(job, report=lambda event: self.stdout.write(event_line(event)))
        except SplitError:
            raise  # already cut over: the base says so (exit 2)
        except Exception as exc:
            raise CommandError(
                f"The abort of the split {job.source} -> {job.target} of group {group!r} "
                f"failed: {error_reason(exc)}{not_answering(job)}. Fix the cause and check "
                f"the split with `shard_status {group}`.",
                returncode=EXIT_UNHEALTHY,
            ) from exc
        registry.reset_group(group)

    # -- output ------------------------------------------------------------------------------

    def _print_plan(self, plan: Any) -> None:
        w = self.stdout.write
        w(
            f"split of {plan.group}/{plan.source} into {plan.target.name} "
            f"(primary {plan.target.primary}, replicas {', '.join(plan.target.replicas) or 'none'})"
        )
        w(
            f"strategy {plan.base.strategy.name}, map version {plan.base.version} -> "
            f"{plan.base.version + 2} (a pending version, then the cutover)"
        )
        if plan.at is not None:
            w(f"split key: {plan.at!r} (the new shard takes [{plan.at!r}, hi))")
        w("new map:")
        for name, owns in plan.describe().items():
            w(f"  {name:<12} {owns}")
        w("rows that move (from the source to the new shard):")
        for label in plan.moving_rows:
            w(f"  {label:<30} {plan.moving_rows[label]:>10} of {plan.source_rows[label]}")
        why_not = online_available(plan.base.shards[plan.source].primary)
        if why_not is None:
            w(
                "online: rows are copied from a snapshot while writes go on, then the source's "
                "binlog is applied; writes to the moving keys raise ShardMoving (retryable) "
                "only during the fence (under a second), until the cutover."
            )
        else:
            w(
                "frozen copy: writes to the moving keys raise ShardMoving (retryable) from the "
                f"freeze until the cutover, for the whole copy ({why_not})."
            )

    def _run(self, job: Any, batch_size: int | None) -> None:
        progress = _Progress(self)
        runner = None
        try:
            runner = SplitRunner(job, batch_size=batch_size, report=progress, hold=self.hold)
            job = runner.run()
        except Exception as exc:  # any failure: the job records where to resume
            phase = (runner.job if runner is not None else job).phase
            progress.end_line()
            raise CommandError(
                f"The split {job.source} -> {job.target} of group {job.group!r} stopped at "
                f"phase {phase}: {error_reason(exc)}{not_answering(job)}. Fix the cause and "
                "run it again with "
                f"`shard_split {job.group} {job.source} --resume` (or --abort before the "
                "cutover).",
                returncode=EXIT_UNHEALTHY,
            ) from exc
        registry.reset_group(job.group)
        frozen = job.progress.get("frozen_seconds")
        copied = sum(v.get("rows", 0) for v in job.progress.get("copy", {}).values())
        self.stdout.write(
            f"split {job.source} -> {job.target} of group {job.group!r} done: {copied} rows "
            f"moved, moving keys frozen {frozen or 0:.2f}s."
        )


def silent_databases(job: Any) -> list[str]:
    """The split's databases that do not answer now, as ``"source primary s1"``: asked
    after a failure, to say which database it was (the driver's error seldom says)."""
    source = next((s["primary"] for s in job.new_shards if s["name"] == job.source), None)
    roles = [
        ("catalog", get_config().catalog),
        ("source primary", source),
        ("target primary", job.target_primary),
        *(("target replica", alias) for alias in job.target_replicas),
    ]
    silent = []
    for role, alias in roles:
        if alias is None:
            continue
        if not is_configured(alias):
            silent.append(f"{role} {alias} (not in DATABASES)")
        elif not probe(alias, role.rpartition(" ")[2]).reachable:
            silent.append(f"{role} {alias}")
    return silent


def not_answering(job: Any) -> str:
    """`` (source primary s1 not answering)``, or nothing when every database answers."""
    silent = silent_databases(job)
    return f" ({', '.join(silent)} not answering)" if silent else ""


#: why each lease is waited
LEASE_REASONS = {
    "copy": "so every process sees the freeze",
    "cleanup": "so no process still reads the moved keys on the source",
}


def event_line(event: SplitEvent) -> str:
    """The line ``shard_split`` prints for a progress event of the split."""
    match event:
        case PhaseRecorded(phase=phase):
            return f"phase: {phase}"
        case CutOver(map_version=version, frozen_seconds=frozen):
            return (
                f"phase: cut_over (map version {version}; moving keys were frozen "
                f"{frozen or 0:.2f}s)"
            )
        case LeaseWait(seconds=seconds, before=before):
            return f"waiting {seconds:.1f}s (one map lease) {LEASE_REASONS[before]}"
        case CreatingTables(alias=alias):
            return f"creating the group's tables on {alias}"
        case TablesCreated(tables=tables):
            return f"created {', '.join(tables)}"
        case BatchCopied(label=label, rows=rows, after=after):
            return f"copy {label}: {rows} rows (up to pk {after})"
        case CatchingUp(position=position, behind=behind, lag_seconds=lag, applied=applied):
            return (
                f"catch-up: applied up to GTID {position or '-'} ({applied} transactions this "
                f"pass), {behind} behind ({lag:.2f}s)"
            )
        case StreamRestarted(position=position, error=error):
            return f"binlog stream broke ({error}); reading again from GTID {position}"
        case FenceRetried(attempt=attempt):
            return (
                f"fence {attempt}: a transaction on the source stayed open; freeze lifted, "
                "catching up again"
            )
        case TableVerified(label=label, rows=rows, batches=batches):
            return f"verify {label}: {rows} rows in {batches} batches"
        case BatchCleaned(label=label, deleted=deleted):
            return f"clean-up {label}: {deleted} rows deleted from the source"
        case TargetNotEmptied(error=error, while_running=True):
            return f"(rows copied before the abort were not removed: {error})"
        case TargetNotEmptied(error=error):
            return f"(target tables not emptied: {error})"
        case Aborted(group=group, source=source, target=target):
            return f"split {source} -> {target} of group {group!r} aborted"
    raise TypeError(f"not a split progress event: {event!r}")


#: events drawn as a progress bar on a terminal (one line per batch or table)
BATCH_EVENTS = (BatchCopied, BatchCleaned, CatchingUp, TableVerified)


class _Progress:
    """Phase lines always; batch lines as a one-line bar on a terminal, else every 5 s
    (verification lines, one per table, always)."""

    def __init__(self, command: Command) -> None:
        self.out = command.stdout
        self.tty = command.stdout.isatty() if hasattr(command.stdout, "isatty") else False
        self.last = 0.0

    def end_line(self) -> None:
        """Finish a progress bar's line, so that what follows starts on a line of its own."""
        if self.tty:
            self.out.write("")

    def __call__(self, event: SplitEvent) -> None:
        line = event_line(event)
        if not isinstance(event, BATCH_EVENTS):
            if self.tty:
                self.out.write("")
            self.out.write(line)
            return
        if self.tty:
            self.out.write(f"\r{line[:100]:<100}", ending="")
            self.out.flush()
        elif time.monotonic() - self.last >= 5 or isinstance(event, TableVerified):
            self.out.write(line)
            self.last = time.monotonic()
