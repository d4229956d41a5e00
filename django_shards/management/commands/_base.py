"""What the django_shards commands share: output as a table, JSON or CSV, and errors.

Exit codes scripts can trust: 0 when the command did its work, 1 when a database or shard
failed (or, for a health check, something is unhealthy), 2 when the input is wrong.
Argument errors that argparse finds also exit 2.

No command ends in a traceback: a database error or a ``ShardingError`` that a command does
not handle itself becomes one ``CommandError`` sentence (:func:`command_error`), naming what
the command was doing when the command named it (:meth:`ShardsCommand.step`). Passwords
are cut out of every such sentence.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from typing import Any, NoReturn

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, models
from django.utils.connection import ConnectionDoesNotExist

from django_shards.exceptions import ShardingError
from django_shards.resharding.plan import DatabaseUnusable

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2

OUTPUT_FORMATS = ("table", "json", "csv")
#: a table cell longer than this is cut (JSON and CSV are never cut)
MAX_CELL_WIDTH = 80


class CommandJSONEncoder(DjangoJSONEncoder):
    """``DjangoJSONEncoder`` (decimals as strings, UUIDs, durations) with two changes:
    datetimes and times keep their microseconds (Django cuts them to milliseconds, as
    JavaScript does), and bytes are written as hex."""

    def default(self, o: Any) -> Any:
        if isinstance(o, datetime.datetime | datetime.time):
            return o.isoformat()
        if isinstance(o, bytes | bytearray | memoryview):
            return bytes(o).hex()
        return super().default(o)


#: what a command turns into one ``CommandError`` sentence instead of a traceback
FAILURES = (DatabaseError, ShardingError, ConnectionDoesNotExist)

_MISSING_ALIAS = re.compile(r"The connection '(?P<alias>.*)' doesn't exist")


def _passwords() -> list[str]:
    """Every password the settings hold (``DATABASES``, ``DJANGO_SHARDS["OPERATOR"]``),
    longest first."""
    found = {str(cfg.get("PASSWORD") or "") for cfg in settings.DATABASES.values()}
    operator = (getattr(settings, "DJANGO_SHARDS", None) or {}).get("OPERATOR") or {}
    if isinstance(operator, dict):
        found |= {str(operator.get(k) or "") for k in ("PASSWORD", "REPLICATION_PASSWORD")}
    return sorted((p for p in found if p), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every password of the settings replaced by ``***``."""
    for password in _passwords():
        text = text.replace(password, "***")
    return text


def missing_alias(exc: BaseException) -> str | None:
    """The alias that ``DATABASES`` lacks, if ``exc`` is Django's ``ConnectionDoesNotExist``."""
    if not isinstance(exc, ConnectionDoesNotExist):
        return None
    match = _MISSING_ALIAS.search(str(exc))
    return match["alias"] if match else "?"


def error_reason(exc: BaseException) -> str:
    """What went wrong, in a few words and on one line, without a password:
    ``Can't connect to server on '127.0.0.1' (111) (error 2002)``,
    ``alias 's4_r2' is not in DATABASES``."""
    alias = missing_alias(exc)
    if alias is not None:
        return f"alias {alias!r} is not in DATABASES"
    args = exc.args
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        text = f"{args[1]} (error {args[0]})"  # mysqlclient: (code, message)
    else:
        text = str(exc)
    text = " ".join(text.split()).rstrip(".")
    return redact(text) or type(exc).__name__


