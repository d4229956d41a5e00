"""Running a user's SQL text read-only: one plain ``SELECT``, and nothing it does is kept.

Two guards, used together (``shard_query --sql`` does):

- :func:`read_only_select` reads the text with sqlparse and returns the one ``SELECT`` it
  holds, or raises :class:`UnsafeSQL` saying why it is refused: anything but a ``SELECT``,
  writes and locks inside one (``INTO``, ``FOR UPDATE``, ``LOCK IN SHARE MODE``,
  ``GET_LOCK()`` ...), several statements, and the constructs on which MySQL and sqlparse
  could split the text differently (backslashes, ``#``, ``--`` without a space, ``/*! */``,
  dollar quotes, ``[bracketed]`` names). No database is touched.
- :func:`run_read_only` runs that statement on one alias with MySQL's multi-statement
  support switched off, in a read-only transaction (MySQL) or under ``PRAGMA query_only``
  (SQLite) that is always rolled back. A database error comes back as :class:`SQLFailed`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import sqlparse
from django.db import DatabaseError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from sqlparse import tokens as T

logger = logging.getLogger(__name__)

#: words that make a SELECT write or lock: SELECT ... INTO OUTFILE/DUMPFILE/@var,
#: LOCK IN SHARE MODE, PROCEDURE ANALYSE()
_REFUSED_WORDS = frozenset({"INTO", "OUTFILE", "DUMPFILE", "LOCK", "PROCEDURE"})
#: functions with side effects outside the query's result
_REFUSED_FUNCTIONS = frozenset(
    {
        "GET_LOCK",
        "RELEASE_LOCK",
        "RELEASE_ALL_LOCKS",
        "NEXTVAL",
        "SETVAL",
        "LOAD_FILE",
        "LOAD_EXTENSION",
    }
)
#: after "--", MySQL needs whitespace to read a comment (``--1`` is minus minus one)
_COMMENT_SPACE = frozenset(" \t\r\n")
MYSQL_OPTION_MULTI_STATEMENTS_ON = 0
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1


class UnsafeSQL(ValueError):
    """SQL text that is not a single plain, read-only ``SELECT``; the message says why."""


class SQLFailed(Exception):
    """The database refused or failed the statement. The arguments are the database
    error's own (mysqlclient: ``(code, message)``), which caused it."""


# -- the first guard: reading the text ------------------------------------------------------


def read_only_select(sql: str) -> str:
    """The one ``SELECT`` statement in ``sql``, ready to run (no trailing ``;``, comments
    after it dropped).

    Raises :class:`UnsafeSQL` saying why the text is refused. Besides anything that is
    not a ``SELECT``, this refuses what the two SQL readers (sqlparse here, the database
    there) could split differently: backslashes, ``#``, ``--`` without a following space,
    ``/*! ... */``, dollar quotes and ``[bracketed]`` names.
    """
    if "\\" in sql:
        raise UnsafeSQL(
            "backslashes are not accepted, because MySQL and SQLite read them differently "
            "in string literals; write a quote inside a string as ''"
        )
    statements = [s for s in sqlparse.parse(sql) if _significant(s)]
    if not statements:
        raise UnsafeSQL("there is no statement to run")
    if len(statements) > 1:
        raise UnsafeSQL(f"it holds {len(statements)} statements; give exactly one SELECT")
    statement = statements[0]
    kind = statement.get_type()
    if kind != "SELECT":
        article = "an" if kind[:1] in ("A", "E", "I", "O", "U") else "a"
        what = "not a SELECT" if kind == "UNKNOWN" else f"{article} {kind} statement"
        raise UnsafeSQL(f"it is {what}; only a single SELECT is run")
    tokens = [t for t in statement.flatten() if not t.is_whitespace]
    for token in tokens:
        if token.ttype in T.Comment:
            _check_comment(token.value)
    code = [t for t in tokens if t.ttype not in T.Comment]  # GET_LOCK/**/( is still a call
    for i, token in enumerate(code):
        _check_token(token, code[i + 1].value.upper() if i + 1 < len(code) else "")
    kept = list(statement.flatten())
    while kept and (kept[-1].is_whitespace or kept[-1].ttype in T.Comment or kept[-1].value == ";"):
        kept.pop()
    return "".join(t.value for t in kept).strip()


def _significant(statement: Any) -> list[Any]:
    """The statement's tokens without whitespace, comments and semicolons."""
    return [
        t
        for t in statement.flatten()
        if not t.is_whitespace
        and t.ttype not in T.Comment
        and not (t.ttype is T.Punctuation and t.value == ";")
    ]


