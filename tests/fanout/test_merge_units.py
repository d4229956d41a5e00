"""Unit tests of the merge (no database): the sort keys that order merged rows as each
backend does, and the plans that combine per-shard aggregates into the whole's answer.

The differential tests check the same behaviour end to end against a real twin table;
these pin down each rule on its own, including the backends the suite may not run on.
"""

import datetime
from decimal import Decimal

import pytest
from django.db import NotSupportedError
from django.db.models import Avg, Count, F, Max, Min, StdDev, Sum

from django_shards.merge import (
    Backend,
    GroupPlan,
    MergeSpec,
    Ordering,
    OrderItem,
    Recipe,
    RowKind,
    SortKey,
    combine_aggregates,
    merge_combined,
    merge_groups,
    merge_rows,
    ordering_of,
    plan_aggregate,
    plan_groups,
)
from tests.testapp.models import Author

SQLITE = Backend(nulls_largest=False)  # SQLite and MySQL put NULL first ascending
POSTGRES_LIKE = Backend(nulls_largest=True)  # PostgreSQL and Oracle put NULL last
MYSQL = Backend(nulls_largest=False, mysql=True)


def item(name="x", descending=False, **nulls):
    return OrderItem(F(name), name, descending, **nulls)


def sort(values, items, backend):
    """``values`` (one per row, each a tuple of ordering values) sorted by the SortKey."""
    key = SortKey(items, backend)
    return sorted(values, key=key)


# -- sort keys ----------------------------------------------------------------------------


def test_nulls_sort_first_ascending_and_last_descending_where_the_backend_counts_null_smallest():
    asc, desc = [item()], [item(descending=True)]
    assert sort([(2,), (None,), (1,)], asc, SQLITE) == [(None,), (1,), (2,)]
    assert sort([(2,), (None,), (1,)], desc, SQLITE) == [(2,), (1,), (None,)]


def test_nulls_sort_last_ascending_and_first_descending_where_the_backend_counts_null_largest():
    asc, desc = [item()], [item(descending=True)]
    assert sort([(2,), (None,), (1,)], asc, POSTGRES_LIKE) == [(1,), (2,), (None,)]
    assert sort([(2,), (None,), (1,)], desc, POSTGRES_LIKE) == [(None,), (2,), (1,)]


def test_explicit_nulls_first_or_last_wins_over_the_backend_default():
    rows = [(2,), (None,), (1,)]
    assert sort(rows, [item(nulls_last=True)], SQLITE) == [(1,), (2,), (None,)]
    assert sort(rows, [item(descending=True, nulls_first=True)], SQLITE) == [
        (None,),
        (2,),
        (1,),
    ]
    assert sort(rows, [item(nulls_first=True)], POSTGRES_LIKE) == [(None,), (1,), (2,)]


def test_descending_then_ascending_columns_order_like_order_by_minus_a_then_b():
    rows = [(1, "b"), (2, "a"), (1, "a"), (2, "b")]
    items = [item("a", descending=True), item("b")]
    assert sort(rows, items, SQLITE) == [(2, "a"), (2, "b"), (1, "a"), (1, "b")]


def test_ints_floats_and_decimals_of_one_column_compare_by_value():
    rows = [(Decimal("2.5"),), (2,), (1.5,), (None,), (3,)]
    assert sort(rows, [item()], SQLITE) == [(None,), (1.5,), (2,), (Decimal("2.5"),), (3,)]
    assert sort(rows, [item(descending=True)], SQLITE) == [
        (3,),
        (Decimal("2.5"),),
        (2,),
        (1.5,),
        (None,),
    ]


def test_dates_sort_descending_with_nulls_where_the_backend_puts_them():
    d1, d2 = datetime.date(2024, 1, 1), datetime.date(2025, 1, 1)
    assert sort([(d1,), (None,), (d2,)], [item(descending=True)], SQLITE) == [
        (d2,),
        (d1,),
        (None,),
    ]


def test_mysql_orders_strings_ignoring_case_accents_and_trailing_spaces():
    rows = [("b",), ("A",), ("é",), ("a ",), ("E",)]
    ordered = [v for (v,) in sort(rows, [item()], MYSQL)]
    assert [v.strip().upper() for v in ordered[:2]] == ["A", "A"]
    # case and accents fold: "é" and "E" are one value, after "b"; "A" and "a " are one
    assert ordered[2] == "b"
    assert set(ordered[3:]) == {"é", "E"}
    assert MYSQL.fold("Café ") == MYSQL.fold("CAFE") == "CAFE"


