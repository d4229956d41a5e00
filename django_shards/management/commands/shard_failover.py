"""``shard_failover GROUP SHARD [--to ALIAS] [--switchover] [--dry-run] [--no-input]
[--json]``: replace a shard's primary by one of its replicas.

The work is :mod:`django_shards.failover`'s; this command checks the input, prints the
plan with its evidence (each server's GTID positions), asks, and runs it. A job left
unfinished (the command killed half-way) is finished by running the command again.
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandParser

from django_shards.failover import Failover, FailoverError
from django_shards.management.commands._base import (
    EXIT_UNHEALTHY,
    ShardsCommand,
    format_json,
    group_names,
)
from django_shards.shardmap import get_map


class Command(ShardsCommand):
    #: the failover's hold hook (``Failover(hold=...)``); tests set it to stop at a phase
    hold: Any = None

    help = (
        "Replace a shard's primary by its most advanced replica (failover: the primary is "
        "down), or hand its role to a replica with no write lost (--switchover: the primary "
        "is up). --dry-run prints the choice and its evidence and changes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("group", help="the shard group")
        parser.add_argument("shard", help="the shard whose primary is replaced")
        parser.add_argument("--to", metavar="ALIAS", help="the replica to promote")
        parser.add_argument(
            "--switchover", action="store_true", help="planned: the primary is alive"
        )
        parser.add_argument("--dry-run", action="store_true", help="print the plan only")
        parser.add_argument(
            "--no-input", action="store_false", dest="interactive", help="do not ask to confirm"
        )
        parser.add_argument("--json", action="store_true", help="print the plan/result as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        group, shard = options["group"], options["shard"]
        group_names(group)  # unknown group: CommandError, exit 2
        with self.step(f"read the map of group {group!r}"):
            get_map(group).shard_named(shard)  # unknown shard: UnknownShard, exit 2
        as_json = options["json"]
        report = (lambda line: None) if as_json else (lambda line: self.stdout.write(line))
        failover = Failover(
            group,
            shard,
            to=options["to"],
            switchover=options["switchover"],
            report=report,
            hold=self.hold,
        )
        with self.step(f"read the failover jobs of {group}/{shard}"):
            unfinished = failover.unfinished()
        plan = None
        if unfinished is None:
            try:
                plan = failover.plan()
            except FailoverError as exc:
                self.fail(str(exc))
            if as_json and options["dry_run"]:
                self.stdout.write(format_json({"plan": plan.as_dict(), "dry_run": True}))
                return
            if not as_json:
                for line in plan.lines():
                    self.stdout.write(line)
            if options["dry_run"]:
                if not as_json:
                    self.stdout.write("dry run: nothing was changed.")
                return
            if options["interactive"] and sys.stdin.isatty():
                answer = input(f"Proceed with the {plan.kind}? [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    self.stdout.write("nothing was changed.")
                    return
        elif options["dry_run"]:
            message = (
                f"{unfinished.kind} job {unfinished.pk} of {group}/{shard} is unfinished "
                f"(phase {unfinished.phase}): running the command again finishes it."
            )
            self.stdout.write(
                format_json({"unfinished": _job_dict(unfinished)}) if as_json else message
            )
            return
        try:
            job = failover.run(plan)
        except FailoverError as exc:
            self.fail(
                f"{exc} Run the command again to finish or retry it.", returncode=EXIT_UNHEALTHY
            )
        except Exception as exc:  # noqa: BLE001 - any failure: the job records where it stopped
            left = failover.unfinished()
            where = f" (job {left.pk}, phase {left.phase})" if left is not None else ""
            self.fail(
                f"The {(failover.switchover and 'switchover') or 'failover'} of {group}/{shard} "
                f"stopped{where}: {' '.join(str(exc).split())}. Run the command again to "
                "finish it.",
                returncode=EXIT_UNHEALTHY,
            )
        if as_json:
            self.stdout.write(format_json({"job": _job_dict(job)}))
        else:
            self.stdout.write(
                f"{job.kind} done: {job.group}/{job.shard} primary is {job.new_primary} "
                f"(was {job.old_primary})"
            )


def _job_dict(job: Any) -> dict[str, Any]:
    return {
        "id": job.pk,
        "group": job.group,
        "shard": job.shard,
        "kind": job.kind,
        "old_primary": job.old_primary,
        "new_primary": job.new_primary,
        "replicas": job.replicas,
        "phase": job.phase,
        "steps": job.steps,
    }
