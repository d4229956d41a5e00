"""``manage.py shard_query``: ORM queries across shards, output formats, and ``--sql``.

Reads run under ``django_shards.consistency("strong")``: on MariaDB a replica cannot see
the rows a test wrote inside its (never committed) transaction.
"""

import csv
import io
import json
from datetime import datetime

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

import django_shards
from django_shards import shard_for
from django_shards.management.commands._base import _join_dash_values, format_table
from django_shards.routing import shard_map_for
from tests.factories import AuthorFactory, PostFactory
from tests.testapp.models import Author, Post, Tag

pytestmark = pytest.mark.django_db(databases="__all__")

AUTHOR_COLUMNS = ["id", "email", "name", "score", "joined"]


def shard_query(*argv: str) -> str:
    out = io.StringIO()
    with django_shards.consistency("strong"):
        call_command("shard_query", *argv, stdout=out)
    return out.getvalue()


def shard_query_json(*argv: str):
    return json.loads(shard_query(*argv, "--format", "json"))


def refused(*argv: str) -> CommandError:
    with pytest.raises(CommandError) as excinfo:
        shard_query(*argv)
    return excinfo.value


@pytest.fixture
def authors():
    """20 authors spread over the four shards of the users group, scores 0..6."""
    made = AuthorFactory.create_batch(20)
    assert len({shard_for(Author, a.pk).name for a in made}) > 1
    return made


def strong_ids(qs) -> list[int]:
    return sorted(qs.strong().values_list("id", flat=True))


# -- ORM queries -----------------------------------------------------------------------


def test_filter_across_shards_returns_the_same_rows_as_the_orm(authors):
    rows = shard_query_json("testapp.Author", "--filter", "score__in=1,2,3")
    expected = strong_ids(Author.objects.filter(score__in=[1, 2, 3]))
    assert sorted(r["id"] for r in rows) == expected
    assert len({shard_for(Author, pk).name for pk in expected}) > 1


def test_filters_and_excludes_combine_like_chained_calls(authors):
    rows = shard_query_json(
        "testapp.Author",
        "--filter",
        "score__gte=2",
        "--filter",
        "score__lte=5",
        "--exclude",
        "score=3",
    )
    expected = Author.objects.filter(score__gte=2).filter(score__lte=5).exclude(score=3)
    assert sorted(r["id"] for r in rows) == strong_ids(expected)
    assert {r["score"] for r in rows} == {2, 4, 5}


def test_filter_follows_relations_within_the_group(authors):
    author = authors[0]
    PostFactory.create_batch(2, author=author)
    PostFactory(author=authors[1])
    rows = shard_query_json("testapp.Post", "--filter", f"author__email={author.email}")
    assert sorted(r["id"] for r in rows) == strong_ids(Post.objects.filter(author=author))
    assert {r["author_id"] for r in rows} == {author.pk}


def test_isnull_and_range_lookups_convert_their_values(authors):
    assert shard_query_json("testapp.Author", "--filter", "name__isnull=true") == []
    assert len(shard_query_json("testapp.Author", "--filter", "name__isnull=false")) == 20
    rows = shard_query_json("testapp.Author", "--filter", "score__range=2,3")
    assert sorted(r["id"] for r in rows) == strong_ids(Author.objects.filter(score__range=(2, 3)))


def test_lookup_values_are_data_never_sql(authors):
    tricky = "x' OR '1'='1"
    assert shard_query_json("testapp.Author", "--filter", f"email={tricky}") == []
    assert shard_query_json("testapp.Author", "--filter", "name__in=x') OR 1=1 --,y") == []
    assert len(shard_query_json("testapp.Author", "--exclude", f"email={tricky}")) == 20
    odd = AuthorFactory(email=tricky)
    rows = shard_query_json("testapp.Author", "--filter", f"email={tricky}")
    assert [r["id"] for r in rows] == [odd.pk]