def test_mysql_collation_sorts_underscore_after_letters_like_utf8mb4_general_ci():
    assert [v for (v,) in sort([("a_b",), ("ab",)], [item()], MYSQL)] == ["ab", "a_b"]


def test_other_backends_compare_strings_exactly():
    assert [v for (v,) in sort([("b",), ("B",), ("a",)], [item()], SQLITE)] == ["B", "a", "b"]
    assert SQLITE.fold("Café") == "Café"


def test_reverse_swaps_direction_and_explicit_nulls_placement():
    query = Author.objects.order_by(F("name").asc(nulls_last=True), "-score").reverse().query
    ordering = ordering_of(query)
    assert [(i.name, i.descending, i.nulls_first, i.nulls_last) for i in ordering.items] == [
        ("name", True, True, False),
        ("score", False, False, False),
    ]
    assert ordering_of(Author.objects.order_by("?").query).random


# -- merging rows ---------------------------------------------------------------------------


def spec(kind=RowKind.TUPLES, items=(), **fields):
    return MergeSpec(kind=kind, ordering=Ordering(tuple(items)), **fields)


def test_sorted_shard_rows_merge_into_one_order_and_the_slice_applies_to_the_whole():
    names = ["_shards_o0"]
    shard_a = [("a1", 1), ("a5", 5), ("a9", 9)]
    shard_b = [("b2", 2), ("b3", 3), ("b8", 8)]
    merged = merge_rows(
        spec(items=[item("n")], low_mark=1, high_mark=4), names, [shard_a, shard_b], SQLITE
    )
    assert merged == [("b2",), ("b3",), ("a5",)]


def test_distinct_values_repeated_across_shards_come_back_once_folded_like_mysql():
    rows_a = [{"name": "Ann"}, {"name": "bob"}]
    rows_b = [{"name": "ANN"}, {"name": "Cy"}]
    merged = merge_rows(spec(RowKind.DICTS, distinct=True), [], [rows_a, rows_b], MYSQL)
    assert merged == [{"name": "Ann"}, {"name": "bob"}, {"name": "Cy"}]
    exact = merge_rows(spec(RowKind.DICTS, distinct=True), [], [rows_a, rows_b], SQLITE)
    assert len(exact) == 4


def test_flat_and_named_rows_come_back_as_values_list_gives_them():
    flat = merge_rows(spec(RowKind.FLAT), [], [[(1,), (2,)], [(3,)]], SQLITE)
    assert flat == [1, 2, 3]
    named = merge_rows(spec(RowKind.NAMED, field_names=("a", "b")), [], [[(1, 2)]], SQLITE)
    assert named[0].a == 1 and named[0].b == 2


def test_a_union_is_deduplicated_sorted_by_column_name_and_sliced():
    merged = merge_combined(
        spec(items=[item("a", descending=True)], columns=("a",), combinator="union", high_mark=3),
        [[(1,), (3,)], [(3,), (2,), (0,)]],
        SQLITE,
    )
    assert merged == [(3,), (2,), (1,)]


def test_intersection_across_shards_is_refused():
    with pytest.raises(NotSupportedError):
        merge_combined(spec(combinator="intersection"), [], SQLITE)


# -- aggregate plans ------------------------------------------------------------------------


def combined(aggregates, answers, distinct=None, backend=SQLITE, model=Author):
    plan = plan_aggregate(aggregates, model)
    return combine_aggregates(plan, answers, distinct or {}, backend)


def test_each_shard_is_asked_for_parts_and_avg_becomes_a_sum_and_a_count():
    plan = plan_aggregate({"total": Sum("score"), "mean": Avg("score")}, Author)
    assert {name: type(agg).__name__ for name, agg in plan.parts.items()} == {
        "total": "Sum",
        "mean": "Sum",
        "mean__count": "Count",
    }
    assert plan.recipes["mean"] == Recipe(Avg, scale=4)  # MySQL: AVG(int) has 4 places


def test_sum_count_min_max_combine_and_empty_shards_are_ignored():
    answers = [
        {"s": 5, "c": 2, "lo": 1, "hi": 4},
        {"s": None, "c": 0, "lo": None, "hi": None},  # a shard with no rows
        {"s": 7, "c": 3, "lo": -2, "hi": 3},
    ]
    aggregates = {"s": Sum("score"), "c": Count("id"), "lo": Min("score"), "hi": Max("score")}
    assert combined(aggregates, answers) == {"s": 12, "c": 5, "lo": -2, "hi": 4}


def test_avg_is_the_total_over_the_count_not_the_mean_of_means():
    answers = [{"m": 10, "m__count": 1}, {"m": 30, "m__count": 3}]
    assert combined({"m": Avg("score")}, answers) == {"m": 10.0}


