"""Rebalancing: every hot shard split onto the next free spare (``shard_rebalance``).

A shard is hot as ``shard_status`` says (:func:`django_shards.status.collect_status`: by
rows or by load). Each hot shard gets one split onto the next free entry of ``SPARES``;
the new shard is named ``<source>_<n>`` (the smallest ``n`` from 1 that no shard of the
group has). A range shard splits at ``suggested_split_at`` (the key that halves its load;
without a load sample, the median key stored); ``hash`` and ``consistent_hash`` split the
way ``shard_split`` does by default. The splits are :mod:`django_shards.resharding`'s
(``plan_split``, ``create_job``, ``SplitRunner``), so they keep every guarantee of
``shard_split`` and run online where it would. They run one after another, each planned
again just before it starts (the previous split changed the map).

A spare is free when no shard of any group's current map and no split in progress names
its primary or a replica.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django_shards.conf import Spare, get_config
from django_shards.exceptions import SplitError
from django_shards.models import SplitJob
from django_shards.resharding.plan import SplitPlan, count_moving_rows, plan_split
from django_shards.resharding.progress import Report, ignore
from django_shards.resharding.runner import SplitRunner, active_job, create_job
from django_shards.shardmap import get_map, registry
from django_shards.status import collect_status


class NoSpareLeft(SplitError):
    """Hot shards to split, but no free entry of ``SPARES``: nothing was changed."""


@dataclass
class RebalanceStep:
    """One planned split: ``source`` of ``group`` onto ``spare`` as shard ``target``."""

    group: str
    source: str
    target: str
    spare: Spare
    hot: list[str]
    at: Any
    plan: SplitPlan | None = None

    def replan(self) -> SplitPlan:
        """Plan this split against the group's current map and count the rows that move
        (``SplitError`` with a clear sentence when it cannot be done)."""
        self.plan = plan_split(
            self.group, self.source, self.target, self.spare.primary, self.spare.replicas, self.at
        )
        count_moving_rows(self.plan)
        return self.plan

    def as_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "group": self.group,
            "source": self.source,
            "target": self.target,
            "primary": self.spare.primary,
            "replicas": list(self.spare.replicas),
            "hot": self.hot,
            "at": None if plan is None else plan.at,
            "moving_rows": {} if plan is None else plan.moving_rows,
            "source_rows": {} if plan is None else plan.source_rows,
        }


@dataclass
class Rebalance:
    """The plan: the splits to run, in order, and the hot shards left alone (and why)."""

    steps: list[RebalanceStep] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def hot_shards(self) -> int:
        return len(self.steps) + len(self.skipped)


def aliases_taken() -> set[str]:
    """Every alias a shard of a group's current map, or a split in progress, names."""
    taken: set[str] = set()
    for group in get_config().groups:
        for shard in get_map(group).shards.values():
            taken.update(shard.aliases)
            taken.update(shard.demoted)
    jobs = SplitJob.objects.using(get_config().catalog).filter(phase__in=SplitJob.ACTIVE_PHASES)
    for job in jobs:
        taken.add(job.target_primary)
        taken.update(job.target_replicas)
    return taken


def free_spares() -> list[Spare]:
    """The entries of ``SPARES`` no shard and no split in progress uses, in order."""
    taken = aliases_taken()
    return [s for s in get_config().spares if not taken & {s.primary, *s.replicas}]


def new_shard_name(existing: Iterable[str], source: str) -> str:
    """``<source>_<n>``, the smallest ``n`` from 1 not among ``existing``."""
    names = set(existing)
    n = 1
    while f"{source}_{n}" in names:
        n += 1
    return f"{source}_{n}"


def plan_rebalance(groups: list[str] | None = None) -> Rebalance:
    """The splits that would rebalance ``groups`` (all when None), each planned against
    the current map. Changes nothing.

    Raises ``NoSpareLeft`` when shards are hot but no spare is free, and ``SplitError``
    when a split cannot be planned (its sentence says why).
    """
    status = collect_status(groups)
    out = Rebalance()
    hot = []
    for group in status.groups:
        shard_map = group.shard_map or get_map(group.name)
        running = active_job(group.name)
        for shard in group.shards:
            if not shard.hot:
                continue
            if shard_map.strategy.split_refusal is not None:
                reason = shard_map.strategy.split_refusal
            elif running is not None:
                reason = (
                    f"a split of group {group.name!r} is in progress ({running.source} -> "
                    f"{running.target}); finish it first"
                )
            else:
                hot.append((group.name, shard, shard_map))
                continue
            out.skipped.append({"group": group.name, "shard": shard.name, "reason": reason})
    if not hot:
        return out
    spares = free_spares()
    if not spares:
        names = ", ".join(f"{g}/{s.name}" for g, s, _ in hot)
        raise NoSpareLeft(
            f"No free spare to split the hot shards onto ({names}): every entry of SPARES "
            "is in use. Add a database to DJANGO_SHARDS['SPARES']; nothing was changed."
        )
    # the busiest first, so that spares go where they help most
    hot.sort(key=lambda item: -(item[1].load or {}).get("share", 0.0))
    taken_names: dict[str, set[str]] = {}
    for name, shard, shard_map in hot:
        if not spares:
            reason = "no spare left in SPARES"
            out.skipped.append({"group": name, "shard": shard.name, "reason": reason})
            continue
        in_group = taken_names.setdefault(name, set(shard_map.shards))
        target = new_shard_name(in_group, shard.name)
        in_group.add(target)
        at = shard.suggested_split_at if shard_map.strategy.splits_at_key else None
        step = RebalanceStep(name, shard.name, target, spares.pop(0), list(shard.hot), at)
        if not any(s.group == name for s in out.steps):
            step.replan()  # a later split of the group is planned once the earlier one ran
        out.steps.append(step)
    return out


class StepFailed(Exception):
    """A split of the rebalance failed after it was recorded; its job says where, and
    ``resume`` is the command that continues it."""

    def __init__(self, step: RebalanceStep, job: SplitJob, cause: BaseException) -> None:
        super().__init__(f"split {step.source} -> {step.target} of group {step.group!r} failed")
        self.step = step
        self.job = job
        self.cause = cause

    @property
    def resume(self) -> str:
        return f"shard_split {self.step.group} {self.step.source} --resume"


def run_step(step: RebalanceStep, report: Report = ignore) -> SplitJob:
    """Plan ``step`` again against the current map, record it and run it to the end.

    Raises ``SplitError`` when it cannot be planned (nothing recorded), ``StepFailed`` when
    the recorded split stopped (its job records every phase: ``shard_split --resume``)."""
    registry.reset_group(step.group)
    job = create_job(step.replan())
    runner = None
    try:
        runner = SplitRunner(job, report=report)
        return runner.run()
    except Exception as exc:
        raise StepFailed(step, runner.job if runner is not None else job, exc) from exc
    finally:
        registry.reset_group(step.group)