def test_json_rows_hold_every_concrete_field_with_big_ids_kept_as_ints(authors):
    rows = shard_query_json("testapp.Author", "--filter", f"id={authors[0].pk}")
    assert len(rows) == 1
    row = rows[0]
    assert list(row) == AUTHOR_COLUMNS
    assert row["id"] == authors[0].pk and row["id"] > 2**53  # not squeezed through a float
    assert row["email"] == authors[0].email
    assert datetime.fromisoformat(row["joined"]) == authors[0].joined


def test_csv_has_a_header_and_one_line_per_row(authors):
    out = shard_query("testapp.Author", "--format", "csv", "--filter", "score=3")
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == AUTHOR_COLUMNS
    lines = list(reader)
    assert sorted(int(line["id"]) for line in lines) == strong_ids(Author.objects.filter(score=3))
    assert {line["score"] for line in lines} == {"3"}


def test_csv_of_no_rows_is_just_the_header():
    assert shard_query("testapp.Author", "--format", "csv") == ",".join(AUTHOR_COLUMNS) + "\n"


def test_table_has_a_header_aligned_columns_and_a_row_count(authors):
    out = shard_query("testapp.Author", "--values", "email", "score", "--filter", "score=3")
    lines = out.splitlines()
    expected = Author.objects.filter(score=3).strong().count()
    assert lines[0].split() == ["email", "score"]
    assert set(lines[1]) == {"-", " "}
    assert len(lines) == 2 + expected + 1
    assert lines[-1] == f"({expected} rows)"
    body = lines[2:-1]
    assert all(line.split()[1] == "3" for line in body)
    assert len({len(line) for line in [lines[0], *body]}) == 1  # score right-aligned


def test_table_says_no_rows_when_nothing_matches():
    assert shard_query("testapp.Author").strip() == "(no rows)"
    assert shard_query_json("testapp.Author") == []


def test_count_prints_the_number_and_json_wraps_it(authors):
    expected = Author.objects.filter(score__gt=2).strong().count()
    assert shard_query("testapp.Author", "--count", "--filter", "score__gt=2").strip() == str(
        expected
    )
    assert shard_query_json("testapp.Author", "--count", "--filter", "score__gt=2") == {
        "count": expected
    }
    assert shard_query_json("testapp.Author", "--count", "--limit", "5") == {"count": 5}


def test_values_selects_fields_and_follows_relations(authors):
    post = PostFactory(author=authors[0], title="hello")
    rows = shard_query_json("testapp.Post", "--values", "title", "author__email")
    assert rows == [{"title": "hello", "author__email": authors[0].email}]
    assert post.pk


@pytest.mark.parametrize(
    "order_args",
    [["--order-by=-score", "--order-by=email"], ["--order-by", "-score", "--order-by", "email"]],
    ids=["equals-form", "space-form"],
)
def test_order_by_descending_and_limit_match_the_orm(authors, order_args):
    rows = shard_query_json("testapp.Author", *order_args, "--limit", "7")
    expected = list(
        Author.objects.strong().order_by("-score", "email").values_list("id", flat=True)[:7]
    )
    assert [r["id"] for r in rows] == expected


def test_shard_restricts_rows_to_that_shard(authors):
    name = shard_for(Author, authors[0].pk).name
    rows = shard_query_json("testapp.Author", "--shard", name)
    assert sorted(r["id"] for r in rows) == strong_ids(Author.objects.on_shard(name))
    assert {shard_for(Author, r["id"]).name for r in rows} == {name}
    assert 0 < len(rows) < len(authors)


def test_unsharded_model_is_queried_on_its_own_database():
    Tag.objects.create(name="django")
    Tag.objects.create(name="shards")
    rows = shard_query_json("testapp.Tag", "--order-by", "-name")
    assert [r["name"] for r in rows] == ["shards", "django"]


def test_model_name_is_case_insensitive(authors):
    assert shard_query_json("testapp.author", "--count") == {"count": 20}


def test_the_command_fans_out_even_when_fanout_is_denied(authors):
    with override_settings(DJANGO_SHARDS={**settings.DJANGO_SHARDS, "FANOUT": "deny"}):
        assert shard_query_json("testapp.Author", "--count") == {"count": 20}


# -- --sql ---------------------------------------------------------------------------------


