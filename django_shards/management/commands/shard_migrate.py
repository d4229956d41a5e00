"""``manage.py shard_migrate [GROUP]``: Django's ``migrate`` on every shard primary, in parallel.

The primaries are those of each group's current shard map (split targets included), each
alias once. Replicas are left to replication, and the catalog is left to a plain
``manage.py migrate`` (unless it is also a shard primary). What each alias gets is the
router's decision (:meth:`~django_shards.router.ShardRouter.allow_migrate`): the tables
of the sharded models of its groups, and Django's ``django_migrations`` record.

Each primary is migrated by ``call_command("migrate", database=alias)`` on a worker thread
of its own, which closes its connections when done. A line is printed as each finishes;
a failing primary does not stop the others, and makes the command exit 1 at the end.
Running it again is harmless: an up-to-date primary applies nothing.
"""

from __future__ import annotations

import io
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from django.core.management import call_command
from django.core.management.base import CommandParser
from django.db import connections
from django.db.migrations.recorder import MigrationRecorder

from django_shards.conf import get_config
from django_shards.management.commands._base import (
    EXIT_UNHEALTHY,
    ShardsCommand,
    error_reason,
    group_names,
    missing_alias,
    redact,
)
from django_shards.shardmap import get_map


@dataclass(frozen=True)
class MigrateResult:
    """What ``migrate`` did on one alias: how many migrations it applied, or its error."""

    alias: str
    applied: int = 0
    error: BaseException | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def shard_primaries(groups: list[str]) -> list[str]:
    """The primary aliases of the groups' current maps, each once, in map order."""
    out: list[str] = []
    for name in groups:
        for shard in get_map(name).shards.values():
            if shard.primary not in out:
                out.append(shard.primary)
    return out


def _recorded(alias: str) -> int:
    return len(MigrationRecorder(connections[alias]).applied_migrations())


def migrate_alias(alias: str) -> MigrateResult:
    """Run ``migrate`` on ``alias`` on this thread; never raises.

    Closes this thread's connections afterwards, as nobody else will.
    """
    started = time.perf_counter()
    output = io.StringIO()
    try:
        before = _recorded(alias)
        call_command(
            "migrate",
            database=alias,
            interactive=False,
            verbosity=0,
            stdout=output,
            stderr=output,
        )
        applied = _recorded(alias) - before
    except Exception as exc:  # noqa: BLE001 - reported with the alias, the others go on
        return MigrateResult(alias, error=exc, elapsed=time.perf_counter() - started)
    finally:
        connections.close_all()  # this thread's connections only
    return MigrateResult(alias, applied=applied, elapsed=time.perf_counter() - started)


def error_text(exc: BaseException) -> str:
    """The error on one line, without a password: ``OperationalError: unable to open
    database file``, or ``alias 'u4' is not in DATABASES``."""
    if missing_alias(exc) is not None:
        return error_reason(exc)
    message = redact(" ".join(str(exc).split()))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class Command(ShardsCommand):
    help = (
        "Run Django's migrate on every shard primary of GROUP (default: of every group), "
        "in parallel. Replicas follow by replication. The catalog database is not "
        "migrated by this command (unless it is also a shard primary): run "
        "`manage.py migrate` for it. Exits 1 if any primary failed."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "group",
            nargs="?",
            metavar="GROUP",
            help="Migrate only the primaries of this shard group (default: all groups).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = shard_primaries(group_names(options["group"]))
        total = len(aliases)
        if not total:
            self.stdout.write("No shard primaries to migrate.")
            return
        catalog = get_config().catalog
        self.stdout.write(
            f"Migrating {total} shard primar{'y' if total == 1 else 'ies'} "
            f"({', '.join(aliases)}); "
            + (
                f"the catalog ({catalog}) is one of them."
                if catalog in aliases
                else f"not the catalog ({catalog})."
            )
        )
        # Django builds this model class lazily on first use; build it once here rather
        # than racing to build it in every worker.
        MigrationRecorder.Migration  # noqa: B018
        # Each worker runs the whole migrate command on its own connection. What workers
        # share they only read (the apps registry, the migration modules), except that each
        # MigrationLoader re-runs every migrations package with importlib.reload(), which
        # Python runs under that module's import lock. Stress-tested: six fresh primaries
        # at once, 40 rounds on SQLite and 10 on MariaDB, with a 1 us thread switch interval.
        workers = max(1, min(total, get_config().fanout_workers))
        results: list[MigrateResult] = []
        with ThreadPoolExecutor(workers, thread_name_prefix="shard_migrate") as pool:
            futures = [pool.submit(migrate_alias, alias) for alias in aliases]
            for done, future in enumerate(as_completed(futures), start=1):
                result = future.result()
                results.append(result)
                self.write_result(done, total, result, options["traceback"])
        failed = [r.alias for r in results if not r.ok]
        if failed:
            self.fail(
                f"migrate failed on {len(failed)} of {total} shard primaries: "
                f"{', '.join(sorted(failed))}; the others are migrated.",
                returncode=EXIT_UNHEALTHY,
            )
        applied = sum(r.applied for r in results)
        self.stdout.write(
            self.style.SUCCESS(
                f"All {total} shard primar{'y' if total == 1 else 'ies'} migrated "
                f"({applied} migration{'' if applied == 1 else 's'} applied in all)."
            )
        )

    def write_result(self, done: int, total: int, result: MigrateResult, tb: bool) -> None:
        prefix = f"[{done}/{total}] {result.alias}: "
        if result.error is None:
            n = result.applied
            self.stdout.write(
                prefix + self.style.SUCCESS(f"ok ({n} migration{'' if n == 1 else 's'} applied)")
            )
            return
        self.stdout.write(prefix + self.style.ERROR(f"FAILED: {error_text(result.error)}"))
        if tb:
            self.stderr.write("".join(traceback.format_exception(result.error)))
