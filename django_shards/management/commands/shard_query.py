"""``manage.py shard_query MODEL ...``: a fan-out query from the shell.

ORM mode builds a queryset from ``--filter``/``--exclude``/``--order-by``/``--limit``/
``--values`` and lets the sharded queryset fan out and merge; values are passed to the ORM
as data. ``--sql`` runs one read-only ``SELECT`` on every shard of the model's group and
prints the rows of all shards with a leading ``shard`` column.

``--sql`` is guarded twice (:mod:`django_shards.sqlguard`). First the text must be a single
plain ``SELECT``, refused before any database is touched otherwise. Then it runs where a
read of the shard runs (a replica, ``read_only`` on MariaDB, unless the read is strong), in
a read-only transaction that is always rolled back.
"""

from __future__ import annotations

import re
from typing import Any

from django.core.exceptions import FieldDoesNotExist, FieldError, ValidationError
from django.core.management.base import CommandParser
from django.db import DatabaseError, models
from django.db.models import QuerySet

from django_shards.conf import get_config
from django_shards.exceptions import FanoutError, ShardingError, UnknownShard
from django_shards.fanout import get_executor
from django_shards.keys import ShardKey, key_for_model
from django_shards.management.commands._base import (
    EXIT_UNHEALTHY,
    ShardsCommand,
    error_reason,
    model_from_label,
    redact,
)
from django_shards.routing import read_alias
from django_shards.shardmap import get_map
from django_shards.sqlguard import SQLFailed, UnsafeSQL, read_only_select, run_read_only

#: errors that mean "this filter, field or value does not fit the model"
BAD_INPUT_ERRORS = (FieldError, FieldDoesNotExist, ValidationError, ValueError, TypeError)
_FIELD_PATH = re.compile(r"[A-Za-z_]\w*", re.ASCII)
_TRUE, _FALSE = {"true", "1", "yes"}, {"false", "0", "no"}

# -- the command ---------------------------------------------------------------------------


