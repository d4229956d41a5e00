"""Placement strategies: keys land exactly where DESIGN.md says, splits move only what they must.

The reference placements below are written out inline with ``hashlib`` from the formulas in
DESIGN.md, on purpose independent of the code under test. No database is touched.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import hashlib
import json
import random
import uuid
from bisect import bisect_right
from collections import Counter
from itertools import pairwise
from typing import Any

import pytest
from django.utils.safestring import SafeString
from hypothesis import given, settings
from hypothesis import strategies as st

from django_shards.conf import GroupSettings, Shard, ShardSettings, strategy_path
from django_shards.exceptions import NoShardForKey, SplitError
from django_shards.strategies import load_strategy
from django_shards.strategies.consistent_hash import ConsistentHashStrategy, RingLayout
from django_shards.strategies.hash import HashStrategy
from django_shards.strategies.modulo import ModuloStrategy
from django_shards.strategies.range import RangeLayout, RangeStrategy

# --- helpers ---------------------------------------------------------------------------


class FakeInstance:
    """Looks like a model instance to the strategies: it has ``_meta`` and ``pk``."""

    _meta = object()

    def __init__(self, pk: Any) -> None:
        self.pk = pk


def shard(name: str, rng: Any = None) -> ShardSettings:
    return ShardSettings(shard=Shard(name, f"{name}_db"), range=rng)


def group(strategy: str, *shards: ShardSettings, **options: Any) -> GroupSettings:
    return GroupSettings(name="g", strategy=strategy_path(strategy), options=options, shards=shards)


def names(n: int) -> list[str]:
    return [f"s{i}" for i in range(n)]


def text(key: Any) -> bytes:
    """Canonical text as DESIGN.md defines it: str(key), a model instance's pk, UTF-8."""
    if isinstance(key, FakeInstance):
        key = key.pk
    return str(key).encode("utf-8")


def ref_hash(key: Any, shard_names: list[str]) -> str:
    point = int.from_bytes(hashlib.md5(text(key)).digest()[:8], "big")
    n = len(shard_names)
    for i, name in enumerate(shard_names):
        if i * 2**64 // n <= point < (i + 1) * 2**64 // n:
            return name
    raise AssertionError("point outside the 64-bit space")


def ref_ring(shard_names: list[str], vnodes: int = 256) -> tuple[list[int], list[str]]:
    ring = sorted(
        (int(hashlib.sha1(f"{s}:{i}".encode()).hexdigest(), 16), s)
        for s in shard_names
        for i in range(vnodes)
    )
    return [t for t, _ in ring], [s for _, s in ring]


def ref_consistent(key: Any, ring: tuple[list[int], list[str]]) -> str:
    tokens, owners = ring
    point = int(hashlib.sha1(text(key)).hexdigest(), 16)
    i = bisect_right(tokens, point)  # first token strictly greater than the point
    return owners[i] if i < len(owners) else owners[0]


def ref_modulo(key: Any, shard_names: list[str]) -> str:
    return shard_names[int(hashlib.md5(text(key)).hexdigest(), 16) % len(shard_names)]


class Color(enum.IntEnum):
    RED = 1


class PlainInt(int):
    def __str__(self) -> str:
        return f"PlainInt({int(self)})"


_rng = random.Random(20240101)
SAMPLE_KEYS: list[Any] = [
    *range(-50, 1500),
    *(_rng.getrandbits(64) for _ in range(300)),
    *(f"user-{i}" for i in range(300)),
    "",
    "ключ",
    "键",
    "🔑 key",
    "café",
    "a\u0301",
    *(FakeInstance(pk) for pk in (1, 2, 3, 10**18, "p-1", "ключ")),
    # not plain ints or strings: placed by str(key) all the same
    True,
    False,
    1.5,
    decimal.Decimal("1.50"),
    uuid.UUID(int=12345),
    datetime.date(2024, 2, 29),
    Color.RED,
    SafeString("safe"),
    PlainInt(77),
]

MANY_INT_KEYS = range(20_000)


def placements(strategy: Any, layout: Any, keys: Any) -> dict[Any, str]:
    return {key: strategy.shard_for_key(layout, key) for key in keys}


def roundtrip(strategy: Any, layout: Any) -> Any:
    return strategy.load_layout(json.loads(json.dumps(layout.to_json())))


# --- loading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("short_name", "cls"),
    [
        ("range", RangeStrategy),
        ("hash", HashStrategy),
        ("consistent_hash", ConsistentHashStrategy),
        ("modulo", ModuloStrategy),
    ],
)
def test_builtin_strategy_names_load_their_classes(short_name: str, cls: type) -> None:
    strategy = load_strategy(strategy_path(short_name), {})
    assert type(strategy) is cls
    assert strategy.name == short_name
    assert strategy.ordered is (short_name == "range")


# --- hash ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16])
def test_hash_places_keys_by_md5_first_8_bytes(n: int) -> None:
    strategy = HashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(n)])
    for key in SAMPLE_KEYS:
        assert strategy.shard_for_key(layout, key) == ref_hash(key, names(n)), key


