"""While a split of a group is in a fence phase (catching_up, frozen, verified), every
process re-reads that group's map and freezes every ``FENCE_POLL_SECONDS`` (0.1 s), so a
freeze never waits a whole ``MAP_LEASE_SECONDS``; at other times the lease is the full one
and the map costs no extra catalog read.

The split job is written straight into the catalog (as another process's ``shard_split``
would), behind the back of this process's registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext

from django_shards.exceptions import ShardMoving
from django_shards.models import SplitJob
from django_shards.shardmap import FENCE_POLL_SECONDS, get_map, registry

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

GROUP, SOURCE, TARGET = "users", "s1", "s4"
LONG_LEASE = 30.0
MARGIN_SECONDS = 0.4  # a loaded 2-core machine, a catalog round trip


@pytest.fixture(autouse=True)
def _long_lease(settings):
    settings.DJANGO_SHARDS = {**settings.DJANGO_SHARDS, "MAP_LEASE_SECONDS": LONG_LEASE}


def add_job(phase: str, frozen: bool = False) -> SplitJob:
    """A split job of ``users`` from s1 to s4 in ``phase``, as ``shard_split`` records it;
    this process's next routing reads it (its map is dropped)."""
    shard_map = registry.refresh(GROUP)
    new_layout = shard_map.strategy.split(shard_map.layout, SOURCE, TARGET)
    target = {"name": TARGET, "primary": "s4", "replicas": ["s4_r1"]}
    job = SplitJob.objects.using("default").create(
        group=GROUP,
        source=SOURCE,
        target=TARGET,
        target_primary="s4",
        target_replicas=["s4_r1"],
        base_version=shard_map.version,
        new_shards=[*(s.as_dict() for s in shard_map.shards.values()), target],
        new_layout=new_layout.to_json(),
        phase=phase,
        frozen=frozen,
    )
    registry.reset_group(GROUP)
    return job


def moving_key() -> int:
    shard_map = get_map(GROUP)
    job = SplitJob.objects.using("default").get(group=GROUP)
    after = shard_map.strategy.load_layout(job.new_layout)
    return next(k for k in range(100_000) if shard_map.strategy.shard_for_key(after, k) == TARGET)


def seconds_until(condition: Callable[[], bool], deadline: float) -> float | None:
    """Poll ``condition`` until it holds (the seconds it took) or ``deadline`` passes (None)."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if condition():
            return time.monotonic() - started
        time.sleep(0.005)
    return None


def catalog_reads_while_routing(seconds: float) -> int:
    """Catalog queries made by this process's routing of ``users`` during ``seconds``."""
    with CaptureQueriesContext(connections["default"]) as captured:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            get_map(GROUP)
            time.sleep(0.005)
    return len(captured.captured_queries)


def test_a_freeze_set_while_catching_up_is_seen_within_the_fence_poll():
    add_job("catching_up")
    assert get_map(GROUP).fencing
    key = moving_key()
    get_map(GROUP).check_writable(key)  # not frozen yet

    SplitJob.objects.using("default").filter(group=GROUP).update(frozen=True)
    took = seconds_until(lambda: bool(get_map(GROUP).freezes), FENCE_POLL_SECONDS + 5)
    assert took is not None, "the freeze was never seen"
    assert took < FENCE_POLL_SECONDS + MARGIN_SECONDS, took
    with pytest.raises(ShardMoving):
        get_map(GROUP).check_writable(key)


@pytest.mark.parametrize("phase", ["frozen", "verified"])
def test_the_map_is_re_read_every_fence_poll_in_each_fence_phase(phase):
    add_job(phase, frozen=True)
    assert get_map(GROUP).fencing
    reads = catalog_reads_while_routing(0.5)
    # two queries per re-read (the jobs, the newest map version), about every 0.1 s
    assert 2 * 3 <= reads <= 2 * (0.5 / FENCE_POLL_SECONDS + 2), reads


@pytest.mark.parametrize("phase", [None, "prepared", "copying", "cut_over", "done"])
def test_outside_a_fence_the_lease_is_the_full_one(phase):
    if phase is not None:
        add_job(phase)
    shard_map = get_map(GROUP)
    assert not shard_map.fencing
    with CaptureQueriesContext(connections["default"]) as captured:
        registry.refresh(GROUP)
    assert len(captured.captured_queries) == 2  # the jobs and the map: no extra read
    assert catalog_reads_while_routing(0.5) == 0

    # a freeze written now is not seen before the lease runs out
    SplitJob.objects.using("default").filter(group=GROUP).update(frozen=True)
    if phase is not None:
        assert seconds_until(lambda: bool(get_map(GROUP).freezes), 0.5) is None


def test_the_fast_poll_ends_when_the_split_leaves_its_fence_phases():
    job = add_job("catching_up")
    assert get_map(GROUP).fencing
    SplitJob.objects.using("default").filter(pk=job.pk).update(phase="cut_over")
    took = seconds_until(lambda: not get_map(GROUP).fencing, FENCE_POLL_SECONDS + 5)
    assert took is not None and took < FENCE_POLL_SECONDS + MARGIN_SECONDS, took
    assert catalog_reads_while_routing(0.5) == 0
