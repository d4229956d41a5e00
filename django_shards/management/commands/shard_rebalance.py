"""``manage.py shard_rebalance [GROUP] [--dry-run] [--no-input] [--json]``: split every hot
shard onto the next free spare.

The planning and the running are :mod:`django_shards.resharding.rebalance`'s; the splits
are ``shard_split``'s, with its progress lines (:func:`.shard_split.event_line`).

Exit codes: 0 when every planned split is done, when nothing is hot, and for a dry run; 1
when a split stopped (the message names the ``shard_split ... --resume`` that continues
it; the splits before it are done); 2 for bad input and when shards are hot but no spare
is free (nothing changed).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_shards.conf import get_config
from django_shards.management.commands._base import (
    EXIT_UNHEALTHY,
    ShardsCommand,
    error_reason,
    group_names,
)
from django_shards.management.commands.shard_split import BATCH_EVENTS, event_line, not_answering
from django_shards.resharding.progress import SplitEvent
from django_shards.resharding.rebalance import (
    Rebalance,
    RebalanceStep,
    StepFailed,
    plan_rebalance,
    run_step,
)


class Command(ShardsCommand):
    help = (
        "Split every hot shard (by rows or by load, as shard_status shows) onto the next free "
        "entry of SPARES, one split after another; --dry-run prints the plan and changes "
        "nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "group", nargs="?", metavar="GROUP", help="Rebalance only this group (default: all)."
        )
        parser.add_argument("--dry-run", action="store_true", help="print the plan only")
        parser.add_argument(
            "--no-input", action="store_false", dest="interactive", help="do not ask to confirm"
        )
        parser.add_argument(
            "--json", action="store_true", help="print the plan and results as JSON"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        groups = group_names(options["group"])
        with self.step(f"read the shard maps and load from the catalog ({get_config().catalog})"):
            rebalance = plan_rebalance(groups)  # NoSpareLeft: a SplitError, exit 2
        as_json = options["json"]
        data: dict[str, Any] = {
            "dry_run": options["dry_run"],
            "plan": [s.as_dict() for s in rebalance.steps],
            "skipped": rebalance.skipped,
            "done": [],
        }
        if not as_json:
            self._print_plan(rebalance)
        if not rebalance.steps or options["dry_run"]:
            if as_json:
                self.write_json(data)
            elif rebalance.steps:
                self.stdout.write("dry run: nothing was changed.")
            return
        if options["interactive"] and not as_json and sys.stdin.isatty():
            answer = input(f"Run {len(rebalance.steps)} split(s)? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                self.stdout.write("Nothing was changed.")
                return
        report = (lambda event: None) if as_json else self._report
        for step in rebalance.steps:
            if not as_json:
                self.stdout.write(f"splitting {step.group}/{step.source} into {step.target}")
            try:
                job = run_step(step, report=report)
            except StepFailed as failed:
                data["failed"] = {**step.as_dict(), "phase": failed.job.phase}
                if as_json:
                    self.write_json(data)
                raise CommandError(
                    f"The split {step.source} -> {step.target} of group {step.group!r} stopped "
                    f"at phase {failed.job.phase}: {error_reason(failed.cause)}"
                    f"{not_answering(failed.job)}. Fix the cause and run `{failed.resume}` "
                    f"(or --abort before the cutover); then shard_rebalance again for the rest."
                    + _done_text(data["done"]),
                    returncode=EXIT_UNHEALTHY,
                ) from failed.cause
            copied = sum(v.get("rows", 0) for v in job.progress.get("copy", {}).values())
            data["done"].append({**step.as_dict(), "rows_moved": copied})
            if not as_json:
                self.stdout.write(
                    f"split {step.source} -> {step.target} of group {step.group!r} done: "
                    f"{copied} rows moved onto {step.spare.primary}."
                )
        if as_json:
            self.write_json(data)

    def _report(self, event: SplitEvent) -> None:
        if not isinstance(event, BATCH_EVENTS):
            self.stdout.write(f"  {event_line(event)}")

    def _print_plan(self, rebalance: Rebalance) -> None:
        w = self.stdout.write
        if not rebalance.hot_shards:
            w("No hot shard: nothing to rebalance.")
            return
        for skipped in rebalance.skipped:
            w(f"{skipped['group']}/{skipped['shard']} is hot but left alone: {skipped['reason']}.")
        for i, step in enumerate(rebalance.steps, start=1):
            w(f"{i}. {step_line(step)}")


def step_line(step: RebalanceStep) -> str:
    """``events/s2 (hot by load) -> new shard s2_1 on s4 (replicas s4_r1), at 2600: 120 of
    400 testapp.Event rows move``"""
    replicas = ", ".join(step.spare.replicas) or "none"
    text = (
        f"{step.group}/{step.source} (hot by {' and '.join(step.hot)}) -> new shard "
        f"{step.target} on {step.spare.primary} (replicas {replicas})"
    )
    plan = step.plan
    if plan is None:
        return text + ", planned once the split before it is done"
    if plan.at is not None:
        text += f", split at {plan.at!r}"
    moving = ", ".join(
        f"{plan.moving_rows[label]} of {plan.source_rows[label]} {label}"
        for label in plan.moving_rows
    )
    return f"{text}: {moving or 'no rows'} move"


def _done_text(done: list[dict[str, Any]]) -> str:
    if not done:
        return ""
    names = ", ".join(f"{d['group']}/{d['source']} -> {d['target']}" for d in done)
    return f" Done before it: {names}."