def test_hash_point_is_big_endian_first_8_bytes_of_md5() -> None:
    strategy = HashStrategy()
    for key in ["x", 42, "ключ", FakeInstance(7)]:
        expected = int(hashlib.md5(text(key)).hexdigest()[:16], 16)
        assert strategy.point(key) == expected
    assert strategy.point(FakeInstance(7)) == strategy.point(7) == strategy.point("7")


def test_hash_shards_own_equal_slices_of_the_64_bit_space() -> None:
    strategy = HashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(4)])
    assert strategy.share(layout) == {name: 0.25 for name in names(4)}
    assert strategy.describe(layout) == {
        "s0": "[0x0000000000000000, 0x4000000000000000)",
        "s1": "[0x4000000000000000, 0x8000000000000000)",
        "s2": "[0x8000000000000000, 0xc000000000000000)",
        "s3": "[0xc000000000000000, 0x10000000000000000)",
    }
    assert layout.shard_names() == tuple(names(4))


def test_hash_explicit_ranges_place_points_in_their_interval() -> None:
    strategy = HashStrategy()
    cut = 2**64 // 10
    layout = strategy.initial_layout([shard("small", [None, cut]), shard("big", [cut, None])])
    for key in SAMPLE_KEYS:
        point = int.from_bytes(hashlib.md5(text(key)).digest()[:8], "big")
        assert strategy.shard_for_key(layout, key) == ("small" if point < cut else "big")
    assert strategy.share(layout)["small"] == pytest.approx(0.1)


def test_hash_split_halves_the_source_and_moves_only_its_keys_to_the_target() -> None:
    strategy = HashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(4)])
    after = strategy.split(layout, "s1", "s4")
    before_map = placements(strategy, layout, MANY_INT_KEYS)
    after_map = placements(strategy, after, MANY_INT_KEYS)
    moved = [k for k in MANY_INT_KEYS if before_map[k] != after_map[k]]
    assert moved
    assert all(before_map[k] == "s1" and after_map[k] == "s4" for k in moved)
    source_keys = sum(1 for k in MANY_INT_KEYS if before_map[k] == "s1")
    assert 0.45 < len(moved) / source_keys < 0.55
    assert strategy.describe(after)["s1"] == "[0x4000000000000000, 0x6000000000000000)"
    assert strategy.describe(after)["s4"] == "[0x6000000000000000, 0x8000000000000000)"
    assert strategy.share(after)["s1"] == strategy.share(after)["s4"] == 0.125


def test_hash_split_of_a_shard_with_several_ranges_halves_its_largest() -> None:
    strategy = HashStrategy()
    q = 2**62
    layout = strategy.load_layout(
        {
            "ranges": [
                {"shard": "a", "lo": "0", "hi": str(q)},
                {"shard": "b", "lo": str(q), "hi": str(2 * q)},
                {"shard": "a", "lo": str(2 * q), "hi": str(4 * q)},
            ]
        }
    )
    after = strategy.split(layout, "a", "c")
    assert after.intervals == (
        (0, q, "a"),
        (q, 2 * q, "b"),
        (2 * q, 3 * q, "a"),
        (3 * q, 4 * q, "c"),
    )


@pytest.mark.parametrize(
    ("source", "target", "at", "message"),
    [
        ("nope", "new", None, "shard 'nope' owns no range"),
        ("s0", "s1", None, "shard 's1' already owns a range"),
        ("s0", "new", 5, "only applies to range groups"),
    ],
)
def test_hash_split_refuses_bad_requests(source: str, target: str, at: Any, message: str) -> None:
    strategy = HashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(2)])
    with pytest.raises(SplitError, match=message):
        strategy.split(layout, source, target, at)


def test_hash_layout_json_round_trip_keeps_placement() -> None:
    strategy = HashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(3)])
    layout = strategy.split(strategy.split(layout, "s2", "s3"), "s2", "s4")
    data = json.loads(json.dumps(layout.to_json()))
    assert all(isinstance(r["lo"], str) and isinstance(r["hi"], str) for r in data["ranges"])
    loaded = strategy.load_layout(data)
    assert loaded == layout
    assert placements(strategy, loaded, SAMPLE_KEYS) == placements(strategy, layout, SAMPLE_KEYS)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12))
def test_hash_any_sequence_of_splits_still_tiles_the_space(picks: list[int]) -> None:
    strategy = HashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(3)])
    for i, pick in enumerate(picks):
        current = layout.shard_names()
        layout = strategy.split(layout, current[pick % len(current)], f"new{i}")
    assert sum(strategy.share(layout).values()) == pytest.approx(1.0)
    for key in SAMPLE_KEYS[:200]:
        point = int.from_bytes(hashlib.md5(text(key)).digest()[:8], "big")
        owner = strategy.shard_for_key(layout, key)
        assert any(lo <= point < hi and name == owner for lo, hi, name in layout.intervals)


# --- consistent_hash -------------------------------------------------------------------


