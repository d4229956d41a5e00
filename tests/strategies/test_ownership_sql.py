"""``Strategy.ownership_q``: the SQL selects exactly the rows the strategy places on a shard.

For every strategy that can say it in SQL, and for layouts before and after splits, the
rows a shard's ``ownership_q`` selects in the database (SQLite, or MariaDB with
``SHARDS_DB=mariadb``) are exactly those whose key ``shard_for_key`` places there, so each
key is selected by exactly one shard. The keys include the edges: 0, negatives, the ends
of a 64-bit column, interval bounds, the empty string, upper/lower case, trailing spaces,
accents and characters outside the Basic Multilingual Plane.

The keys sit in the unsharded ``AuthorTwin`` table on the catalog alias: ``id`` holds int
keys, ``name`` string keys.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from django.db.models import Q

from django_shards.conf import Shard, ShardSettings
from django_shards.strategies.base import Layout, Strategy
from django_shards.strategies.consistent_hash import ConsistentHashStrategy
from django_shards.strategies.hash import SPACE, HashLayout, HashStrategy
from django_shards.strategies.modulo import ModuloStrategy
from django_shards.strategies.range import RangeStrategy
from tests.testapp.models import AuthorTwin, PostTwin

pytestmark = pytest.mark.django_db

_rng = random.Random(20250611)
INT_KEYS: list[int] = sorted(
    {
        0, 1, -1, 2, -2, 99, -99, -100, -101, 999, 1000, 1001, 2**31 - 1, -(2**31),
        2**32, 2**40, 2**40 - 1, 2**40 + 1, 10**18, -(10**18), 2**63 - 1, -(2**63),
        *(_rng.randrange(-(2**63), 2**63) for _ in range(150)),
        *(_rng.randrange(-5000, 5000) for _ in range(150)),
    }
)  # fmt: skip
_ALPHABET = "aAbzZmM09 _-éeÉßçñøжЖ日本語🙂🔑\u0301"
STR_KEYS: list[str] = sorted(
    {
        "", "a", "A", "a ", " a", "m", "M", "mm", "m ", "n", "z", "Z", "é", "e", "e\u0301",
        "ß", "ss", "café", "ключ", "键", "🙂", "🔑 key", "日本", "user-1", "user-10", "9", "10",
        *("".join(_rng.choices(_ALPHABET, k=_rng.randrange(1, 12))) for _ in range(250)),
    }
)  # fmt: skip


def shards(*names: str, ranges: list[Any] | None = None) -> list[ShardSettings]:
    return [
        ShardSettings(shard=Shard(n, f"{n}_db"), range=ranges[i] if ranges else None)
        for i, n in enumerate(names)
    ]


def split_chain(strategy: Strategy, layout: Layout, *splits: tuple[Any, ...]) -> list[Layout]:
    """``layout`` and the layout after each split ``(source, target[, at])`` in turn."""
    layouts = [layout]
    for source, target, *at in splits:
        layouts.append(strategy.split(layouts[-1], source, target, *at))
    return layouts


def int_range_layouts() -> tuple[Strategy, list[Layout]]:
    strategy = RangeStrategy()
    first = strategy.initial_layout(
        shards("a", "b", "c", ranges=[[None, -100], [-100, 1000], [1000, None]])
    )
    return strategy, split_chain(strategy, first, ("b", "d", 0), ("c", "e", 2**40))


def str_range_layouts() -> tuple[Strategy, list[Layout]]:
    strategy = RangeStrategy()
    first = strategy.initial_layout(shards("a", "b", ranges=[[None, "m"], ["m", None]]))
    return strategy, split_chain(strategy, first, ("b", "c", "é"), ("a", "d", "M"))


def hash_layouts() -> tuple[Strategy, list[Layout]]:
    strategy = HashStrategy()
    first = strategy.initial_layout(shards("s0", "s1", "s2"))
    return strategy, split_chain(strategy, first, ("s1", "s3"), ("s1", "s4"), ("s3", "s5"))


def ring_layouts() -> tuple[Strategy, list[Layout]]:
    strategy = ConsistentHashStrategy({"vnodes": 16})
    first = strategy.initial_layout(shards("s0", "s1", "s2"))
    return strategy, split_chain(strategy, first, ("s0", "s3"), ("s3", "s4"))


@pytest.fixture
def stored_keys() -> None:
    """One row per key pair: ``id`` an int key, ``name`` a string key."""
    names = STR_KEYS + [f"pad-{i}" for i in range(len(INT_KEYS) - len(STR_KEYS))]
    pairs = zip(INT_KEYS, names, strict=True)
    AuthorTwin.objects.bulk_create(AuthorTwin(id=i, name=s, email="k@x.org") for i, s in pairs)


def selected(q: Q, field: str) -> list[Any]:
    return list(AuthorTwin.objects.filter(q).values_list(field, flat=True))


def assert_exact(strategy: Strategy, layouts: list[Layout], field: str, keys: list[Any]) -> None:
    for layout in layouts:
        seen: dict[Any, str] = {}
        for shard in layout.shard_names():
            q = strategy.ownership_q(layout, shard, field)
            assert q is not None
            rows = selected(q, field)
            expected = {k for k in keys if strategy.shard_for_key(layout, k) == shard}
            assert set(rows) == expected, (layout, shard)
            assert len(rows) == len(set(rows)), "a key selected twice by one shard"
            for key in rows:
                assert key not in seen, f"{key!r} selected by {seen[key]} and {shard}"
                seen[key] = shard
        assert set(seen) == set(keys), layout


@pytest.mark.parametrize(
    "layouts", [int_range_layouts, hash_layouts, ring_layouts], ids=["range", "hash", "ring"]
)
def test_each_int_key_is_selected_by_exactly_its_shard(stored_keys, layouts):
    strategy, chain = layouts()
    assert_exact(strategy, chain, "id", INT_KEYS)


@pytest.mark.parametrize(
    "layouts", [str_range_layouts, hash_layouts, ring_layouts], ids=["range", "hash", "ring"]
)
def test_each_string_key_is_selected_by_exactly_its_shard(stored_keys, layouts):
    strategy, chain = layouts()
    names = list(AuthorTwin.objects.values_list("name", flat=True))
    assert set(STR_KEYS) <= set(names)
    assert_exact(strategy, chain, "name", names)


def test_a_foreign_key_attname_is_a_key_field(stored_keys):
    """``author_id``-style keys: the attname of a foreign key names the column."""
    strategy, chain = hash_layouts()
    layout = chain[-1]
    PostTwin.objects.bulk_create(
        PostTwin(id=n, author_id=key, title="t") for n, key in enumerate(INT_KEYS[:100])
    )
    for shard in layout.shard_names():
        q = strategy.ownership_q(layout, shard, "author_id")
        rows = set(PostTwin.objects.filter(q).values_list("author_id", flat=True))
        assert rows == {k for k in INT_KEYS[:100] if strategy.shard_for_key(layout, k) == shard}


def test_a_shard_owning_nothing_selects_nothing_and_a_lone_shard_everything(stored_keys):
    strategy = HashStrategy()
    layout = strategy.initial_layout(shards("solo"))
    assert set(selected(strategy.ownership_q(layout, "solo", "id"), "id")) == set(INT_KEYS)
    assert selected(strategy.ownership_q(layout, "absent", "id"), "id") == []
    ranged = RangeStrategy()
    layout = ranged.initial_layout(shards("all", ranges=[[None, None]]))
    assert set(selected(ranged.ownership_q(layout, "all", "id"), "id")) == set(INT_KEYS)
    assert selected(ranged.ownership_q(layout, "absent", "id"), "id") == []


def test_hash_bounds_are_fixed_width_hex_and_the_top_is_open():
    """A point just below a bound and the bound itself fall on either side, in SQL text
    order as in numeric order (16 lowercase hex digits, zero-padded)."""
    strategy = HashStrategy()
    layout = HashLayout([(0, 0xF, "low"), (0xF, SPACE, "high")])
    sql = str(AuthorTwin.objects.filter(strategy.ownership_q(layout, "high", "id")).query)
    assert "000000000000000f" in sql
    assert "ffffffffffffffff" not in sql and "10000000000000000" not in sql


def test_modulo_cannot_say_in_sql():
    """Modulo never splits one shard, so no shard holds rows it does not own."""
    strategy = ModuloStrategy()
    layout = strategy.initial_layout(shards("s0", "s1"))
    assert strategy.ownership_q(layout, "s0", "id") is None
