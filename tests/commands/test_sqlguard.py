"""``django_shards.sqlguard``: the text of ``shard_query --sql`` is one plain, read-only
``SELECT`` or it is refused with the reason (no database needed for that), and what runs
is rolled back and read-only on the database (needs one).

``tests/commands/test_shard_query.py`` checks the command on top of it: a refused text runs
nothing on any shard.
"""

import pytest
from django.db import connections

from django_shards import shard_for
from django_shards.sqlguard import SQLFailed, UnsafeSQL, read_only_select, run_read_only
from tests.factories import AuthorFactory
from tests.testapp.models import Author

# -- what is run, exactly -------------------------------------------------------------------

KEPT = {
    "SELECT 1": "SELECT 1",
    "  SELECT 1;  -- done\n": "SELECT 1",
    "SELECT 1; -- trailing\n": "SELECT 1",
    "/* why */ SELECT 1 /* after */ ;": "/* why */ SELECT 1",
    "SELECT 1 /* ; DROP TABLE t */": "SELECT 1",
    "SELECT 1 --\tcomment": "SELECT 1",
    "SELECT 1 -- one\n, 2": "SELECT 1 -- one\n, 2",
    "select replace(email, 'a', 'b') from t": "select replace(email, 'a', 'b') from t",
    "SELECT 1 FROM t ORDER BY 1 LIMIT 5 OFFSET 2": "SELECT 1 FROM t ORDER BY 1 LIMIT 5 OFFSET 2",
    "SELECT 1 UNION SELECT 2": "SELECT 1 UNION SELECT 2",
    # strings and quoted names may hold anything but a backslash
    "SELECT 'DELETE FROM t; DROP TABLE t' AS s": "SELECT 'DELETE FROM t; DROP TABLE t' AS s",
    "SELECT * FROM t WHERE f = 'FOR UPDATE'": "SELECT * FROM t WHERE f = 'FOR UPDATE'",
    "SELECT 'it''s', 'a#b'": "SELECT 'it''s', 'a#b'",
    'SELECT `a#b`, "c#d" FROM t': 'SELECT `a#b`, "c#d" FROM t',
    # words that only look like the refused ones
    "SELECT for_update, get_lock FROM t": "SELECT for_update, get_lock FROM t",
    "SELECT truncate(1.5, 0)": "SELECT truncate(1.5, 0)",
}

CTES = [
    "WITH x AS (SELECT 1 AS n) SELECT n FROM x UNION SELECT 2",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3) SELECT i FROM n",
]


@pytest.mark.parametrize("sql", KEPT)
def test_a_plain_select_is_kept_without_its_trailing_semicolon_and_comments(sql):
    assert read_only_select(sql) == KEPT[sql]


@pytest.mark.parametrize("sql", CTES)
def test_a_select_with_common_table_expressions_is_kept(sql):
    assert read_only_select(sql) == sql


# -- what is refused, and the reason given --------------------------------------------------

