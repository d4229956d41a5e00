"""Snowflake ids: unique, increasing per node, thread-safe, safe when the clock steps back."""

import threading

import pytest
from django.test import override_settings

from django_shards.ids import (
    EPOCH_MS,
    SnowflakeField,
    SnowflakeGenerator,
    reset_generator,
    snowflake_parts,
)
from tests.testapp.models import Author


def test_bit_layout_is_ms_since_2020_node_and_sequence():
    gen = SnowflakeGenerator(node_id=513, clock=lambda: 1700000000.0)
    first, second = gen(), gen()
    ms = 1700000000000 - EPOCH_MS
    assert first == (ms << 22) | (513 << 12) | 0
    assert second == first + 1
    assert snowflake_parts(first) == {"ms": 1700000000000, "node": 513, "sequence": 0}


def test_ids_are_unique_and_increasing_across_threads():
    gen = SnowflakeGenerator(node_id=1)
    out = [[] for _ in range(8)]

    def work(bucket):
        for _ in range(5000):
            bucket.append(gen())

    threads = [threading.Thread(target=work, args=(b,)) for b in out]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for bucket in out for i in bucket]
    assert len(set(every)) == len(every) == 40000
    for bucket in out:
        assert bucket == sorted(bucket)


def test_clock_stepping_back_never_repeats_or_decreases():
    now = [1700000000.000]
    gen = SnowflakeGenerator(node_id=7, clock=lambda: now[0])
    before = [gen() for _ in range(3)]
    now[0] -= 5.0  # NTP steps the clock back five seconds
    after = [gen() for _ in range(3)]
    ids = before + after
    assert ids == sorted(ids) and len(set(ids)) == 6


def test_sequence_overflow_borrows_the_next_millisecond():
    gen = SnowflakeGenerator(node_id=0, clock=lambda: 1700000000.0)
    ids = [gen() for _ in range(4097)]
    assert len(set(ids)) == 4097 and ids == sorted(ids)
    assert snowflake_parts(ids[-1])["ms"] == 1700000000001


def test_node_id_out_of_range_is_refused():
    with pytest.raises(ValueError, match=r"0..1023"):
        SnowflakeGenerator(node_id=1024)


def test_node_id_setting_is_used():
    from django.conf import settings

    with override_settings(DJANGO_SHARDS={**settings.DJANGO_SHARDS, "NODE_ID": 77}):
        reset_generator()
        assert snowflake_parts(Author(email="x@y.org").pk)["node"] == 77
    reset_generator()


def test_field_sets_the_id_when_the_instance_is_made():
    a, b = Author(email="a@x.org"), Author(email="b@x.org")
    assert isinstance(a.pk, int) and b.pk > a.pk


def test_field_deconstructs_without_its_default():
    _name, path, _args, kwargs = SnowflakeField(primary_key=True).deconstruct()
    assert path == "django_shards.ids.SnowflakeField"
    assert kwargs == {"primary_key": True}
