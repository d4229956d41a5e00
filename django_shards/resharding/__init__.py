"""Splitting a shard online: plan, copy, verify, fenced cutover, clean-up."""

from django_shards.resharding.plan import SplitPlan, count_moving_rows, plan_split
from django_shards.resharding.runner import SplitRunner, abort, active_job, create_job

__all__ = [
    "SplitPlan",
    "SplitRunner",
    "abort",
    "active_job",
    "count_moving_rows",
    "create_job",
    "plan_split",
]