REFUSED = {
    # nothing, or more than one statement
    "": "there is no statement to run",
    " ; ; ": "there is no statement to run",
    "-- only a comment": "there is no statement to run",
    "/* nothing */": "there is no statement to run",
    "SELECT 1; SELECT 2": "it holds 2 statements; give exactly one SELECT",
    "SELECT 1; DROP TABLE t": "it holds 2 statements",
    "SELECT 1; SELECT 2; SELECT 3": "it holds 3 statements",
    # another kind of statement
    "DELETE FROM t": "it is a DELETE statement; only a single SELECT is run",
    "UPDATE t SET a = 1": "it is an UPDATE statement",
    "INSERT INTO t VALUES (1)": "it is an INSERT statement",
    "REPLACE INTO t VALUES (1)": "it is a REPLACE statement",
    "CREATE TABLE x (a int)": "it is a CREATE statement",
    "ALTER TABLE t ADD c int": "it is an ALTER statement",
    "DROP TABLE t": "it is a DROP statement",
    "TRUNCATE t": "it is a TRUNCATE statement",
    "EXPLAIN SELECT 1": "it is not a SELECT",
    "SHOW TABLES": "it is not a SELECT",
    "SET @a = 1": "it is not a SELECT",
    "CALL p()": "it is not a SELECT",
    "GRANT ALL ON *.* TO x": "it is not a SELECT",
    "LOAD DATA INFILE 'x' INTO TABLE t": "it is not a SELECT",
    # a write or DDL inside the SELECT (a CTE that writes)
    "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x": "it contains DELETE",
    "WITH x AS (UPDATE t SET a = 1 RETURNING a) SELECT * FROM x": "it contains UPDATE",
    "WITH x AS (INSERT INTO t VALUES (1) RETURNING a) SELECT * FROM x": "it contains INSERT",
    "SELECT 1 FROM t WHERE a IN (DROP TABLE t)": "it contains DROP",
    # a SELECT that writes a file or a variable, or locks
    "SELECT * INTO OUTFILE '/tmp/x' FROM t": "it contains INTO, which writes or locks",
    "SELECT a INTO OUTFILE '/tmp/x' FROM t": "it contains INTO",
    "SELECT * FROM t INTO DUMPFILE '/tmp/x.bin'": "it contains INTO",
    "SELECT 1 INTO @v": "it contains INTO",
    "SELECT * FROM t PROCEDURE ANALYSE()": "it contains PROCEDURE",
    "SELECT 1 FROM t LOCK IN SHARE MODE": "it contains LOCK",
    "SELECT * FROM t FOR UPDATE": "FOR UPDATE takes row locks",
    "select * from t for update nowait": "FOR UPDATE takes row locks",
    "SELECT 1 FROM t FOR\nUPDATE": "FOR UPDATE takes row locks",
    "SELECT * FROM t FOR /* now */ UPDATE": "FOR UPDATE takes row locks",
    "SELECT * FROM t FOR SHARE": "FOR SHARE takes row locks",
    # functions and sequences with side effects
    "SELECT GET_LOCK('x', 10)": "GET_LOCK() has side effects",
    "SELECT get_lock/**/('x', 10)": "GET_LOCK() has side effects",
    "SELECT RELEASE_LOCK('x')": "RELEASE_LOCK() has side effects",
    "SELECT RELEASE_ALL_LOCKS()": "RELEASE_ALL_LOCKS() has side effects",
    "SELECT nextval(s)": "NEXTVAL() has side effects",
    "SELECT setval('s', 5)": "SETVAL() has side effects",
    "SELECT load_file('/etc/passwd')": "LOAD_FILE() has side effects",
    "SELECT load_extension('x')": "LOAD_EXTENSION() has side effects",
    "SELECT NEXT VALUE FOR s": "NEXT VALUE FOR advances a sequence",
    # what MySQL and sqlparse could read differently
    "SELECT '\\'; DELETE FROM t; -- '": "backslashes are not accepted",
    "SELECT 'a\\'b'": "backslashes are not accepted",
    "SELECT 1 --1; DROP TABLE t": "-- starts a comment only when a space follows it",
    "SELECT 1 --": "-- starts a comment only when a space follows it",
    "SELECT 1 /*!50000 INTO OUTFILE '/tmp/x' */": "MySQL runs the text of /*! ... */ comments",
    "SELECT 1 /*M!100000 INTO OUTFILE '/tmp/x' */": "MySQL runs the text of /*! ... */",
    "select 1 # a comment": "# comments are not accepted; use -- followed by a space",
    "SELECT 1 #'\n; DELETE FROM t; -- '": "# is not accepted outside a string",
    "SELECT a#b FROM t": "# is not accepted outside a string",
    "SELECT $$; DELETE FROM t; $$": "dollar-quoted strings are not accepted",
    "SELECT $tag$x$tag$": "dollar-quoted strings are not accepted",
    "SELECT 1 AS [a; DELETE FROM t]": "[bracketed] names are not accepted",
    "SELECT 1 AS [a]": "[bracketed] names are not accepted",
    "SELECT ´a´ FROM t": "[bracketed] names are not accepted",  # noqa: RUF001 - the look-alike character is the point of the test
}


@pytest.mark.parametrize("sql", REFUSED)
def test_anything_but_one_read_only_select_is_refused_with_the_reason(sql):
    with pytest.raises(UnsafeSQL) as excinfo:
        read_only_select(sql)
    assert REFUSED[sql] in str(excinfo.value)


def test_unsafe_sql_is_a_value_error():
    with pytest.raises(ValueError):
        read_only_select("DELETE FROM t")


# -- the second guard, on a real database ----------------------------------------------------


@pytest.mark.django_db(databases="__all__")
def test_a_select_runs_and_returns_its_columns_and_rows():
    author = AuthorFactory(score=7)
    primary = shard_for(Author, author.pk).primary
    columns, rows = run_read_only(
        primary, f"SELECT id, score FROM testapp_author WHERE id = {int(author.pk)}"
    )
    assert columns == ["id", "score"]
    assert rows == [(author.pk, 7)]


@pytest.mark.django_db(databases="__all__")
def test_an_error_in_the_sql_is_sql_failed_with_the_database_message():
    primary = shard_for(Author, 1).primary
    with pytest.raises(SQLFailed) as excinfo:
        run_read_only(primary, "SELECT no_such_column FROM testapp_author")
    assert "no_such_column" in str(excinfo.value)
    # the connection is usable afterwards
    assert run_read_only(primary, "SELECT 1 AS one") == (["one"], [(1,)])


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_write_that_slips_past_the_parser_is_refused_by_the_database():
    """The second guard on its own: a read-only transaction (MySQL) or query_only (SQLite),
    and MySQL's multi-statements switched off."""
    author = AuthorFactory(score=1)
    shard = shard_for(Author, author.pk)
    for alias in shard.aliases:
        with pytest.raises(SQLFailed):
            run_read_only(alias, "UPDATE testapp_author SET score = 99")
        with pytest.raises(SQLFailed):
            run_read_only(alias, "SELECT 1; SELECT 2")
    assert Author.objects.strong().get(pk=author.pk).score == 1
    author.score = 2
    author.save()  # the connections are writable again afterwards
    assert Author.objects.strong().get(pk=author.pk).score == 2
    for alias in shard.aliases:
        assert not connections[alias].in_atomic_block


@pytest.mark.django_db(databases="__all__")
def test_a_write_inside_a_callers_transaction_is_rolled_back():
    author = AuthorFactory(score=1)
    primary = shard_for(Author, author.pk).primary
    try:
        run_read_only(primary, "UPDATE testapp_author SET score = 99")
    except SQLFailed:
        pass  # SQLite refuses it outright
    assert not Author.objects.strong().filter(score=99).exists()