@pytest.mark.parametrize(("n", "vnodes"), [(1, 4), (3, 256), (5, 64), (8, 256)])
def test_consistent_hash_places_keys_on_the_next_sha1_token(n: int, vnodes: int) -> None:
    strategy = ConsistentHashStrategy({"vnodes": vnodes})
    layout = strategy.initial_layout([shard(name) for name in names(n)])
    ring = ref_ring(names(n), vnodes)
    for key in SAMPLE_KEYS:
        assert strategy.shard_for_key(layout, key) == ref_consistent(key, ring), key


def test_consistent_hash_point_on_a_token_goes_to_the_next_token() -> None:
    strategy = ConsistentHashStrategy({"vnodes": 8})
    layout = strategy.initial_layout([shard(name) for name in names(3)])
    tokens, owners = ref_ring(names(3), 8)
    for i, token in enumerate(tokens):
        assert strategy.locate(layout, token) == owners[(i + 1) % len(owners)]
        assert strategy.locate(layout, token - 1) == owners[i]
    assert strategy.locate(layout, tokens[-1] + 1) == owners[0]  # wraps to the first token
    assert strategy.locate(layout, 0) == owners[0]


def test_consistent_hash_defaults_to_256_tokens_per_shard() -> None:
    strategy = ConsistentHashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(4)])
    assert {name: len(tokens) for name, tokens in layout.tokens.items()} == dict.fromkeys(
        names(4), 256
    )
    shares = strategy.share(layout)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(0.15 < s < 0.35 for s in shares.values())
    assert strategy.describe(layout)["s0"] == f"256 tokens, {100 * shares['s0']:.1f}% of ring"


def test_consistent_hash_share_sums_arcs_ending_at_each_token() -> None:
    strategy = ConsistentHashStrategy({"vnodes": 16})
    layout = strategy.initial_layout([shard(name) for name in names(3)])
    tokens, owners = ref_ring(names(3), 16)
    expected = Counter()
    for i, token in enumerate(tokens):
        previous = tokens[i - 1] if i else tokens[-1] - 2**160
        expected[owners[i]] += token - previous
    assert strategy.share(layout) == {name: expected[name] / 2**160 for name in names(3)}


def test_consistent_hash_split_moves_about_half_the_source_keys_and_nothing_else() -> None:
    strategy = ConsistentHashStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(4)])
    after = strategy.split(layout, "s2", "s4")
    before_map = placements(strategy, layout, MANY_INT_KEYS)
    after_map = placements(strategy, after, MANY_INT_KEYS)
    moved = [k for k in MANY_INT_KEYS if before_map[k] != after_map[k]]
    assert all(before_map[k] == "s2" and after_map[k] == "s4" for k in moved)
    source_keys = sum(1 for k in MANY_INT_KEYS if before_map[k] == "s2")
    assert 0.35 < len(moved) / source_keys < 0.65
    # every other token of the source, in ring order, changes hands
    source_tokens = sorted(layout.tokens["s2"])
    assert list(after.tokens["s2"]) == source_tokens[0::2]
    assert list(after.tokens["s4"]) == source_tokens[1::2]
    assert strategy.describe(after)["s4"].startswith("128 tokens, ")


def test_consistent_hash_adding_a_shard_moves_keys_only_to_it() -> None:
    strategy = ConsistentHashStrategy()
    four = strategy.initial_layout([shard(name) for name in names(4)])
    five = strategy.initial_layout([shard(name) for name in names(5)])
    before_map = placements(strategy, four, MANY_INT_KEYS)
    after_map = placements(strategy, five, MANY_INT_KEYS)
    moved = [k for k in MANY_INT_KEYS if before_map[k] != after_map[k]]
    assert all(after_map[k] == "s4" for k in moved)
    assert 0.7 / 5 < len(moved) / len(MANY_INT_KEYS) < 1.3 / 5


_token = st.one_of(
    st.integers(min_value=0, max_value=2**160 - 1),
    st.sampled_from([0, 1, 2**147, 2**148 - 1, 2**159, 2**160 - 1]),
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(st.sampled_from("abcd"), st.lists(_token, min_size=1, max_size=40), min_size=1),
    st.lists(st.integers(min_value=0, max_value=2**160 - 1), max_size=30),
)
def test_consistent_hash_any_ring_places_points_on_the_next_token(
    tokens: dict[str, list[int]], points: list[int]
) -> None:
    layout = RingLayout(tokens)
    ring = sorted({(t, name) for name, owned in tokens.items() for t in owned})
    probes = [*points, 0, 2**160 - 1, *(t for t, _ in ring), *(t - 1 for t, _ in ring if t)]
    for point in probes:
        expected = next((name for t, name in ring if t > point), ring[0][1])
        assert layout.locate(point) == expected


def test_consistent_hash_empty_ring_raises_no_shard_for_key() -> None:
    with pytest.raises(NoShardForKey, match="no tokens"):
        RingLayout({}).locate(5)


