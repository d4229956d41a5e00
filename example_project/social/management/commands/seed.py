"""``manage.py seed``: fill the shards with authors, posts and follows.

Idempotent-ish: when any shard already holds authors it does nothing, unless ``--reset``
deletes everything first. Rows are written with ``bulk_create``, which the library groups
by shard (one batch per shard).
"""

import random
from collections import Counter

from django.core.management.base import BaseCommand, CommandError

from django_shards import shard_for
from social.factories import AuthorFactory, FollowFactory, PostFactory, reseed
from social.models import Author, Follow, Post
from social.shards import shard_names


class Command(BaseCommand):
    help = "Create authors, their posts and follows on the shards (skipped if already seeded)."

    def add_arguments(self, parser):
        parser.add_argument("--authors", type=int, default=200, help="authors (default 200)")
        parser.add_argument(
            "--posts-per-author", type=int, default=5, help="posts per author (default 5)"
        )
        parser.add_argument(
            "--follows", type=int, default=3, help="authors each author follows (default 3)"
        )
        parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
        parser.add_argument(
            "--reset", action="store_true", help="delete every author, post and follow first"
        )

    def handle(self, *args, **options):
        authors_wanted = options["authors"]
        posts_per_author = options["posts_per_author"]
        follows_per_author = options["follows"]
        if min(authors_wanted, posts_per_author, follows_per_author) < 0:
            raise CommandError("--authors, --posts-per-author and --follows cannot be negative.")

        if options["reset"]:
            self.delete_everything()
        else:
            existing = sum(Author.objects.on_shard(name).strong().count() for name in shard_names())
            if existing:
                self.stdout.write(
                    f"Already seeded ({existing} authors); nothing to do. "
                    "Use --reset to start over."
                )
                return

        reseed(options["seed"])
        rng = random.Random(options["seed"])

        authors = AuthorFactory.build_batch(authors_wanted)
        Author.objects.bulk_create(authors)

        posts = [PostFactory.build(author=a) for a in authors for _ in range(posts_per_author)]
        Post.objects.bulk_create(posts)

        follows = []
        for follower in authors:
            others = [a for a in authors if a is not follower]
            for followee in rng.sample(others, min(follows_per_author, len(others))):
                follows.append(FollowFactory.build(follower=follower, followee=followee))
        Follow.objects.bulk_create(follows)

        per_shard = Counter(shard_for(Author, a.pk).name for a in authors)
        spread = ", ".join(f"{name} {per_shard[name]}" for name in shard_names())
        self.stdout.write(
            self.style.SUCCESS(
                f"Seeded {len(authors)} authors, {len(posts)} posts and {len(follows)} follows."
            )
        )
        self.stdout.write(f"Authors per shard: {spread}.")

    def delete_everything(self):
        deleted = 0
        for name in shard_names():
            # children first, so that each is one plain DELETE on the shard's primary
            for model in (Follow, Post, Author):
                count, _ = model.objects.on_shard(name).delete()
                deleted += count
        self.stdout.write(f"Reset: deleted {deleted} rows.")
