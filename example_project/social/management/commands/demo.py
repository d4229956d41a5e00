"""``manage.py demo``: a walk through django_shards on the example project.

1. migrate the catalog and every shard primary, 2. seed, 3. where the rows landed,
4. which database served each read (and a find by e-mail: the lookup index, then one
shard), 5. the library's management commands, 6. skewed
traffic: one shard hot by load, and ``shard_rebalance`` splitting it onto a spare.
Re-runnable: migrate is idempotent and the seed skips when the shards hold data.
"""

import contextlib
import contextvars

from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand
from django.db import connections, router
from django.test.utils import CaptureQueriesContext

from django_shards import Shard, load, lookup_index, shard_for
from social.models import Author, Follow, Post
from social.shards import shard_names, user_shards

CATALOG = "default"
SPLIT_SOURCE, SPLIT_TARGET = "u0", "u4"  # u4 is the spare primary of the settings
HOT_READS = 900  # reads of a few popular authors: 3/s over LOAD_WINDOW_SECONDS (300 s)


class Command(BaseCommand):
    help = "Walk through sharding on the example project (migrate, seed, placement, routing)."

    def add_arguments(self, parser):
        parser.add_argument("--reset", action="store_true", help="re-seed from scratch")

    def handle(self, *args, **options):
        self.migrate()
        self.section(2, "Seed authors, posts and follows (bulk_create, one batch per shard)")
        call_command("seed", reset=options["reset"], stdout=self.stdout)
        samples = self.placement()
        # a fresh context, as a new request has: no read-your-writes pins from the seed
        contextvars.Context().run(self.routing, samples[0])
        contextvars.Context().run(self.find_by_email, samples[-1])
        self.commands()
        contextvars.Context().run(self.hot_shard, samples[-1])
        self.stdout.write("")
        self.stdout.write(
            "Browse it: manage.py runserver, then open "
            f"http://127.0.0.1:8000/@{samples[0].pk}/ (and /admin/ after createsuperuser)."
        )

    def section(self, number, title):
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(f"{number}. {title}"))

    # -- 1 ---------------------------------------------------------------------------------

    def migrate(self):
        self.section(1, "Migrate the catalog and every shard primary")
        primaries = [shard.primary for shard in user_shards()]
        for alias in [CATALOG, *primaries]:
            call_command("migrate", database=alias, interactive=False, verbosity=0)
        self.stdout.write(
            f"  migrated {CATALOG} (catalog: auth, sessions, admin, shard map, lookup index)"
        )
        self.stdout.write(f"  migrated {', '.join(primaries)} (shard primaries: social)")
        replica = user_shards()[0].replicas[0]
        allowed = router.allow_migrate(replica, "social", model_name="post")
        self.stdout.write(
            f"  replicas are never migrated: allow_migrate({replica!r}, 'social') -> {allowed}"
        )

    # -- 3 ---------------------------------------------------------------------------------

    def placement(self):
        self.section(3, "Where the rows landed")
        self.rows_per_shard()
        samples = []
        for name in shard_names()[:3]:
            sample = Author.objects.on_shard(name).strong().order_by("handle").first()
            if sample is not None:
                samples.append(sample)
        self.stdout.write("")
        for author in samples:
            shard = shard_for(Author, author.pk)
            self.stdout.write(
                f"  shard_for(Author, {author.pk}) -> {shard.name} "
                f"(primary {shard.primary}, replicas {', '.join(shard.replicas)})  {author}"
            )
        ids = [a.pk for a in samples[:2]]
        self.stdout.write(
            f"  Post.objects.filter(author_id__in={ids}).target_shards() -> "
            f"{Post.objects.filter(author_id__in=ids).target_shards()}"
        )
        return samples

    def rows_per_shard(self):
        models = [("authors", Author), ("posts", Post), ("follows", Follow)]
        self.stdout.write("  " + f"{'shard':<8}" + "".join(f"{label:>9}" for label, _ in models))
        totals = [0] * len(models)
        for name in shard_names():
            counts = [m.objects.on_shard(name).strong().count() for _, m in models]
            totals = [t + c for t, c in zip(totals, counts, strict=True)]
            self.stdout.write("  " + f"{name:<8}" + "".join(f"{c:>9}" for c in counts))
        self.stdout.write("  " + f"{'total':<8}" + "".join(f"{t:>9}" for t in totals))

    # -- 4 ---------------------------------------------------------------------------------

    def routing(self, author):
        self.section(4, f"Which database serves a read of {author} ({author.pk})")
        shard = shard_for(Author, author.pk)
        pk = author.pk
        steps = [
            ("Author.objects.strong().get(pk=...)", lambda: Author.objects.strong().get(pk=pk)),
            ("Author.objects.eventual().get(pk=...)", lambda: Author.objects.eventual().get(pk=pk)),
            ("Author.objects.get(pk=...)  (default)", lambda: Author.objects.get(pk=pk)),
            ("author.save()", lambda: author.save(update_fields=["bio"])),
            ("Author.objects.get(pk=...)  right after", lambda: Author.objects.get(pk=pk)),
        ]
        for label, run in steps:
            self.stdout.write(f"  {label:<42} -> {', '.join(self.served_by(shard, run))}")
        self.stdout.write(
            "  strong reads and writes use the primary, eventual reads a replica; after a\n"
            "  write, default reads of that shard stay on the primary for "
            "PIN_AFTER_WRITE_SECONDS\n"
            "  (read-your-writes; PinningMiddleware carries it to the next request in a cookie)."
        )
        for alias in (shard.primary, *shard.replicas):
            connections[alias].close()  # this context's connections end with it

    def served_by(self, shard: Shard, run) -> list[str]:
        """The aliases of ``shard`` that ran SQL while ``run()`` ran."""
        with contextlib.ExitStack() as stack:
            captured = {
                alias: stack.enter_context(CaptureQueriesContext(connections[alias]))
                for alias in (shard.primary, *shard.replicas)
            }
            run()
        return [alias for alias, queries in captured.items() if queries.captured_queries]

    def find_by_email(self, author):
        """``get(email=...)``: ``email`` is a lookup, so one index read, then one shard."""
        index = lookup_index.alias()
        aliases = [index, *(a for s in user_shards() for a in s.aliases)]
        with contextlib.ExitStack() as stack:
            captured = {
                alias: stack.enter_context(CaptureQueriesContext(connections[alias]))
                for alias in dict.fromkeys(aliases)
            }
            try:
                found = Author.objects.get(email=author.email)
            except Author.DoesNotExist:
                found = None
        if found is None:  # var/ was seeded before Author.email became a lookup
            self.stdout.write(
                "  find by e-mail: the lookup index misses this author; run "
                "manage.py shard_lookup_rebuild, or delete var/"
            )
            return
        reads = {alias: len(q.captured_queries) for alias, q in captured.items()}
        shard = shard_for(Author, found.pk)
        served = [a for a in (shard.primary, *shard.replicas) if reads.get(a)]
        queried = [s.name for s in user_shards() if any(reads.get(a) for a in s.aliases)]
        self.stdout.write(
            f"  find by e-mail: Author.objects.get(email={author.email!r})\n"
            f"    -> {reads[index]} index read on {index}, then {', '.join(served)} "
            f"(shard {shard.name}); shards queried: {len(queried)} of {len(user_shards())}"
        )

    # -- 5 ---------------------------------------------------------------------------------

    def commands(self):
        self.section(5, "The library's management commands")
        available = get_commands()
        if "shard_status" in available:
            self.stdout.write("  $ manage.py shard_status users --counts")
            call_command("shard_status", "users", "--counts", stdout=self.stdout)
        else:
            self.stdout.write("  (status: skipped, there is no shard_status command yet)")

        if "shard_split" not in available:
            self.stdout.write("  (split: coming with shard_split)")
        elif SPLIT_TARGET in shard_names():
            self.stdout.write(
                f"  (split: {SPLIT_SOURCE} was split into {SPLIT_TARGET} by an earlier run; "
                "delete var/ to see it again)"
            )
        else:
            argv = [
                "users", SPLIT_SOURCE, "--to", SPLIT_TARGET, "--primary", SPLIT_TARGET,
                "--replica", f"{SPLIT_TARGET}_r1", "--no-input",
            ]  # fmt: skip
            self.stdout.write(f"  $ manage.py shard_split {' '.join(argv)}")
            call_command("shard_split", *argv, stdout=self.stdout)
            self.rows_per_shard()

        if "shard_query" in available:
            argv = ["social.Post", "--order-by=-created", "--limit=5"]
            self.stdout.write(f"  $ manage.py shard_query {' '.join(argv)}")
            call_command("shard_query", *argv, stdout=self.stdout)
        else:
            self.stdout.write("  (fan-out query: skipped, there is no shard_query command yet)")

    # -- 6 ---------------------------------------------------------------------------------

    def hot_shard(self, popular):
        self.section(6, "Skewed traffic: a shard hot by load, then shard_rebalance")
        shard = shard_for(Author, popular.pk)
        if any(name.startswith(f"{shard.name}_") for name in shard_names()):
            self.stdout.write(
                f"  (rebalance: {shard.name} was split by an earlier run; delete var/ to see "
                "it again)"
            )
            return
        fans = list(Author.objects.on_shard(shard.name).strong().order_by("handle")[:5])
        self.stdout.write(
            f"  {HOT_READS} reads of the posts of {len(fans)} popular authors, all on "
            f"{shard.name} (the others get none), then load.flush()"
        )
        for i in range(HOT_READS):
            list(Post.objects.filter(author_id=fans[i % len(fans)].pk)[:10])
        load.flush()  # the background flush runs every LOAD_FLUSH_SECONDS; the demo can't wait
        self.stdout.write("  $ manage.py shard_status users")
        call_command("shard_status", "users", stdout=self.stdout)
        self.stdout.write("  $ manage.py shard_rebalance users --no-input")
        call_command("shard_rebalance", "users", "--no-input", stdout=self.stdout)
        self.rows_per_shard()