@pytest.mark.parametrize(
    ("source", "target", "at", "message"),
    [
        ("nope", "new", None, "shard 'nope' owns no tokens"),
        ("s0", "s1", None, "shard 's1' already owns tokens"),
        ("s0", "new", "k", "only applies to range groups"),
    ],
)
def test_consistent_hash_split_refuses_bad_requests(
    source: str, target: str, at: Any, message: str
) -> None:
    strategy = ConsistentHashStrategy({"vnodes": 8})
    layout = strategy.initial_layout([shard(name) for name in names(2)])
    with pytest.raises(SplitError, match=message):
        strategy.split(layout, source, target, at)


def test_consistent_hash_layout_json_round_trip_keeps_placement() -> None:
    strategy = ConsistentHashStrategy({"vnodes": 64})
    layout = strategy.split(strategy.initial_layout([shard(n) for n in names(3)]), "s1", "x")
    data = json.loads(json.dumps(layout.to_json()))
    assert all(isinstance(t, str) for tokens in data["tokens"].values() for t in tokens)
    loaded = strategy.load_layout(data)
    assert loaded == layout
    assert placements(strategy, loaded, SAMPLE_KEYS) == placements(strategy, layout, SAMPLE_KEYS)


def test_consistent_hash_loaded_layout_ignores_a_changed_vnodes_option() -> None:
    stored = ConsistentHashStrategy({"vnodes": 32}).initial_layout([shard(n) for n in names(2)])
    other = ConsistentHashStrategy({"vnodes": 512})
    assert roundtrip(other, stored) == stored


# --- modulo ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_modulo_places_keys_by_md5_mod_n_in_settings_order(n: int) -> None:
    strategy = ModuloStrategy()
    order = ["z", "a", "m", "b", "q", "c", "x", "d"][:n]  # settings order, not sorted
    layout = strategy.initial_layout([shard(name) for name in order])
    for key in SAMPLE_KEYS:
        assert strategy.shard_for_key(layout, key) == ref_modulo(key, order), key


def test_modulo_refuses_to_split_one_shard() -> None:
    strategy = ModuloStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(2)])
    with pytest.raises(SplitError) as excinfo:
        strategy.split(layout, "s0", "s2")
    assert str(excinfo.value) == (
        "modulo cannot split one shard: it can only double every shard. "
        "Use range, hash or consistent_hash to split a single shard."
    )


def test_modulo_layout_json_round_trip_keeps_placement() -> None:
    strategy = ModuloStrategy()
    layout = strategy.initial_layout([shard(name) for name in ["b", "a", "c"]])
    loaded = roundtrip(strategy, layout)
    assert loaded == layout
    assert loaded.shard_names() == ("b", "a", "c")
    assert placements(strategy, loaded, SAMPLE_KEYS) == placements(strategy, layout, SAMPLE_KEYS)


def test_unordered_strategies_cannot_prune_range_queries() -> None:
    for strategy in (HashStrategy(), ConsistentHashStrategy({"vnodes": 4}), ModuloStrategy()):
        layout = strategy.initial_layout([shard(name) for name in names(2)])
        assert strategy.shards_for_range(layout, 1, 10) is None


# --- range -----------------------------------------------------------------------------


def int_range_layout() -> tuple[RangeStrategy, RangeLayout]:
    strategy = RangeStrategy()
    layout = strategy.initial_layout(
        [
            shard("a", [None, 0]),
            shard("b", [0, 100]),
            shard("c", [100, 200]),
            shard("d", [200, None]),
        ]
    )
    return strategy, layout


def test_range_places_int_keys_in_half_open_intervals() -> None:
    strategy, layout = int_range_layout()
    expected = {-(10**30): "a", -1: "a", 0: "b", 99: "b", 100: "c", 199: "c", 200: "d"}
    expected[10**30] = "d"
    for key, owner in expected.items():
        assert strategy.shard_for_key(layout, key) == owner
        assert strategy.locate(layout, strategy.point(key)) == owner
    assert strategy.shard_for_key(layout, FakeInstance(150)) == "c"
    assert strategy.point(FakeInstance(150)) == 150


def test_range_settings_order_does_not_matter() -> None:
    strategy = RangeStrategy()
    layout = strategy.initial_layout([shard("hi", [10, None]), shard("lo", [None, 10])])
    assert layout.shard_names() == ("lo", "hi")
    assert strategy.shard_for_key(layout, 9) == "lo"
    assert strategy.shard_for_key(layout, 10) == "hi"


def test_range_places_string_keys_in_lexicographic_order() -> None:
    strategy = RangeStrategy()
    layout = strategy.initial_layout(
        [shard("a-l", [None, "m"]), shard("m-s", ["m", "t"]), shard("t-z", ["t", None])]
    )
    cases = {"": "a-l", "alice": "a-l", "lzzz": "a-l", "m": "m-s", "mallory": "m-s"}
    cases.update({"sz": "m-s", "t": "t-z", "zoe": "t-z", "ключ": "t-z"})
    for key, owner in cases.items():
        assert strategy.shard_for_key(layout, key) == owner