def test_sql_returns_rows_of_every_shard_with_a_shard_column(authors):
    rows = shard_query_json("testapp.Author", "--sql", "SELECT id, email FROM testapp_author")
    assert sorted(r["id"] for r in rows) == sorted(a.pk for a in authors)
    for row in rows:
        assert list(row) == ["shard", "id", "email"]
        assert row["shard"] == shard_for(Author, row["id"]).name


def test_sql_runs_once_on_each_shard_of_the_group(authors):
    rows = shard_query_json("testapp.Author", "--sql", "SELECT COUNT(*) AS n FROM testapp_author")
    owners = [s.name for s in shard_map_for(Author).owning_shards]
    assert [r["shard"] for r in rows] == owners
    assert sum(r["n"] for r in rows) == 20


def test_sql_on_one_shard(authors):
    name = shard_for(Author, authors[0].pk).name
    rows = shard_query_json(
        "testapp.Author", "--shard", name, "--sql", "SELECT id FROM testapp_author"
    )
    assert sorted(r["id"] for r in rows) == strong_ids(Author.objects.on_shard(name))
    assert {r["shard"] for r in rows} == {name}


def test_sql_as_table_and_csv(authors):
    sql = "SELECT email FROM testapp_author WHERE score = 3 ORDER BY email"
    table = shard_query("testapp.Author", "--sql", sql).splitlines()
    assert table[0].split() == ["shard", "email"]
    out = shard_query("testapp.Author", "--sql", sql, "--format", "csv")
    lines = list(csv.reader(io.StringIO(out)))
    assert lines[0] == ["shard", "email"]
    expected = sorted(Author.objects.strong().filter(score=3).values_list("email", flat=True))
    assert sorted(line[1] for line in lines[1:]) == expected
    assert len(table) == 2 + len(expected) + 1


REFUSED_SQL = [
    "DELETE FROM testapp_author",
    "SELECT 1; DROP TABLE testapp_author",
    "UPDATE testapp_author SET score = 99",
    "INSERT INTO testapp_author (id, email) VALUES (1, 'a')",
    "SELECT * INTO OUTFILE '/tmp/authors.txt' FROM testapp_author",
    "SELECT * FROM testapp_author INTO DUMPFILE '/tmp/authors.bin'",
    "WITH x AS (DELETE FROM testapp_author RETURNING id) SELECT * FROM x",
    "SELECT * FROM testapp_author FOR UPDATE",
    "SELECT * FROM testapp_author LOCK IN SHARE MODE",
    "DROP TABLE testapp_author",
    "TRUNCATE testapp_author",
    "CREATE TABLE evil (a int)",
    "SELECT 1 --1; DROP TABLE testapp_author",  # MySQL: --1 is minus minus one, not a comment
    "SELECT 1 /*!50000 INTO OUTFILE '/tmp/x' */",  # MySQL runs /*! ... */
    "SELECT '\\'; DELETE FROM testapp_author; -- '",  # MySQL: the string ends at \\'
    "SELECT 1 #'\n; DELETE FROM testapp_author; -- '",  # MySQL: # starts a comment
    "SELECT GET_LOCK('x', 10)",
    "SELECT get_lock/**/('x', 10)",
    "SELECT * FROM testapp_author FOR /* now */ UPDATE",
    "SELECT $$; DELETE FROM testapp_author; $$",  # sqlparse: a string; MySQL: a name
    "SELECT 1 AS [a; DELETE FROM testapp_author]",
    "SELECT 1; SELECT 2",
    "EXPLAIN SELECT * FROM testapp_author",
    "",
    "-- only a comment",
]


@pytest.mark.parametrize("sql", REFUSED_SQL)
def test_sql_refuses_anything_but_one_select_and_runs_nothing(authors, sql):
    aliases = {a for s in shard_map_for(Author).shards.values() for a in s.aliases}
    with CaptureQueriesContext(connections["default"]) as catalog_queries:
        captured = {alias: CaptureQueriesContext(connections[alias]) for alias in aliases}
        for ctx in captured.values():
            ctx.__enter__()
        try:
            error = refused("testapp.Author", "--sql", sql)
        finally:
            for ctx in captured.values():
                ctx.__exit__(None, None, None)
    assert error.returncode == 2
    assert "nothing was run" in str(error)
    assert all(not ctx.captured_queries for ctx in captured.values())
    assert not [q for q in catalog_queries.captured_queries if "testapp" in q["sql"]]
    assert Author.objects.strong().count() == len(authors)


