import os

import pytest
from django.conf import settings
from django.db import connections
from hypothesis import settings as hypothesis_settings

from django_shards import context
from django_shards.conf import get_config
from django_shards.replicas import pool
from django_shards.shardmap import registry

MARIADB = settings.SHARDS_DB == "mariadb"

# CI (HYPOTHESIS_PROFILE=ci, set by .ci/run) replays the same examples on every run, so a
# red CI always means a change broke something; elsewhere hypothesis explores new inputs.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_modifyitems(config, items):
    if MARIADB:
        return
    skip = pytest.mark.skip(reason="needs the MariaDB topology (SHARDS_DB=mariadb)")
    for item in items:
        if "mariadb" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_routing_state():
    """Each test starts with no pins, no replica marked down and maps re-read."""
    registry.reset()
    pool.reset()
    context.clear_pins()
    yield
    context.clear_pins()
    pool.reset()
    registry.reset()


#: spare primaries the split tests use as targets
SPLIT_TARGETS = ("s4", "s5")


@pytest.fixture(autouse=True)
def _split_targets_start_without_tables(request):
    """A transactional test may split onto s4/s5, creating the group's tables there. Drop
    them afterwards: the test database flush skips tables the (reset) map no longer routes
    to those aliases, and a later split must find its target empty."""
    yield
    marker = request.node.get_closest_marker("django_db")
    if marker is None or not marker.kwargs.get("transaction"):
        return
    from tests.testapp import models as m

    registry.reset()
    for alias in SPLIT_TARGETS:
        conn = connections[alias]
        with conn.cursor() as cursor:
            existing = set(conn.introspection.table_names(cursor))
        victims = [
            model
            for model in (m.Follow, m.Post, m.Author, m.Event, m.Reading, m.LegacyCode)
            if model._meta.db_table in existing
        ]
        if victims:
            with conn.schema_editor() as editor:
                for model in victims:
                    editor.delete_model(model)
    if MARIADB:
        wait_for_replicas()


def wait_for_replicas(timeout: float = 10.0) -> None:
    """Block until every replica has applied everything its primary committed.

    SQLite replicas read the primary's file, so there is nothing to wait for.
    """
    if not MARIADB:
        return
    for group in get_config().groups.values():
        for spec in group.shards:
            shard = spec.shard
            with connections[shard.primary].cursor() as cur:
                cur.execute("SELECT @@gtid_binlog_pos")
                (pos,) = cur.fetchone()
            for replica in shard.replicas:
                with connections[replica].cursor() as cur:
                    cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [pos, timeout])
                    (result,) = cur.fetchone()
                assert result == 0, f"replica {replica} did not catch up with {pos}"


@pytest.fixture
def replicas_caught_up():
    return wait_for_replicas