def test_range_places_date_and_datetime_keys() -> None:
    strategy = RangeStrategy()
    d = datetime.date
    layout = strategy.initial_layout(
        [shard("old", [None, d(2024, 1, 1)]), shard("new", [d(2024, 1, 1), None])]
    )
    assert strategy.shard_for_key(layout, d(2023, 12, 31)) == "old"
    assert strategy.shard_for_key(layout, d(2024, 1, 1)) == "new"
    utc = datetime.UTC
    cut = datetime.datetime(2024, 6, 1, 12, tzinfo=utc)
    layout = strategy.initial_layout([shard("h1", [None, cut]), shard("h2", [cut, None])])
    assert strategy.shard_for_key(layout, cut - datetime.timedelta(microseconds=1)) == "h1"
    paris = datetime.timezone(datetime.timedelta(hours=2))
    assert strategy.shard_for_key(layout, datetime.datetime(2024, 6, 1, 14, tzinfo=paris)) == "h2"


def test_range_key_outside_finite_bounds_raises_no_shard_for_key() -> None:
    strategy = RangeStrategy()
    layout = strategy.initial_layout([shard("a", [0, 100]), shard("b", [100, 200])])
    for key in (-1, 200, 10**6):
        with pytest.raises(NoShardForKey) as excinfo:
            strategy.shard_for_key(layout, key)
        assert str(key) in str(excinfo.value)
        assert "[0, 200)" in str(excinfo.value)


def test_range_key_in_a_gap_of_a_stored_layout_raises_no_shard_for_key() -> None:
    layout = RangeLayout([(0, 10, "a"), (20, 30, "b")])
    with pytest.raises(NoShardForKey, match=r"15 .*\[0, 10\), \[20, 30\)"):
        RangeStrategy().shard_for_key(layout, 15)


def test_range_key_of_another_type_raises_no_shard_for_key() -> None:
    strategy, layout = int_range_layout()
    with pytest.raises(NoShardForKey, match="cannot be compared"):
        strategy.shard_for_key(layout, "abc")


def test_range_describe_shows_half_open_intervals_with_infinities() -> None:
    strategy, layout = int_range_layout()
    assert strategy.describe(layout) == {
        "a": "[-inf, 0)",
        "b": "[0, 100)",
        "c": "[100, 200)",
        "d": "[200, +inf)",
    }
    assert strategy.share(layout) == dict.fromkeys("abcd")


@pytest.mark.parametrize(
    ("lo", "hi", "lo_inclusive", "hi_inclusive", "expected"),
    [
        (None, None, True, False, ["a", "b", "c", "d"]),
        (100, None, True, False, ["c", "d"]),  # __gte=100
        (99, None, False, False, ["c", "d"]),  # __gt=99
        (100, None, False, False, ["c", "d"]),  # __gt=100
        (99, None, True, False, ["b", "c", "d"]),  # __gte=99
        (199, None, False, False, ["d"]),  # __gt=199
        (None, 100, True, False, ["a", "b"]),  # __lt=100
        (None, 100, True, True, ["a", "b", "c"]),  # __lte=100
        (None, 0, True, False, ["a"]),  # __lt=0
        (None, 0, True, True, ["a", "b"]),  # __lte=0
        (None, -1, True, True, ["a"]),  # __lte=-1
        (50, 150, True, True, ["b", "c"]),  # __range=(50, 150)
        (100, 199, True, True, ["c"]),  # __range=(100, 199)
        (100, 200, True, True, ["c", "d"]),  # __range=(100, 200)
        (0, 0, True, True, ["b"]),  # __range=(0, 0)
        (10, 5, True, True, []),  # empty
        (5, 6, False, False, []),  # no int between 5 and 6
        (5, 5, True, False, []),
    ],
)
def test_range_queries_visit_only_overlapping_shards(
    lo: Any, hi: Any, lo_inclusive: bool, hi_inclusive: bool, expected: list[str]
) -> None:
    strategy, layout = int_range_layout()
    assert strategy.shards_for_range(layout, lo, hi, lo_inclusive, hi_inclusive) == expected


def test_range_queries_on_strings_keep_every_shard_that_may_overlap() -> None:
    strategy = RangeStrategy()
    layout = strategy.initial_layout([shard("a", [None, "m"]), shard("b", ["m", None])])
    assert strategy.shards_for_range(layout, "m", None, False) == ["b"]
    assert strategy.shards_for_range(layout, "l", None, True) == ["a", "b"]
    assert strategy.shards_for_range(layout, "lz", None, False) == ["a", "b"]  # "lzz" < "m"
    assert strategy.shards_for_range(layout, None, "m", True, False) == ["a"]
    assert strategy.shards_for_range(layout, None, "m", True, True) == ["a", "b"]


def test_range_queries_on_dates_are_exact_at_day_edges() -> None:
    strategy = RangeStrategy()
    d = datetime.date
    layout = strategy.initial_layout(
        [shard("2024", [d(2024, 1, 1), d(2025, 1, 1)]), shard("2025", [d(2025, 1, 1), None])]
    )
    assert strategy.shards_for_range(layout, d(2024, 12, 31), None, False) == ["2025"]
    assert strategy.shards_for_range(layout, None, d(2024, 12, 31), True, True) == ["2024"]
    assert strategy.shards_for_range(layout, d(2023, 1, 1), d(2023, 12, 31), True, True) == []


