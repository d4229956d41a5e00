"""Tests of the example project: ``manage.py test social`` (from ``example_project/``; the
suite runs them through ``tests/test_example_lookup.py``). Django's test databases are in
memory, so ``var/`` is left alone."""

import contextlib
import io
import threading

from django.core.management import call_command
from django.db import IntegrityError
from django.db.backends.utils import CursorWrapper
from django.test import TransactionTestCase
from django.urls import reverse

from django_shards import lookup_index, shard_for
from social.models import Author


@contextlib.contextmanager
def queries_per_alias():
    """{alias: queries of the app's tables and the lookup index} on every connection of
    every thread (fan-outs use workers). The catalog's own reads (a map renewed once its
    lease runs out, replica health) come and go with the clock, so they are left out."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    original = CursorWrapper._execute_with_wrappers

    def counted(self, sql, *args, **kwargs):
        if "social_" in str(sql) or "lookupentry" in str(sql):
            with lock:
                counts[self.db.alias] = counts.get(self.db.alias, 0) + 1
        return original(self, sql, *args, **kwargs)

    CursorWrapper._execute_with_wrappers = counted
    try:
        yield counts
    finally:
        CursorWrapper._execute_with_wrappers = original


class FindAuthorTests(TransactionTestCase):
    """``/find/?email=...``: the lookup index, then exactly one shard."""

    databases = "__all__"

    def setUp(self):
        # transactional: the index's entries commit with the rows, as in production
        call_command("seed", authors=24, posts_per_author=1, follows=1, stdout=io.StringIO())
        self.authors = list(Author.objects.order_by("handle"))

    def find(self, email):
        with queries_per_alias() as counts:
            response = self.client.get(reverse("social:find_author"), {"email": email})
        return response, counts

    def test_the_seed_indexes_every_email(self):
        self.assertEqual(len(self.authors), 24)
        self.assertEqual(len({a.email for a in self.authors}), 24)
        for author in self.authors:
            self.assertEqual(Author.objects.get(email=author.email), author)

    def test_find_reads_the_index_then_one_shard(self):
        index = lookup_index.alias()
        shards = {shard_for(Author, a.pk).name for a in self.authors}
        self.assertGreater(len(shards), 1)  # the others could have answered, and did not
        for author in self.authors[:6]:
            response, counts = self.find(author.email)
            self.assertContains(response, author.name)
            shard = shard_for(Author, author.pk)
            self.assertContains(response, f"then one shard: <code>{shard.name}</code>")
            self.assertEqual(counts.pop(index), 1, counts)
            self.assertEqual(sum(counts.values()), 1, counts)
            self.assertLessEqual(set(counts), set(shard.aliases), counts)

    def test_an_unknown_email_is_a_404_from_the_index_alone(self):
        response, counts = self.find("nobody@example.com")
        self.assertContains(response, "No author has the e-mail", status_code=404)
        self.assertEqual(counts, {lookup_index.alias(): 1})

    def test_the_form_without_an_email(self):
        response = self.client.get(reverse("social:find_author"))
        self.assertContains(response, "Find an author by e-mail")

    def test_emails_are_unique_across_the_cluster(self):
        taken = self.authors[0]
        # a new author's id lands on any shard: the index refuses the address on all
        newcomers = [Author(handle=f"new{i}", email=taken.email, name="New") for i in range(8)]
        self.assertGreater(len({shard_for(Author, a.pk).name for a in newcomers}), 1)
        for newcomer in newcomers:
            with self.assertRaises(IntegrityError):
                newcomer.save()
        self.assertEqual(Author.objects.filter(email=taken.email).count(), 1)
