"""``manage.py shard_lookup_rebuild [MODEL [FIELD]] [--check] [--batch-size N] [--json]``:
compare the lookup indexes with the rows, and repair them.

Without MODEL: every model with lookups; MODEL (``app_label.ModelName``, any case): its
lookups; MODEL FIELD: that one. The work is :mod:`django_shards.lookup_rebuild`'s: orphan
entries (no row of their key has their value) are removed, missing ones (a row's value
without its entry: a backfill, rows written behind the ORM) are written.

Exit codes: 0 when the index is (now) clean; 1 with ``--check`` when orphans or missing
entries were found (nothing is written), or, repairing, when a cluster-unique value is
held by rows of two keys (a conflict that needs a human; the rest is repaired), or when a
database failed; 2 for bad input (an unknown model, a model without lookups, a field that
is not a lookup), nothing changed.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from django_shards.lookup_index import IN_FLIGHT_SECONDS, Lookup, lookups_of
from django_shards.lookup_rebuild import (
    DEFAULT_BATCH_SIZE,
    LookupReport,
    models_with_lookups,
    rebuild,
)
from django_shards.management.commands._base import (
    ShardsCommand,
    Unhealthy,
    format_columns,
    model_from_label,
)


class Command(ShardsCommand):
    help = (
        "Compare the lookup indexes (every model with lookups, MODEL's, or MODEL FIELD's) "
        "with the rows on the shards' primaries: remove orphan entries and write missing "
        "ones (a backfill of a new lookup). --check reports them, writes nothing and exits "
        "1 when any are found."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "model",
            nargs="?",
            metavar="MODEL",
            help="app_label.ModelName: only this model's lookups (default: every model's).",
        )
        parser.add_argument(
            "field", nargs="?", metavar="FIELD", help="Only this looked-up field of MODEL."
        )
        parser.add_argument(
            "--check",
            action="store_true",
            help="Report orphan and missing entries, write nothing; exit 1 when any are found.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"Rows or entries read per query (default {DEFAULT_BATCH_SIZE}).",
        )
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        chosen = self.lookups(options["model"], options["field"])
        if options["batch_size"] < 1:
            self.fail(f"--batch-size must be 1 or more, not {options['batch_size']}.")
        check = options["check"]
        self.show_progress = options["verbosity"] >= 2 or _isatty(self.stderr)
        reports = [
            rebuild(
                lookup,
                repair=not check,
                batch_size=options["batch_size"],
                step=self.step,
                progress=self.progress,
            )
            for lookup in chosen
        ]
        self.end_progress()
        if options["json"]:
            self.write_json(
                {
                    "check": check,
                    "clean": all(r.clean for r in reports),
                    "lookups": [r.as_dict() for r in reports],
                }
            )
        else:
            self.write_report(reports, check)
        self.finish(reports, check, quiet=options["json"])

    def lookups(self, label: str | None, name: str | None) -> list[Lookup]:
        """The lookups the arguments name; ``CommandError`` (exit 2) for a wrong one."""
        if label is None:
            return [lk for model in models_with_lookups() for lk in lookups_of(model)]
        model = model_from_label(label)
        found = lookups_of(model)
        if not found:
            known = ", ".join(m._meta.label for m in models_with_lookups()) or "none"
            self.fail(f"{model._meta.label} has no lookups (models with lookups: {known}).")
        if name is None:
            return list(found)
        for lookup in found:
            if name in (lookup.name, lookup.attname):
                return [lookup]
        known = ", ".join(lk.name for lk in found)
        self.fail(f"{model._meta.label} has no lookup {name!r} (its lookups: {known}).")

    # -- progress, on stderr ----------------------------------------------------------

    def progress(self, line: str) -> None:
        if not self.show_progress:
            return
        if _isatty(self.stderr):
            self.stderr.write(f"\r{line[:100]:<100}", ending="")
            self.stderr.flush()
            self.progress_open = True
        else:
            self.stderr.write(line)

    def end_progress(self) -> None:
        if getattr(self, "progress_open", False):
            self.stderr.write("")
            self.progress_open = False

    # -- the report -------------------------------------------------------------------

    def write_report(self, reports: list[LookupReport], check: bool) -> None:
        columns = ["lookup", "rows", "entries", "orphans", "missing"]
        if not check:
            columns += ["added", "removed", "conflicts"]
        rows = []
        for r in reports:
            row = [r.name, r.rows, r.entries, r.orphans, r.missing]
            if not check:
                row += [r.added, r.removed, len(r.conflicts)]
            rows.append([str(cell) for cell in row])
        self.stdout.write(format_columns(columns, rows, right=range(1, len(columns))))
        for r in reports:
            for kind, examples, count in (
                ("orphan", r.orphan_examples, r.orphans),
                ("missing", r.missing_examples, r.missing),
            ):
                if not examples:
                    continue
                more = f" (first {len(examples)} of {count})" if count > len(examples) else ""
                self.stdout.write(f"{r.name}: {kind} entries (value -> key){more}:")
                for value, key in examples:
                    self.stdout.write(f"  {value!r} -> {key}")
            if r.recent:
                self.stdout.write(
                    f"{r.name}: {r.recent} entries without their row were younger than "
                    f"{IN_FLIGHT_SECONDS:g}s (writes maybe in flight): looked at again "
                    "once that old."
                )
            for conflict in r.conflicts:
                self.stdout.write(
                    self.style.ERROR(
                        f"{r.name}: CONFLICT {conflict.value!r} of key {conflict.key} was "
                        f"not indexed: {conflict.reason} Two rows hold a value unique across "
                        "the cluster: a human must change one of them."
                    )
                )
        if check:
            return
        added = sum(r.added for r in reports)
        removed = sum(r.removed for r in reports)
        conflicts = sum(len(r.conflicts) for r in reports)
        self.stdout.write(
            f"{_count(added, 'entry', 'entries')} added, {removed} removed, "
            f"{_count(conflicts, 'conflict', 'conflicts')}."
        )

    def finish(self, reports: list[LookupReport], check: bool, quiet: bool) -> None:
        """Exit 1 (after the report) when the index is not clean."""
        if check:
            orphans = sum(r.orphans for r in reports)
            missing = sum(r.missing for r in reports)
            if orphans or missing:
                found = (
                    f"{_count(orphans, 'orphan entry', 'orphan entries')}, "
                    f"{_count(missing, 'missing entry', 'missing entries')}"
                )
                raise Unhealthy(
                    f"The lookup index is not clean: {found}; run shard_lookup_rebuild "
                    "(without --check) to repair it."
                )
            if not quiet:
                self.stdout.write(self.style.SUCCESS("The lookup index is clean."))
            return
        conflicts = sum(len(r.conflicts) for r in reports)
        if conflicts:
            raise Unhealthy(
                f"{_count(conflicts, 'row', 'rows')} could not be indexed: a value unique "
                "across the cluster is held by rows of two keys (see CONFLICT above); the "
                "rest was repaired."
            )


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:  # a closed stream
        return False