def test_range_query_lists_a_shard_owning_several_intervals_once_in_key_order() -> None:
    layout = RangeLayout([(20, 30, "a"), (0, 10, "a"), (10, 20, "b")])
    assert RangeStrategy().shards_for_range(layout, 0, 30) == ["a", "b"]
    assert RangeStrategy().shards_for_range(layout, 10, 30) == ["b", "a"]


def test_range_query_with_incomparable_bounds_does_not_prune() -> None:
    strategy, layout = int_range_layout()
    assert strategy.shards_for_range(layout, "x", None) is None


def test_range_split_at_a_key_moves_the_upper_part_to_the_target() -> None:
    strategy, layout = int_range_layout()
    after = strategy.split(layout, "b", "b2", at=50)
    assert strategy.describe(after)["b"] == "[0, 50)"
    assert strategy.describe(after)["b2"] == "[50, 100)"
    keys = range(-10_000, 10_000)
    before_map = placements(strategy, layout, keys)
    after_map = placements(strategy, after, keys)
    moved = {k for k in keys if before_map[k] != after_map[k]}
    assert moved == set(range(50, 100))
    assert all(after_map[k] == "b2" for k in moved)


def test_range_split_of_an_unbounded_shard_at_a_string_key() -> None:
    strategy = RangeStrategy()
    layout = strategy.initial_layout([shard("all", [None, None])])
    after = strategy.split(layout, "all", "upper", at="n")
    assert strategy.describe(after) == {"all": "[-inf, 'n')", "upper": "['n', +inf)"}
    assert strategy.shard_for_key(after, "mz") == "all"
    assert strategy.shard_for_key(after, "n") == "upper"


@pytest.mark.parametrize(
    ("source", "target", "at", "message"),
    [
        ("b", "new", None, "needs the key to split at"),
        ("b", "new", 0, r"0 is not strictly inside the range \[0, 100\) of shard 'b'"),
        ("b", "new", 100, r"100 is not strictly inside the range \[0, 100\) of shard 'b'"),
        ("b", "new", 150, r"150 is not strictly inside the range \[0, 100\) of shard 'b'"),
        ("nope", "new", 50, "shard 'nope' owns no range"),
        ("b", "c", 50, "shard 'c' already owns a range"),
        ("b", "new", "x", "cannot be compared"),
        ("b", "new", 5.5j, "cannot split at"),
    ],
)
def test_range_split_refuses_bad_requests(source: str, target: str, at: Any, message: str) -> None:
    strategy, layout = int_range_layout()
    with pytest.raises(SplitError, match=message):
        strategy.split(layout, source, target, at)


ROUND_TRIP_BOUNDS = [
    [None, -(2**70), 0, 2**63 + 1, None],
    [None, "", "m", "ключ", None],
    [None, datetime.date(1999, 12, 31), datetime.date(2024, 2, 29), None],
    [
        None,
        datetime.datetime(2024, 1, 1, 0, 0, 0, 1),
        datetime.datetime(2024, 1, 1, 0, 0, 1),
        None,
    ],
    [
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        datetime.datetime(
            2024, 3, 1, 10, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=5))
        ),
        None,
    ],
]


@pytest.mark.parametrize("bounds", ROUND_TRIP_BOUNDS)
def test_range_layout_json_round_trip_keeps_bounds_and_placement(bounds: list[Any]) -> None:
    strategy = RangeStrategy()
    layout = strategy.initial_layout(
        [shard(f"s{i}", [lo, hi]) for i, (lo, hi) in enumerate(pairwise(bounds))]
    )
    loaded = roundtrip(strategy, layout)
    assert loaded == layout
    for (lo, hi, name), (lo2, hi2, name2) in zip(layout.intervals, loaded.intervals, strict=True):
        assert (type(lo), type(hi), name) == (type(lo2), type(hi2), name2)
        for a, b in ((lo, lo2), (hi, hi2)):
            assert a == b
            if isinstance(a, datetime.datetime):
                assert a.utcoffset() == b.utcoffset()
    probes = [b for b in bounds if b is not None]
    for probe in probes:
        assert strategy.shard_for_key(loaded, probe) == strategy.shard_for_key(layout, probe)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=8, unique=True),
    st.lists(st.integers(min_value=-1200, max_value=1200), min_size=1, max_size=50),
)
def test_range_places_each_key_in_the_interval_containing_it(
    cuts: list[int], keys: list[int]
) -> None:
    cuts.sort()
    bounds = [None, *cuts, None]
    strategy = RangeStrategy()
    layout = roundtrip(
        strategy,
        strategy.initial_layout(
            [shard(f"s{i}", [lo, hi]) for i, (lo, hi) in enumerate(pairwise(bounds))]
        ),
    )
    for key in keys:
        expected = f"s{sum(1 for c in cuts if c <= key)}"
        assert strategy.shard_for_key(layout, key) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=-100, max_value=100),
    st.integers(min_value=-100, max_value=100),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
