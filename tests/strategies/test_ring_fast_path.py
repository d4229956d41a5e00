"""``consistent_hash`` places every key exactly where the plain ring algorithm does.

``shard_for_key`` and ``locate`` answer most points from a table of each 16-bit prefix's
owner and fall back to a bisect over the full 160-bit tokens; the reference below is the
plain algorithm (``int(sha1(text).hexdigest(), 16)``, the first token strictly above the
point, wrapping to the first token, the lower shard name on a shared token), computed from
the layout's stored JSON. Layouts come with 1 to 256 vnodes, after splits, and with tokens
crafted at prefix boundaries and shared between shards. No database is touched.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from django_shards.conf import Shard, ShardSettings
from django_shards.exceptions import NoShardForKey
from django_shards.strategies.consistent_hash import (
    RING,
    ConsistentHashStrategy,
    RingLayout,
    ring_point,
)

PREFIX = 2**144  # points with the same top 16 bits share a prefix of the owner table

# --- the reference: the plain ring algorithm ---------------------------------------------


def ref_point(key: Any) -> int:
    return int(hashlib.sha1(str(key).encode("utf-8")).hexdigest(), 16)


class RefRing:
    """The ring as the stored layout writes it: ``{"tokens": {shard: [40 hex digits]}}``."""

    def __init__(self, layout: RingLayout) -> None:
        stored = layout.to_json()["tokens"]
        ring = sorted((int(t, 16), name) for name, owned in stored.items() for t in owned)
        self.tokens = [t for t, _ in ring]
        self.names = [name for _, name in ring]

    def owner(self, point: int) -> str:
        i = bisect_right(self.tokens, point)  # the first token strictly above the point
        return self.names[i] if i < len(self.tokens) else self.names[0]


def layout_for(shard_names: list[str], vnodes: int) -> RingLayout:
    strategy = ConsistentHashStrategy({"vnodes": vnodes})
    return strategy.initial_layout([ShardSettings(Shard(n, f"{n}_db"), None) for n in shard_names])


def split_layout(layout: RingLayout, choices: list[int]) -> RingLayout:
    """Split a shard that has 2 or more tokens, once per choice, onto a new shard."""
    strategy = ConsistentHashStrategy({})
    for n, choice in enumerate(choices):
        splittable = [name for name, owned in layout.tokens.items() if len(owned) >= 2]
        if not splittable:
            break
        layout = strategy.split(layout, splittable[choice % len(splittable)], f"split{n}")
    return layout


def assert_same_placement(layout: RingLayout, keys: list[Any]) -> None:
    strategy = ConsistentHashStrategy({})
    ref = RefRing(layout)
    reloaded = strategy.load_layout(layout.to_json())
    for key in keys:
        expected = ref.owner(ref_point(key))
        assert strategy.shard_for_key(layout, key) == expected, key
        assert strategy.shard_for_key(reloaded, key) == expected, key
        assert strategy.locate(layout, ring_point(key)) == expected, key


keys_st = st.lists(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**64),
        st.integers(min_value=0, max_value=10**6),
        st.text(max_size=20),
    ),
    min_size=1,
    max_size=300,
)


# --- keys ----------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    shard_count=st.integers(min_value=1, max_value=6),
    vnodes=st.integers(min_value=1, max_value=256),
    splits=st.lists(st.integers(min_value=0, max_value=100), max_size=3),
    keys=keys_st,
)
def test_keys_land_where_the_plain_ring_puts_them(
    shard_count: int, vnodes: int, splits: list[int], keys: list[Any]
) -> None:
    layout = split_layout(layout_for([f"s{i}" for i in range(shard_count)], vnodes), splits)
    assert_same_placement(layout, keys)


@pytest.mark.parametrize("vnodes", [1, 2, 16, 256])
@pytest.mark.parametrize("splits", [0, 3])
def test_many_keys_on_default_sized_rings(vnodes: int, splits: int) -> None:
    """20,000 int and str keys on 16 shards, before and after splits."""
    layout = split_layout(layout_for([f"s{i}" for i in range(16)], vnodes), list(range(splits)))
    keys: list[Any] = [k * 7919 for k in range(10_000)] + [f"user-{k}" for k in range(10_000)]
    assert_same_placement(layout, keys)


def test_a_key_whose_point_is_a_token_goes_to_the_next_token() -> None:
    """Tokens at keys' own points (and a point away): strictly above, wrapping at the end."""
    keys = list(range(2_000))
    points = sorted(ref_point(k) for k in keys)
    tokens: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for n, point in enumerate(points):
        tokens["abc"[n % 3]].append(point)
        tokens["abc"[(n + 1) % 3]].append(min(point + 1, RING - 1))
    layout = RingLayout(tokens)
    assert_same_placement(layout, keys + [str(k) for k in range(2_000, 4_000)])


# --- points at prefix boundaries -----------------------------------------------------------

prefixes_st = st.sampled_from([0, 1, 2, 3, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF])
offsets_st = st.one_of(
    st.sampled_from([0, 1, PREFIX // 2, PREFIX - 2, PREFIX - 1]),
    st.integers(min_value=0, max_value=PREFIX - 1),
)
tokens_st = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), prefixes_st, offsets_st), min_size=1, max_size=24
)


@settings(max_examples=300, deadline=None)
@given(placed=tokens_st, extra=st.lists(st.integers(min_value=0, max_value=RING - 1)))
def test_points_at_prefix_edges_and_shared_tokens(
    placed: list[tuple[str, int, int]], extra: list[int]
) -> None:
    """Tokens packed into a few prefixes, on their edges, some shared by two shards: every
    token, its neighbours and every prefix edge locate as the plain ring does."""
    tokens: dict[str, list[int]] = {}
    for name, prefix, offset in placed:
        tokens.setdefault(name, []).append(prefix * PREFIX + offset)
    layout = RingLayout(tokens)
    ref = RefRing(layout)
    strategy = ConsistentHashStrategy({})
    points = {0, RING - 1, *extra}
    for token in ref.tokens:
        points.update({token - 1, token, token + 1})
        edge = token // PREFIX * PREFIX
        points.update({edge - 1, edge, edge + PREFIX - 1, edge + PREFIX})
    for point in sorted(p for p in points if 0 <= p < RING):
        assert layout.locate(point) == ref.owner(point), hex(point)
        assert strategy.locate(layout, point) == ref.owner(point), hex(point)


# --- errors are unchanged ------------------------------------------------------------------


def test_an_empty_ring_and_a_point_off_the_ring_raise_no_shard_for_key() -> None:
    strategy = ConsistentHashStrategy({})
    with pytest.raises(NoShardForKey, match="no tokens"):
        strategy.shard_for_key(RingLayout({}), 42)
    with pytest.raises(NoShardForKey, match="no tokens"):
        RingLayout({}).locate(0)
    layout = layout_for(["s0", "s1"], 4)
    with pytest.raises(NoShardForKey, match="outside the SHA-1 ring"):
        layout.locate(RING)
    with pytest.raises(NoShardForKey, match="outside the SHA-1 ring"):
        layout.locate(RING * 5)