def test_avg_of_decimals_stays_decimal_and_mysql_rounds_integer_averages_to_four_places():
    decimals = [{"m": Decimal("1.10"), "m__count": 2}, {"m": Decimal("2.20"), "m__count": 1}]
    assert combined({"m": Avg("score")}, decimals, model=None) == {"m": Decimal("1.1")}
    thirds = [{"m": 1, "m__count": 3}]
    assert combined({"m": Avg("score")}, thirds) == {"m": pytest.approx(1 / 3)}
    assert combined({"m": Avg("score")}, thirds, backend=MYSQL) == {"m": 0.3333}


def test_mysql_does_not_round_an_avg_whose_default_is_a_float():
    # COALESCE(AVG(int), 0.5) is a DOUBLE on MySQL/MariaDB; with an int default a DECIMAL
    thirds = [{"m": 1, "m__count": 3}]
    assert combined({"m": Avg("score", default=0.5)}, thirds, backend=MYSQL) == {
        "m": pytest.approx(1 / 3)
    }
    assert combined({"m": Avg("score", default=0)}, thirds, backend=MYSQL) == {"m": 0.3333}


def test_avg_of_durations_divides_the_total_duration():
    day = datetime.timedelta(days=1)
    answers = [{"m": 2 * day, "m__count": 2}, {"m": day, "m__count": 2}]
    assert combined({"m": Avg("x")}, answers, model=None) == {"m": 0.75 * day}


def test_nothing_anywhere_gives_none_or_the_default():
    empty = [{"s": None, "m": None, "m__count": 0}]
    assert combined({"s": Sum("score"), "m": Avg("score")}, empty) == {"s": None, "m": None}
    assert combined({"s": Sum("score", default=0)}, [{"s": None}]) == {"s": 0}


def test_min_and_max_of_strings_follow_the_mysql_collation():
    answers = [{"lo": "apple", "hi": "Zed"}, {"lo": "Apricot", "hi": "zoo"}]
    aggregates = {"lo": Min("name"), "hi": Max("name")}
    assert combined(aggregates, answers, backend=MYSQL) == {"lo": "apple", "hi": "zoo"}
    assert combined(aggregates, answers, backend=SQLITE) == {"lo": "Apricot", "hi": "zoo"}


def test_count_distinct_counts_the_union_of_each_shards_values():
    plan = plan_aggregate({"n": Count("name", distinct=True)}, Author)
    assert plan.parts == {} and "n" in plan.distinct
    union = {"ann", "bob"} | {"bob", "cy"}
    assert combine_aggregates(plan, [{}, {}], {"n": union}, SQLITE) == {"n": 3}


def test_aggregates_that_cannot_be_combined_are_refused_clearly():
    with pytest.raises(NotSupportedError, match="StdDev"):
        plan_aggregate({"sd": StdDev("score")}, Author)
    with pytest.raises(NotSupportedError, match="distinct"):
        plan_aggregate({"s": Sum("score", distinct=True)}, Author)
    with pytest.raises(NotSupportedError, match="expression over aggregates"):
        plan_aggregate({"x": Sum("score") + 1}, Author)


# -- group-by plans -------------------------------------------------------------------------


def test_groups_spanning_shards_merge_per_group_with_avg_from_sum_and_count():
    query = Author.objects.values("name").annotate(n=Count("id"), m=Avg("score")).query.chain()
    plan = plan_groups(query, complete=False)
    assert plan.recipes == {"n": Recipe(Count), "m": Recipe(Avg, scale=4)}
    assert "m__count" in query.annotation_select  # each shard also sends the count
    per_shard = [
        [{"name": "ann", "n": 1, "m": 4, "m__count": 1}],
        [
            {"name": "ann", "n": 2, "m": 2, "m__count": 2},
            {"name": "bob", "n": 1, "m": 5, "m__count": 1},
        ],
    ]
    merged = merge_groups(
        spec(RowKind.DICTS, items=[item("name")], columns=("name", "n", "m")),
        plan,
        per_shard,
        SQLITE,
    )
    assert merged == [{"name": "ann", "n": 3, "m": 2.0}, {"name": "bob", "n": 1, "m": 5.0}]


def test_groups_that_live_on_one_shard_are_concatenated_as_they_are():
    merged = merge_groups(
        spec(RowKind.TUPLES, items=[item("n", descending=True)], columns=("k", "n")),
        GroupPlan({}),
        [[{"k": 1, "n": 2}], [{"k": 2, "n": 5}]],
        SQLITE,
    )
    assert merged == [(2, 5), (1, 2)]