def test_range_pruning_never_drops_a_shard_holding_matching_keys(
    lo: int, hi: int, lo_inclusive: bool, hi_inclusive: bool, lo_open: bool, hi_open: bool
) -> None:
    strategy = RangeStrategy()
    layout = strategy.initial_layout(
        [shard("a", [-50, 0]), shard("b", [0, 10]), shard("c", [10, 11]), shard("d", [11, 60])]
    )
    lo_bound = None if lo_open else lo
    hi_bound = None if hi_open else hi
    chosen = strategy.shards_for_range(layout, lo_bound, hi_bound, lo_inclusive, hi_inclusive)

    def matches(key: int) -> bool:
        if lo_bound is not None and (key < lo_bound or (key == lo_bound and not lo_inclusive)):
            return False
        if hi_bound is not None and (key > hi_bound or (key == hi_bound and not hi_inclusive)):
            return False
        return True

    needed = [strategy.shard_for_key(layout, k) for k in range(-50, 60) if matches(k)]
    assert chosen == list(dict.fromkeys(needed))  # exact for ints, in key order


# --- splitting, as the split command asks ----------------------------------------------


class Stored:
    """The keys stored on a shard, as a split hands them to a strategy; counts the reads."""

    def __init__(self, median: Any) -> None:
        self._median = median
        self.reads = 0

    def median(self) -> Any:
        self.reads += 1
        return self._median


def test_a_range_split_without_a_key_splits_at_the_median_key_stored() -> None:
    strategy, layout = int_range_layout()
    stored = Stored(37)
    assert strategy.splits_at_key and strategy.can_split_one_shard
    assert strategy.default_split_point(layout, "b", stored) == 37
    assert stored.reads == 1


def test_a_range_split_of_an_empty_shard_needs_a_key() -> None:
    strategy, layout = int_range_layout()
    with pytest.raises(SplitError, match=r"Shard 'b' holds no rows, .* pass --at KEY"):
        strategy.default_split_point(layout, "b", Stored(None))


@pytest.mark.parametrize(
    "strategy", [HashStrategy(), ConsistentHashStrategy({"vnodes": 4})], ids=["hash", "ring"]
)
def test_hash_like_splits_pick_their_own_point_without_reading_the_shard(strategy: Any) -> None:
    layout = strategy.initial_layout([shard(name) for name in names(2)])
    stored = Stored(37)
    assert strategy.default_split_point(layout, "s0", stored) is None
    assert stored.reads == 0
    assert not strategy.splits_at_key and strategy.can_split_one_shard
    assert strategy.encode_split_point(None) is None
    assert strategy.decode_split_point(None) is None


def test_modulo_cannot_split_one_shard_and_says_why() -> None:
    strategy = ModuloStrategy()
    layout = strategy.initial_layout([shard(name) for name in names(2)])
    assert not strategy.can_split_one_shard
    with pytest.raises(SplitError) as excinfo:
        strategy.split(layout, "s0", "s2")
    assert str(excinfo.value) == strategy.split_refusal


@pytest.mark.parametrize(
    "at",
    [
        None,
        -(2**70),
        "ключ",
        datetime.date(2024, 2, 29),
        datetime.datetime(2024, 1, 1, 0, 0, 0, 1),
        decimal.Decimal("1.50"),
        uuid.UUID(int=12345),
    ],
)
def test_a_range_split_key_survives_the_json_of_the_split_job(at: Any) -> None:
    strategy = RangeStrategy()
    stored = json.loads(json.dumps(strategy.encode_split_point(at)))
    back = strategy.decode_split_point(stored)
    assert back == at and type(back) is type(at)


# --- checks ----------------------------------------------------------------------------


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_range_check_accepts_contiguous_ranges_with_finite_outer_bounds() -> None:
    g = group("range", shard("a", [0, 100]), shard("b", (100, 200)), shard("c", [200, 300]))
    assert RangeStrategy.check(g) == []
    g = group("range", shard("a", [None, "m"]), shard("b", ["m", None]))
    assert RangeStrategy.check(g) == []


@pytest.mark.parametrize(
    ("rng", "fragment"),
    [
        (None, "Range shard 'b' has no RANGE"),
        ((1, 2, 3), "must be a [lo, hi] pair"),
        ("ab", "must be a [lo, hi] pair"),
        ([300, 300], "RANGE of shard 'b' is empty"),
        ([400, 300], "lo 400 is not below hi 300"),
    ],
)
def test_range_check_reports_a_missing_or_malformed_range_as_e020(rng: Any, fragment: str) -> None:
    g = group("range", shard("a", [None, 300]), shard("b", rng))
    messages = RangeStrategy.check(g)
    assert ids(messages) == ["django_shards.E020"]
    assert fragment in messages[0].msg
    assert messages[0].hint.endswith(
        "See https://django-shards.readthedocs.io/en/latest/settings/#range"
    )
    assert "\n" not in messages[0].hint


def test_range_check_reports_overlapping_shards_as_e021_naming_both() -> None:
    g = group("range", shard("a", [0, 100]), shard("b", [50, 200]), shard("c", [200, None]))
    messages = RangeStrategy.check(g)
    assert ids(messages) == ["django_shards.E021"]
    assert "'a' [0, 100)" in messages[0].msg and "'b' [50, 200)" in messages[0].msg
    assert messages[0].hint.endswith(
        "See https://django-shards.readthedocs.io/en/latest/settings/#range"
    )


