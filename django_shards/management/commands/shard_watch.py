"""``shard_watch [GROUP ...] [--interval SECONDS] [--failures N] [--once] [--dry-run]``:
the automatic failover, a long-lived process like MaxScale's monitor.

Every ``--interval`` it probes the primary of every shard of the groups (all by default)
as the operator. A primary that fails ``--failures`` consecutive probes is failed over
(:class:`django_shards.failover.Failover`); a shard with an unfinished failover job has it
finished. A demoted primary that answers writable is made read-only. Every decision is
logged (logger ``django_shards.watch``) and printed with its evidence. SIGTERM or SIGINT
stops it between two probes. ``--once`` runs one round (up to ``--failures`` probes of a
failing primary) and exits; ``--dry-run`` says what it would do and changes nothing.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.core.management.base import CommandParser

from django_shards.conf import get_config
from django_shards.failover import Failover, FailoverError, fence_demoted, probe
from django_shards.management.commands._base import ShardsCommand, group_names
from django_shards.shardmap import registry

logger = logging.getLogger("django_shards.watch")


class Command(ShardsCommand):
    help = (
        "Probe every shard primary and fail over one that fails --failures consecutive "
        "probes, --interval apart; runs until SIGTERM/SIGINT (or one round with --once)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("groups", nargs="*", metavar="GROUP", help="default: every group")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between probes")
        parser.add_argument(
            "--failures", type=int, default=3, help="consecutive failed probes that fail over"
        )
        parser.add_argument("--once", action="store_true", help="one round, then exit")
        parser.add_argument("--dry-run", action="store_true", help="decide, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        interval, failures = options["interval"], options["failures"]
        if interval <= 0:
            self.fail(f"--interval must be a positive number of seconds, not {interval}.")
        if failures < 1:
            self.fail(f"--failures must be at least 1, not {failures}.")
        groups = options["groups"] or list(get_config().groups)
        for group in groups:
            group_names(group)  # unknown group: CommandError, exit 2
        if get_config().operator is None:
            self.fail(
                'shard_watch needs DJANGO_SHARDS["OPERATOR"]: it probes and promotes as the '
                "operator account."
            )
        self.dry_run = options["dry_run"]
        self.stop = threading.Event()
        previous = {
            sig: signal.signal(sig, lambda *_: self.stop.set())
            for sig in (signal.SIGTERM, signal.SIGINT)
        }
        #: (group, shard) -> consecutive failed probes of its primary
        self.failed: dict[tuple[str, str], int] = {}
        self.say(
            f"watching {', '.join(groups)}: a primary failing {failures} probes "
            f"{interval:g}s apart is failed over" + (" (dry run)" if self.dry_run else "")
        )
        rounds = 0
        try:
            while not self.stop.is_set():
                failing = self.round(groups, failures)
                rounds += 1
                if options["once"] and (not failing or rounds >= failures):
                    break
                if self.stop.wait(interval):
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.say("stopped")

    def say(self, line: str, level: int = logging.INFO) -> None:
        logger.log(level, line)
        self.stdout.write(line)

    def round(self, groups: list[str], failures: int) -> bool:
        """Probe every primary once; True while some primary is failing (not yet acted on)."""
        failing = False
        for group in groups:
            try:
                shard_map = registry.refresh(group)
            except Exception as exc:  # noqa: BLE001 - the catalog down: no decision now
                self.say(f"{group}: map not read ({exc}); no decision", logging.WARNING)
                continue
            for shard in shard_map.shards.values():
                if self.stop.is_set():
                    return False
                failing |= self.watch_shard(group, shard, failures)
        return failing

    def watch_shard(self, group: str, shard: Any, failures: int) -> bool:
        for alias in shard.demoted:
            if not self.dry_run and fence_demoted(alias):
                self.say(f"{group}/{shard.name}: demoted {alias} answered writable: made read-only")
        failover = Failover(group, shard.name, report=lambda line: self.say(f"  {line}"))
        unfinished = failover.unfinished()
        if unfinished is not None:
            self.say(f"{group}/{shard.name}: finishing {unfinished.kind} job {unfinished.pk}")
            return self.act(failover, None)
        state = probe(shard.primary, replica=False)
        key = (group, shard.name)
        if state.reachable:
            if self.failed.pop(key, 0):
                self.say(f"{group}/{shard.name}: primary {shard.primary} answers again")
            return False
        count = self.failed[key] = self.failed.get(key, 0) + 1
        self.say(
            f"{group}/{shard.name}: primary {shard.primary} failed probe {count}/{failures}: "
            f"{state.error}",
            logging.WARNING,
        )
        if count < failures:
            return True
        try:
            plan = failover.plan()
        except FailoverError as exc:
            self.say(f"{group}/{shard.name}: no failover: {exc}", logging.ERROR)
            return True
        for line in plan.lines():
            self.say(f"  {line}")
        if self.dry_run:
            self.say(f"{group}/{shard.name}: dry run: would promote {plan.candidate}")
            return False
        self.failed.pop(key, None)
        return self.act(failover, plan)

    def act(self, failover: Failover, plan: Any) -> bool:
        if self.dry_run:
            return False
        try:
            job = failover.run(plan)
        except Exception as exc:  # noqa: BLE001 - logged; the next round finishes the job
            self.say(
                f"{failover.group}/{failover.shard_name}: failover stopped: {exc}",
                logging.ERROR,
            )
            return True
        self.say(
            f"{job.group}/{job.shard}: {job.kind} done, primary {job.new_primary} "
            f"(was {job.old_primary})"
        )
        return False
