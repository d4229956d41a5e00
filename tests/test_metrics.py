"""Prometheus metrics (``django_shards.metrics``): what a scrape of
``prometheus_client.REGISTRY`` shows after real ORM traffic through the router, replica lag
and health from the monitor's cached probes (a scrape probes nothing), splits in progress,
a catalog that fails, and the staff-only ``metrics/`` URL.

Transactional: the ORM traffic and the split job are real rows on the shards and the
catalog.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

import pytest
from django.urls import reverse
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from django_shards import load, shard_for
from django_shards.health import monitor
from django_shards.models import SplitJob
from django_shards.shardmap import get_map
from tests.support.backend import unreachable
from tests.testapp.models import Author

db = pytest.mark.django_db(transaction=True, databases="__all__")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Samples:
    """Every sample of the default registry, as Prometheus would read it."""
    text = generate_latest(REGISTRY).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


def authors_on(shard: str, count: int) -> list[Author]:
    """Unsaved authors whose ids all fall on ``shard`` of group users."""
    out: list[Author] = []
    while len(out) < count:
        a = Author(email=f"author{len(out)}@example.org")
        if shard_for(Author, a.pk).name == shard:
            out.append(a)
    return out


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    """Counts and probes start from nothing: each test sees only its own traffic."""
    load.counter.reset()
    monitor.forget()
    yield
    load.counter.reset()
    monitor.forget()


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(user)
    return client


# -- load: what the router counted ------------------------------------------------------------


@db
def test_routed_queries_are_exported_per_group_shard_and_kind():
    authors = authors_on("s1", 3)
    for a in authors:
        a.save()  # 3 writes of one row on s1
    for a in authors:
        assert Author.objects.strong().get(pk=a.pk).email == a.email  # 3 reads on s1
    assert Author.objects.strong().count() == 3  # a fan-out: one read on each of 4 shards

    samples = scrape()

    def users(name: str, shard: str, kind: str) -> float | None:
        return sample(samples, name, group="users", shard=shard, kind=kind)

    assert users("django_shards_queries_total", "s1", "write") == 3
    assert users("django_shards_rows_total", "s1", "write") == 3
    assert users("django_shards_queries_total", "s1", "read") == 4
    for other in ("s0", "s2", "s3"):
        assert users("django_shards_queries_total", other, "read") == 1
        assert users("django_shards_queries_total", other, "write") == 0
    # the histogram: one count per query, cumulative buckets ending at +Inf, time summed
    assert users("django_shards_query_seconds_count", "s1", "write") == 3
    assert users("django_shards_query_seconds_sum", "s1", "write") > 0
    inf = sample(
        samples,
        "django_shards_query_seconds_bucket",
        group="users",
        shard="s1",
        kind="write",
        le="+Inf",
    )
    assert inf == 3
    buckets = [
        sample(
            samples,
            "django_shards_query_seconds_bucket",
            group="users",
            shard="s1",
            kind="write",
            le=str(bound),
        )
        for bound in load.LATENCY_BUCKETS
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert sample(samples, "django_shards_fanouts_total", group="users") == 1
    assert sample(samples, "django_shards_fanout_shards_total", group="users") == 4
    assert sample(samples, "django_shards_shard_moving_total", group="users") == 0
    # a group with no traffic is exported too, at zero (rate() works from the first query)
    assert (
        sample(samples, "django_shards_queries_total", group="events", shard="s0", kind="read") == 0
    )
    assert sample(samples, "django_shards_fanouts_total", group="events") == 0


@db
def test_counts_since_the_process_started_only_grow_between_scrapes():
    (a,) = authors_on("s2", 1)
    a.save()
    first = sample(scrape(), "django_shards_queries_total", group="users", shard="s2", kind="write")
    a.email = "changed@example.org"
    a.save()
    second = sample(
        scrape(), "django_shards_queries_total", group="users", shard="s2", kind="write"
    )
    assert first == 1
    assert second == 2


# -- health: from the monitor's cache ---------------------------------------------------------


@db
def test_replica_lag_appears_once_the_monitor_has_probed_the_replica():
    assert series(scrape(), "django_shards_alias_up") == []  # a scrape probes nothing
    assert series(scrape(), "django_shards_replica_lag_seconds") == []

    health = monitor.get("s2_r1", "replica", max_age=0)
    primary = monitor.get("s2", "primary", max_age=0)
    samples = scrape()

    assert health.healthy and health.lag_seconds is not None
    for group in ("users", "events", "metrics"):  # s2 is a shard of each
        where = {"group": group, "shard": "s2", "alias": "s2_r1"}
        assert sample(samples, "django_shards_replica_lag_seconds", **where) == health.lag_seconds
        assert sample(samples, "django_shards_alias_up", **where, role="replica") == 1
        age = sample(samples, "django_shards_alias_probe_age_seconds", **where)
        assert age is not None and 0 <= age < 60
        assert primary.healthy
        assert (
            sample(
                samples,
                "django_shards_alias_up",
                group=group,
                shard="s2",
                alias="s2",
                role="primary",
            )
            == 1
        )
    # only what was probed: no other alias has a health series
    assert {s["alias"] for s in series(samples, "django_shards_alias_up")} == {"s2", "s2_r1"}
    # a primary has no lag series
    assert {s["alias"] for s in series(samples, "django_shards_replica_lag_seconds")} == {"s2_r1"}


@db
def test_an_unreachable_replica_is_exported_down_with_no_lag():
    with unreachable("s3_r1"):
        health = monitor.get("s3_r1", "replica", max_age=0)
    samples = scrape()

    assert not health.reachable
    where = {"group": "users", "shard": "s3", "alias": "s3_r1"}
    assert sample(samples, "django_shards_alias_up", **where, role="replica") == 0
    assert sample(samples, "django_shards_replica_lag_seconds", **where) is None


# -- splits in progress, and a catalog that fails ---------------------------------------------


def _split_in_progress() -> SplitJob:
    users = get_map("users")
    return SplitJob.objects.create(
        group="users",
        source="s1",
        target="s5",
        target_primary="s5",
        target_replicas=["s5_r1"],
        base_version=users.version,
        new_shards=[s.as_dict() for s in users.shards.values()],
        new_layout=users.strategy.split(users.layout, "s1", "s5").to_json(),
        phase=SplitJob.Phase.COPYING,
        progress={
            "mode": "frozen",
            "copy": {"testapp.Author": {"rows": 120}, "testapp.Post": {"rows": 30}},
        },
    )


@db
def test_a_split_in_progress_is_exported_with_its_phase_and_rows_copied():
    _split_in_progress()
    SplitJob.objects.create(  # finished: not exported
        group="users",
        source="s0",
        target="s4",
        target_primary="s4",
        base_version=1,
        new_shards=[],
        new_layout={},
        phase=SplitJob.Phase.DONE,
    )
    samples = scrape()

    where = {"group": "users", "source": "s1", "target": "s5"}
    assert sample(samples, "django_shards_split_phase", **where, phase="copying") == 1
    assert sample(samples, "django_shards_split_rows_copied", **where) == 150
    assert len(series(samples, "django_shards_split_phase")) == 1


@db
def test_a_failing_catalog_does_not_fail_the_scrape(caplog):
    _split_in_progress()
    (a,) = authors_on("s0", 1)
    a.save()
    monitor.get("s0_r1", "replica", max_age=0)

    with caplog.at_level(logging.WARNING, logger="django_shards"), unreachable("default"):
        samples = scrape()

    # what the process holds is all there
    write = {"group": "users", "shard": "s0", "kind": "write"}
    assert sample(samples, "django_shards_queries_total", **write) == 1
    where = {"group": "users", "shard": "s0", "alias": "s0_r1"}
    assert sample(samples, "django_shards_alias_up", **where, role="replica") == 1
    # what only the catalog knows is left out, and the log says why
    assert series(samples, "django_shards_split_phase") == []
    assert "splits in progress not read from the catalog" in caplog.text


# -- the staff-only URL -----------------------------------------------------------------------


@db
def test_anonymous_visitor_is_sent_to_the_admin_login(client):
    response = client.get(reverse("django_shards:metrics"))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/?next=/shards/metrics/")


@db
def test_logged_in_user_who_is_not_staff_is_sent_to_the_admin_login(client, django_user_model):
    user = django_user_model.objects.create_user("someone", password="pw")
    client.force_login(user)
    response = client.get(reverse("django_shards:metrics"))
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@db
def test_staff_get_the_metrics_in_prometheus_text_format(staff_client):
    (a,) = authors_on("s3", 1)
    a.save()

    response = staff_client.get(reverse("django_shards:metrics"))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "no-cache" in response["Cache-Control"]
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    assert families["django_shards_queries"].type == "counter"
    assert families["django_shards_query_seconds"].type == "histogram"
    assert families["django_shards_replica_lag_seconds"].type == "gauge"
    line = 'django_shards_queries_total{group="users",kind="write",shard="s3"} 1.0'
    assert line in response.content.decode().splitlines()


@db
def test_without_prometheus_client_the_url_says_what_to_install(staff_client, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed

    response = staff_client.get(reverse("django_shards:metrics"))

    assert response.status_code == 501
    assert response["Content-Type"].startswith("text/plain")
    assert "pip install 'django-shards[metrics]'" in response.content.decode()