def test_sql_error_from_the_database_names_the_shard_and_exits_1(authors):
    error = refused("testapp.Author", "--sql", "SELECT no_such_column FROM testapp_author")
    assert error.returncode == 1
    assert "failed on shard" in str(error) and "no_such_column" in str(error)


@pytest.mark.parametrize(
    "extra",
    [
        ["--filter", "score=1"],
        ["--exclude", "score=1"],
        ["--order-by", "email"],
        ["--values", "email"],
        ["--limit", "3"],
        ["--count"],
    ],
)
def test_sql_does_not_combine_with_orm_options(extra):
    error = refused("testapp.Author", "--sql", "SELECT 1", *extra)
    assert error.returncode == 2
    assert extra[0] in str(error)


def test_sql_needs_a_sharded_model():
    error = refused("testapp.Tag", "--sql", "SELECT 1")
    assert "testapp.Tag is not sharded" in str(error)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["testapp.Nope"], "Unknown model 'testapp.Nope'"),
        (["nope.Author"], "no installed app 'nope'"),
        (["Author"], "app_label.ModelName"),
        (["testapp.Author", "--filter", "nope=1"], "nope"),
        (["testapp.Author", "--filter", "score__nope=1"], "nope"),
        (["testapp.Author", "--filter", "score=abc"], "score"),
        (["testapp.Author", "--filter", "joined=yesterday"], "yesterday"),
        (["testapp.Author", "--filter", "score"], "the = is missing"),
        (["testapp.Author", "--filter", "=1"], "the = is missing"),
        (["testapp.Author", "--filter", "name__isnull=maybe"], "true or false"),
        (["testapp.Author", "--filter", "score__range=1"], "two values"),
        (["testapp.Author", "--exclude", "nope=1"], "nope"),
        (["testapp.Author", "--order-by=-nope"], "nope"),
        (["testapp.Author", "--values", "nope"], "nope"),
        (["testapp.Author", "--limit", "0"], "--limit"),
        (["testapp.Author", "--limit=-3"], "--limit"),
        (["testapp.Author", "--limit", "ten"], "--limit"),
        (["testapp.Author", "--shard", "s9"], "shards: s0, s1, s2, s3"),
        (["testapp.Author", "--shard", "s9", "--sql", "SELECT 1"], "no shard named 's9'"),
        (["testapp.Tag", "--shard", "s0"], "not sharded"),
        (["testapp.Author", "--format", "xml"], "xml"),
    ],
)
def test_bad_input_is_a_command_error_with_exit_code_2(argv, message):
    error = refused(*argv)
    assert error.returncode == 2
    assert message in str(error)


def test_bad_input_changes_nothing(authors):
    refused("testapp.Author", "--filter", "score=abc")
    refused("testapp.Author", "--sql", "DELETE FROM testapp_author")
    assert Author.objects.strong().count() == len(authors)


# -- output helpers --------------------------------------------------------------------------


def test_dash_values_are_joined_to_their_option_unless_they_are_options():
    known = {"-v", "--limit", "--order-by"}
    assert _join_dash_values(["--order-by", "-created"], ["--order-by"], known) == [
        "--order-by=-created"
    ]
    assert _join_dash_values(["--order-by", "-v", "2"], ["--order-by"], known) == [
        "--order-by",
        "-v",
        "2",
    ]
    assert _join_dash_values(["--order-by", "--limit"], ["--order-by"], known) == [
        "--order-by",
        "--limit",
    ]


def test_format_table_shows_null_and_cuts_long_cells():
    out = format_table(["a", "b"], [(None, "x" * 200), (12, "line\nbreak")]).splitlines()
    assert out[2].startswith("NULL")
    assert out[2].endswith("…") and len(out[2]) < 100
    assert "line\\nbreak" in out[3]
    assert out[3].split()[0] == "12"