def _database_failed(exc: BaseException) -> bool:
    """True when ``exc`` or what caused it is a database (or a missing alias) failing."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(
            seen, DatabaseError | ConnectionDoesNotExist | TimeoutError | DatabaseUnusable
        ):
            return True
        seen = seen.__cause__
    return False


def command_error(exc: BaseException, doing: str | None = None) -> CommandError:
    """One ``CommandError`` sentence for a failure a command did not handle itself.

    A ``ShardingError`` already says what failed and where, and is kept as it is. A
    database error says only what the driver saw, so it is put after ``doing`` (what the
    command was doing, naming the shard or alias), as "Could not <doing>: <error>."
    Exit code 1 when a database failed, 2 when the input was wrong.
    """
    returncode = EXIT_UNHEALTHY if _database_failed(exc) else EXIT_USAGE
    if isinstance(exc, ShardingError):
        message = redact(" ".join(str(exc).split()))
    elif doing is not None:
        message = f"Could not {doing}: {error_reason(exc)}."
    else:
        message = f"A database failed: {error_reason(exc)}."
    return CommandError(message, returncode=returncode)


def model_from_label(label: str) -> type[models.Model]:
    """The model named ``app_label.ModelName`` (the model name in any case).

    Raises ``CommandError`` naming the label, with the closest spellings it knows.
    """
    app_label, dot, model_name = label.rpartition(".")
    same_name = [
        m._meta.label for m in apps.get_models() if m._meta.model_name == model_name.lower()
    ]
    hint = f" Did you mean {' or '.join(same_name)}?" if same_name else ""
    if not dot or not app_label or not model_name:
        raise CommandError(
            f"{label!r} is not a model label; write app_label.ModelName, for example "
            f"{same_name[0] if same_name else 'testapp.Author'}.",
            returncode=EXIT_USAGE,
        )
    try:
        app_config = apps.get_app_config(app_label)
    except LookupError:
        raise CommandError(
            f"Unknown model {label!r}: there is no installed app {app_label!r}.{hint}",
            returncode=EXIT_USAGE,
        ) from None
    try:
        return app_config.get_model(model_name)
    except LookupError:
        known = ", ".join(sorted(m.__name__ for m in app_config.get_models())) or "none"
        raise CommandError(
            f"Unknown model {label!r}: app {app_label!r} has no model {model_name!r} "
            f"(its models: {known}).{hint}",
            returncode=EXIT_USAGE,
        ) from None


def unique_names(names: Iterable[str]) -> list[str]:
    """Column names made unique for JSON objects: a repeated ``id`` becomes ``id_2``."""
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            n += 1
            candidate = f"{name}_{n}"
        seen.add(candidate)
        out.append(candidate)
    return out


def cell_text(value: Any) -> str:
    """How a value reads in a table cell (``NULL`` for None, bytes as hex)."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value).hex()
    elif isinstance(value, datetime.datetime):
        text = value.isoformat(sep=" ")
    else:
        text = str(value)
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    if len(text) > MAX_CELL_WIDTH:
        text = text[: MAX_CELL_WIDTH - 1] + "…"
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned columns under a header, numbers right-aligned, and a row count.

    With no rows: ``(no rows)``.
    """
    if not rows:
        return "(no rows)"
    texts = [[cell_text(v) for v in row] for row in rows]
    widths = [max([len(name)] + [len(row[i]) for row in texts]) for i, name in enumerate(columns)]
    numeric = [
        all(_is_number(row[i]) or row[i] is None for row in rows)
        and any(_is_number(row[i]) for row in rows)
        for i in range(len(columns))
    ]

    def line(cells: Sequence[str], align_numbers: bool) -> str:
        parts = [
            cell.rjust(width) if align_numbers and is_num else cell.ljust(width)
            for cell, width, is_num in zip(cells, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(columns, align_numbers=True), line(["-" * w for w in widths], False)]
    out.extend(line(row, align_numbers=True) for row in texts)
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


def format_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A header line and one line per row (None as an empty field)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(
            [bytes(v).hex() if isinstance(v, bytes | bytearray | memoryview) else v for v in row]
        )
    return buffer.getvalue()


def format_json(data: Any) -> str:
    return json.dumps(data, cls=CommandJSONEncoder, indent=2, ensure_ascii=False)


def _join_dash_values(args: list[str], options: Sequence[str], known: Iterable[str]) -> list[str]:
    """``["--order-by", "-created"]`` -> ``["--order-by=-created"]``.

    argparse reads a value that starts with ``-`` as an option and stops with "expected
    one argument"; joined with ``=`` it is taken as the value. A following word that is
    itself an option (``--order-by -v 2``) is left alone.
    """
    known = set(known)
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            out.extend(args[i:])
            break
        following = args[i + 1] if i + 1 < len(args) else None
        if (
            arg in options
            and following is not None
            and following.startswith("-")
            and not following.startswith("--")
            and following not in known
        ):
            out.append(f"{arg}={following}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


class Unhealthy(CommandError, SystemExit):
    """``--check`` found something unhealthy: exit code 1 after the report.

    A ``CommandError`` (``manage.py`` prints its sentence and exits with ``returncode``),
    and a ``SystemExit`` with ``code`` 1 too, so code that calls
    ``call_command("shard_status", "--check")`` and catches ``SystemExit``, as it did
    when the command called ``sys.exit``, keeps working.
    """

    def __init__(self, message: str, returncode: int = EXIT_UNHEALTHY) -> None:
        CommandError.__init__(self, message, returncode=returncode)
        self.code = returncode


# manage.py prints "<class name>: <sentence>": the same "CommandError: ..." as every command
Unhealthy.__name__ = "CommandError"


class ShardsCommand(BaseCommand):
    """Base of the django_shards commands: ``fail()``, the output formats, exit codes."""

    #: options whose value may start with "-", as in ``--order-by -created``
    dash_value_options: tuple[str, ...] = ()

    def execute(self, *args: Any, **options: Any) -> Any:
        """Django's ``execute``, with a failure the command did not handle (a database
        down, a ``ShardingError``) turned into one ``CommandError`` sentence."""
        try:
            return super().execute(*args, **options)
        except FAILURES as exc:
            raise command_error(exc) from exc

    def check(self, *args: Any, **kwargs: Any) -> None:
        """The system checks, without connecting to databases: left to ``databases=None``,
        Django (6.1 on MySQL) connects to every alias to check column types, so one dead
        shard would stop every command before it could report it. ``manage.py check
        --database ALIAS`` still runs those checks."""
        if kwargs.get("databases") is None:
            kwargs["databases"] = []
        super().check(*args, **kwargs)

    @contextlib.contextmanager
    def step(self, doing: str) -> Iterator[None]:
        """Name what the block does (``"read the rows of shard 's1' (alias s1)"``): a
        database that fails in it stops the command with "Could not <doing>: <error>."
        (exit code 1)."""
        try:
            yield
        except FAILURES as exc:
            raise command_error(exc, doing) from exc

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        report_error = parser.error

        def usage_error(message: str) -> NoReturn:
            # From the shell argparse exits 2; from call_command() Django raises a
            # CommandError with returncode 1: make it 2 as well.
            try:
                report_error(message)
            except CommandError as exc:
                raise CommandError(*exc.args, returncode=EXIT_USAGE) from None
            raise AssertionError("unreachable")  # pragma: no cover

        parser.error = usage_error  # type: ignore[method-assign]
        if self.dash_value_options:
            parse_args = parser.parse_args
            options = self.dash_value_options

            def parse_args_with_dash_values(args: Any = None, namespace: Any = None) -> Any:
                if args is not None:
                    known = parser._option_string_actions  # argparse's table of option names
                    args = _join_dash_values([str(a) for a in args], options, known)
                return parse_args(args, namespace)

            parser.parse_args = parse_args_with_dash_values  # type: ignore[method-assign]
        return parser

    def add_format_argument(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--format",
            choices=OUTPUT_FORMATS,
            default="table",
            help="table (default) for people, json or csv for programs.",
        )

    def fail(self, message: str, *, returncode: int = EXIT_USAGE) -> NoReturn:
        """Stop with ``message`` (one clear sentence) and exit ``returncode``."""
        raise CommandError(message, returncode=returncode)

    def write_rows(self, columns: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str) -> None:
        """``rows`` as a table, a JSON array of objects, or CSV with a header."""
        if fmt == "json":
            names = unique_names(columns)
            self.write_json([dict(zip(names, row, strict=True)) for row in rows])
        elif fmt == "csv":
            self.stdout.write(format_csv(columns, rows), ending="")
        else:
            self.stdout.write(format_table(columns, rows))

    def write_json(self, data: Any) -> None:
        self.stdout.write(format_json(data))


def group_names(name: str | None) -> list[str]:
    """The shard groups a command works on: ``[name]``, or every group when ``name`` is None.

    Raises ``CommandError`` (exit 2) naming an unknown group and listing the known ones.
    """
    from django_shards.conf import get_config

    known = list(get_config().groups)
    if name is None:
        return known
    if name not in known:
        raise CommandError(
            f"Shard group {name!r} does not exist (groups: {', '.join(known) or 'none'}).",
            returncode=EXIT_USAGE,
        )
    return [name]


def format_columns(
    columns: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()
) -> str:
    """Text cells in aligned columns under a header, without a row count.

    The cells are written as given (format them first); the columns whose indexes are in
    ``right`` are right-aligned, as numbers read best.
    """
    right_aligned = set(right)
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])
