"""Fixtures and hooks only; what tests share by import lives in ``tests/support/``."""

import os

import pytest
from django.db import connections
from hypothesis import settings as hypothesis_settings

from django_shards import context
from django_shards.replicas import pool
from django_shards.shardmap import registry
from tests.support.backend import MARIADB, wait_for_replicas
from tests.support.splitting import TARGETS as SPLIT_TARGETS

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