def test_range_check_reports_two_unbounded_starts_as_an_overlap() -> None:
    g = group("range", shard("a", [None, 10]), shard("b", [None, 20]))
    assert ids(RangeStrategy.check(g)) == ["django_shards.E021"]


def test_range_check_reports_a_shard_inside_another_as_overlap_not_gap() -> None:
    g = group("range", shard("a", [0, 100]), shard("b", [10, 20]), shard("c", [100, 200]))
    messages = RangeStrategy.check(g)
    assert ids(messages) == ["django_shards.E021"]


def test_range_check_reports_a_gap_as_e022_naming_both_shards_and_the_gap() -> None:
    g = group("range", shard("a", [None, 100]), shard("b", [150, None]))
    messages = RangeStrategy.check(g)
    assert ids(messages) == ["django_shards.E022"]
    assert "[100, 150)" in messages[0].msg
    assert "'a'" in messages[0].msg and "'b'" in messages[0].msg
    assert messages[0].hint.endswith(
        "See https://django-shards.readthedocs.io/en/latest/settings/#range"
    )


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0, 100], ["x", None]),
        ([datetime.date(2024, 1, 1), None], [None, datetime.datetime(2024, 1, 1)]),
        (
            [datetime.datetime(2024, 1, 1), None],
            [None, datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)],
        ),
        ([None, 1j], [1j, None]),
        ([None, (1, 2)], [(1, 2), None]),
    ],
)
def test_range_check_reports_bounds_of_mixed_or_unusable_types_as_e023(a: Any, b: Any) -> None:
    messages = RangeStrategy.check(group("range", shard("a", a), shard("b", b)))
    assert ids(messages) == ["django_shards.E023"]
    assert messages[0].hint.endswith(
        "See https://django-shards.readthedocs.io/en/latest/settings/#range"
    )


def test_hash_check_accepts_no_ranges_or_a_full_tiling() -> None:
    assert HashStrategy.check(group("hash", shard("a"), shard("b"))) == []
    g = group("hash", shard("a", [None, 2**63]), shard("b", [2**63, 2**64]))
    assert HashStrategy.check(g) == []


@pytest.mark.parametrize(
    ("ranges", "fragment"),
    [
        ([[None, 2**63], None], "given for shards 'a' but not for 'b'"),
        ([[None, 2**63], [2**63, 2**65]], "outside [0, 2**64]"),
        ([[None, 2**63], ["x", None]], "must be ints or None"),
        ([[None, 2**63], [2**63]], "must be a [lo, hi] pair"),
        ([[None, 2**63], [2**63, 2**63]], "is empty"),
        ([[None, 2**63], [2**62, None]], "overlap"),
        ([[None, 2**62], [2**63, None]], "No shard owns [0x4000000000000000, 0x8000000000000000)"),
        ([[1, 2**63], [2**63, None]], "No shard owns [0x0000000000000000, 0x0000000000000001)"),
        ([[None, 2**62], [2**62, 2**63]], "space ends uncovered after shard 'b'"),
    ],
)
def test_hash_check_reports_bad_explicit_ranges_as_e024(ranges: list[Any], fragment: str) -> None:
    g = group("hash", shard("a", ranges[0]), shard("b", ranges[1]))
    messages = HashStrategy.check(g)
    assert ids(messages) == ["django_shards.E024"]
    assert fragment in messages[0].msg
    assert messages[0].hint.endswith(
        "See https://django-shards.readthedocs.io/en/latest/settings/#hash"
    )


@pytest.mark.parametrize("vnodes", [0, -1, 10_001, "256", 2.5, True, None])
def test_consistent_hash_check_reports_bad_vnodes_as_e025(vnodes: Any) -> None:
    messages = ConsistentHashStrategy.check(group("consistent_hash", shard("a"), vnodes=vnodes))
    assert ids(messages) == ["django_shards.E025"]
    assert "vnodes" in messages[0].msg
    assert messages[0].hint.endswith(
        "See https://django-shards.readthedocs.io/en/latest/settings/#consistent_hash"
    )


@pytest.mark.parametrize("options", [{}, {"vnodes": 1}, {"vnodes": 256}, {"vnodes": 10_000}])
def test_consistent_hash_check_accepts_vnodes_from_1_to_10000(options: dict[str, Any]) -> None:
    assert ConsistentHashStrategy.check(group("consistent_hash", shard("a"), **options)) == []


def test_modulo_check_warns_that_it_can_only_grow_by_doubling_as_w020() -> None:
    messages = ModuloStrategy.check(group("modulo", shard("a"), shard("b")))
    assert ids(messages) == ["django_shards.W020"]
    assert "doubling every shard" in messages[0].msg
    assert "consistent_hash" in messages[0].hint
    assert messages[0].hint.endswith(
        "See https://django-shards.readthedocs.io/en/latest/settings/#modulo"
    )