class Command(ShardsCommand):
    help = (
        "Query a model across its shards: ORM filters merged like one database, or a "
        "read-only SELECT (--sql) on every shard of the model's group."
    )
    dash_value_options = ("--order-by",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("model", metavar="MODEL", help="app_label.ModelName")
        parser.add_argument(
            "--filter",
            action="append",
            default=[],
            metavar="F=V",
            help="field__lookup=value, repeatable; __in and __range split on commas, "
            "__isnull takes true or false.",
        )
        parser.add_argument(
            "--exclude", action="append", default=[], metavar="F=V", help="Like --filter."
        )
        parser.add_argument(
            "--order-by",
            action="append",
            default=[],
            metavar="F",
            help="Field to order by, repeatable; -field for descending (--order-by=-field).",
        )
        parser.add_argument("--limit", metavar="N", help="At most N rows.")
        parser.add_argument("--count", action="store_true", help="Print the number of rows.")
        parser.add_argument(
            "--values", nargs="+", metavar="F", help="Fields to print (default: all)."
        )
        parser.add_argument(
            "--sql",
            metavar='"SELECT ..."',
            help="One read-only SELECT, run on every shard of the model's group.",
        )
        self.add_format_argument(parser)
        parser.add_argument("--shard", metavar="NAME", help="Query only this shard.")

    def handle(self, *args: Any, **options: Any) -> None:
        model = model_from_label(options["model"])
        if options["sql"] is not None:
            combined = [
                f"--{name.replace('_', '-')}"
                for name in ("filter", "exclude", "order_by", "values", "limit", "count")
                if options[name] not in (None, False, [])
            ]
            if combined:
                self.fail(
                    f"--sql cannot be combined with {', '.join(combined)}; "
                    "write the condition, order or limit into the SELECT itself."
                )
            self.run_sql(model, options["sql"], options["shard"], options["format"])
        else:
            self.run_orm(model, options)

    # -- ORM mode ------------------------------------------------------------------------

    def run_orm(self, model: type[models.Model], options: dict[str, Any]) -> None:
        label = model._meta.label
        sk = key_for_model(model)
        qs = self.base_queryset(model, sk, options["shard"])
        qs = self.filtered(qs, label, options["filter"], options["exclude"])
        qs = self.ordered(qs, label, options["order_by"])
        fields = options["values"] or []
        qs = self.selected(qs, label, fields)
        if options["limit"] is not None:
            qs = qs[: self.parse_limit(options["limit"])]
        database = None if sk is not None else qs.db

        if options["count"]:
            count = self.evaluate(label, qs.count, database=database)
            if options["format"] == "json":
                self.write_json({"count": count})
            elif options["format"] == "csv":
                self.stdout.write(f"count\n{count}")
            else:
                self.stdout.write(str(count))
            return
        rows = self.evaluate(label, lambda: list(qs), database=database)
        columns = list(fields) or (
            list(rows[0]) if rows else [f.attname for f in model._meta.concrete_fields]
        )
        table = [tuple(row[c] for c in columns) for row in rows]
        self.write_rows(columns, table, options["format"])

    def base_queryset(
        self, model: type[models.Model], sk: ShardKey | None, shard: str | None
    ) -> QuerySet[Any, Any]:
        """Every row of ``model``: a sharded model's fan out (or stay on ``shard``)."""
        if sk is None:
            if shard:
                self.fail(f"--shard needs a sharded model; {model._meta.label} is not sharded.")
            return model._default_manager.all()
        sharded = getattr(model, sk.manager_name).all().fanout()  # the command fans out
        if shard:
            try:
                sharded = sharded.on_shard(shard)
            except UnknownShard as exc:
                self.fail(str(exc))
        return sharded

    def filtered(
        self, qs: QuerySet[Any, Any], label: str, filters: list[str], excludes: list[str]
    ) -> QuerySet[Any, Any]:
        """``qs`` with the ``--filter`` and ``--exclude`` lookups, each checked."""
        for option, items in (("filter", filters), ("exclude", excludes)):
            for item in items:
                lookup = dict([self.parse_lookup(option, item)])
                try:
                    qs = qs.filter(**lookup) if option == "filter" else qs.exclude(**lookup)
                except BAD_INPUT_ERRORS as exc:
                    self.fail(f"--{option} {item!r} does not fit {label}: {_reason(exc)}")
        return qs

    def ordered(self, qs: QuerySet[Any, Any], label: str, names: list[str]) -> QuerySet[Any, Any]:
        """``qs`` ordered by ``--order-by``, each name checked."""
        for name in names:
            if name != "?" and not _FIELD_PATH.fullmatch(name.removeprefix("-")):
                self.fail(f"--order-by {name!r} is not a field name (write field or -field).")
            try:
                qs.order_by(name)  # checks the name now, so the message can quote it
            except BAD_INPUT_ERRORS as exc:
                self.fail(f"--order-by {name!r} does not fit {label}: {_reason(exc)}")
        return qs.order_by(*names) if names else qs

    def selected(self, qs: QuerySet[Any, Any], label: str, fields: list[str]) -> QuerySet[Any, Any]:
        """``qs.values(*fields)`` (every field when none is named), the names checked."""
        for name in fields:
            if not _FIELD_PATH.fullmatch(name):
                self.fail(f"--values {name!r} is not a field name.")
        try:
            return qs.values(*fields)
        except BAD_INPUT_ERRORS as exc:
            self.fail(f"--values {' '.join(fields)} does not fit {label}: {_reason(exc)}")

    def parse_lookup(self, option: str, item: str) -> tuple[str, Any]:
        """``"score__in=1,2"`` -> ``("score__in", ["1", "2"])``: the value stays data."""
        key, eq, raw = item.partition("=")
        if not eq or not key:
            self.fail(f"--{option} {item!r} is not field__lookup=value (the = is missing).")
        if not _FIELD_PATH.fullmatch(key):
            self.fail(f"--{option} {item!r}: {key!r} is not a field__lookup name.")
        lookup = key.rpartition("__")[2] if "__" in key else "exact"
        if lookup == "in":
            return key, raw.split(",")
        if lookup == "range":
            bounds = raw.split(",")
            if len(bounds) != 2:
                self.fail(f"--{option} {item!r}: __range takes two values, low,high.")
            return key, bounds
        if lookup == "isnull":
            if raw.lower() not in _TRUE | _FALSE:
                self.fail(f"--{option} {item!r}: __isnull takes true or false, not {raw!r}.")
            return key, raw.lower() in _TRUE
        return key, raw

    def parse_limit(self, value: Any) -> int:
        try:
            limit = int(str(value).strip())
        except ValueError:
            limit = 0
        if limit < 1:
            self.fail(f"--limit takes a positive whole number of rows, not {value!r}.")
        return limit

    def evaluate(self, label: str, run: Any, *, database: str | None = None) -> Any:
        """``run()``, with database and shard failures turned into a CommandError (exit 1).

        ``database``: an unsharded model's alias, for the message (a sharded query's error
        names its shard)."""
        try:
            return run()
        except FanoutError as exc:
            self.fail(shell_fanout_message(exc), returncode=EXIT_UNHEALTHY)
        except DatabaseError as exc:
            where = "" if database is None else f" on database {database!r}"
            self.fail(
                f"The {label} query failed{where}: {error_reason(exc)}.",
                returncode=EXIT_UNHEALTHY,
            )
        except BAD_INPUT_ERRORS as exc:
            self.fail(f"The {label} query was refused: {_reason(exc)}")
        except ShardingError as exc:
            self.fail(str(exc))

    # -- SQL mode ------------------------------------------------------------------------

    def run_sql(
        self, model: type[models.Model], sql: str, shard_name: str | None, fmt: str
    ) -> None:
        label = model._meta.label
        sk = key_for_model(model)
        if sk is None:
            self.fail(
                f"--sql runs on the shards of a sharded model's group, and {label} is not "
                "sharded; name a sharded model of the group to query."
            )
        try:
            statement = read_only_select(sql)
        except UnsafeSQL as exc:
            self.fail(f"--sql was refused and nothing was run: {exc}.")
        shard_map = get_map(sk.group)
        if shard_name:
            try:
                shards = [shard_map.shard_named(shard_name)]
            except UnknownShard as exc:
                self.fail(str(exc))
        else:
            shards = shard_map.owning_shards
        results = get_executor().run(
            [(shard, read_alias(shard)) for shard in shards],
            lambda alias: run_read_only(alias, statement),
            timeout=get_config().fanout_timeout_seconds,
        )
        for result in results:
            if result.error is not None:
                # the statement's own error, or the shard failing (then: what the user can do)
                hint = "" if isinstance(result.error, SQLFailed) else f" {SHELL_PARTIAL_HINT}"
                self.fail(
                    f"--sql failed on shard {result.shard.name!r} ({result.alias}): "
                    f"{error_reason(result.error)}.{hint}",
                    returncode=EXIT_UNHEALTHY,
                )
        columns = results[0].value[0] if results else []
        for result in results[1:]:
            if result.value[0] != columns:
                self.fail(
                    f"Shards {results[0].shard.name!r} and {result.shard.name!r} answered "
                    f"with different columns ({columns} and {result.value[0]}).",
                    returncode=EXIT_UNHEALTHY,
                )
        rows = [(r.shard.name, *row) for r in results for row in r.value[1]]
        self.write_rows(["shard", *columns], rows, fmt)


#: what a shell user can do when a shard fails (the library's message names a Python method)
SHELL_PARTIAL_HINT = (
    "Nothing was printed. To read the shards that answer, query them one at a time with "
    "--shard NAME; or run the command again once the shard is back."
)


def shell_fanout_message(exc: FanoutError) -> str:
    """A ``FanoutError``'s sentence for the shell: the failing shard and error, then what
    the command's user can do (``.allow_partial()`` is Python's way, not the shell's)."""
    text = redact(" ".join(str(exc).split()))
    text = text.split(" Use .allow_partial()", 1)[0].rstrip()
    return f"{text if text.endswith('.') else text + '.'} {SHELL_PARTIAL_HINT}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return " ".join(exc.messages)
    return str(exc)