def _check_comment(value: str) -> None:
    if value.startswith(("/*!", "/*M!")):
        raise UnsafeSQL("MySQL runs the text of /*! ... */ comments; remove the comment")
    if value.startswith("#"):
        raise UnsafeSQL("# comments are not accepted; use -- followed by a space")
    if value.startswith("--") and (len(value) < 3 or value[2] not in _COMMENT_SPACE):
        raise UnsafeSQL("-- starts a comment only when a space follows it")


def _check_token(token: Any, next_word: str) -> None:
    """Refuse a token (not a comment) that writes, locks or may be read differently."""
    value: str = token.value
    upper = value.upper()
    if token.ttype in T.String:
        return
    if token.ttype in T.Keyword.DML and upper != "SELECT":
        raise UnsafeSQL(f"it contains {upper}; only reading is allowed")
    if token.ttype in T.Keyword.DDL:
        raise UnsafeSQL(f"it contains {upper}; only reading is allowed")
    if upper in _REFUSED_WORDS:
        raise UnsafeSQL(f"it contains {upper}, which writes or locks; only reading is allowed")
    if upper == "FOR" and next_word in {"UPDATE", "SHARE"}:
        raise UnsafeSQL(f"FOR {next_word} takes row locks; only reading is allowed")
    if upper == "NEXT" and next_word == "VALUE":
        raise UnsafeSQL("NEXT VALUE FOR advances a sequence; only reading is allowed")
    if upper in _REFUSED_FUNCTIONS and next_word == "(":
        raise UnsafeSQL(f"{upper}() has side effects; only reading is allowed")
    if "#" in value and not value.startswith(("`", '"')):
        raise UnsafeSQL("# is not accepted outside a string (MySQL reads it as a comment)")
    if token.ttype is T.Literal and value.startswith("$"):
        raise UnsafeSQL("dollar-quoted strings are not accepted; use '...'")
    if value.startswith(("[", "´")):  # noqa: RUF001 - sqlparse quotes names with it
        raise UnsafeSQL('[bracketed] names are not accepted; quote names with " or `')


# -- the second guard: running it -----------------------------------------------------------


def run_read_only(alias: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``sql`` on ``alias`` and return ``(columns, rows)``; nothing it does is kept.

    The statement runs in a transaction (a savepoint inside a caller's transaction) that
    is rolled back, read-only where the backend allows it. Call it only with the output
    of :func:`read_only_select`: this is the second guard, not the first. Raises
    :class:`SQLFailed` when the database refuses or fails the statement; a connection that
    cannot be opened raises Django's own error (so a replica that is down can be retried
    on its primary, and an error in the SQL is not).
    """
    connection = connections[alias]
    connection.ensure_connection()
    outermost = not connection.in_atomic_block and connection.get_autocommit()
    try:
        with transaction.atomic(using=alias), _one_statement_only(connection):
            with _read_only(connection, outermost=outermost), connection.cursor() as cursor:
                cursor.execute(sql)
                description = cursor.description  # None: the statement returned no rows
                columns = [c[0] for c in description or ()]
                rows = [tuple(row) for row in cursor.fetchall()] if description else []
            transaction.set_rollback(True, using=alias)
    except DatabaseError as exc:
        raise SQLFailed(*exc.args) from exc
    return columns, rows


@contextlib.contextmanager
def _one_statement_only(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """MySQL: the server refuses a second statement while the block runs.

    mysqlclient turns multi-statements on by default; SQLite's driver never runs more
    than one statement per call.
    """
    raw = connection.connection
    if connection.vendor != "mysql" or not hasattr(raw, "set_server_option"):
        yield
        return
    raw.set_server_option(MYSQL_OPTION_MULTI_STATEMENTS_OFF)
    try:
        yield
    finally:
        if connection.settings_dict.get("OPTIONS", {}).get("multi_statements", True):
            try:
                raw.set_server_option(MYSQL_OPTION_MULTI_STATEMENTS_ON)
            except raw.Error as exc:  # the driver's (DB-API connection.Error)
                # the connection goes on refusing multi-statements, which is only
                # stricter; the statement's own outcome stands
                logger.warning(
                    "Could not switch multi-statements back on for %r: %s", connection.alias, exc
                )


@contextlib.contextmanager
def _read_only(connection: BaseDatabaseWrapper, *, outermost: bool) -> Iterator[None]:
    """Inside ``transaction.atomic``: refuse writes where the backend can.

    MySQL/MariaDB: ``SET TRANSACTION READ ONLY`` when this block opened the transaction
    (it cannot change a transaction that is already running). SQLite: ``PRAGMA
    query_only`` for the block, restored after.
    """
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("PRAGMA query_only")
            (before,) = cursor.fetchone()
            cursor.execute("PRAGMA query_only = ON")
            try:
                yield
            finally:
                cursor.execute(f"PRAGMA query_only = {'ON' if before else 'OFF'}")
            return
        if connection.vendor == "mysql" and outermost:
            cursor.execute("SET TRANSACTION READ ONLY")
    yield
