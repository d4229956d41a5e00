"""A small social network, sharded by author.

All three models belong to the shard group ``users``: an author, her posts and the follows
she made share her shard, so her pages are answered by one shard, joins between them stay
local and one transaction covers them.
"""

from django.db import models
from django.urls import reverse
from django.utils import timezone

from django_shards import ShardedManager, SnowflakeField


class Author(models.Model):
    id = SnowflakeField(primary_key=True)
    # Unique-ish: the seed makes handles unique, but a UNIQUE index here would hold per
    # shard only. The e-mail below is unique across the cluster, through its lookup index.
    handle = models.SlugField(max_length=40, db_index=True)
    # A lookup: get(email=...) reads the index on the catalog, then the one shard holding
    # the author; unique=True is enforced across the cluster by that index.
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100)
    bio = models.TextField(blank=True)
    joined = models.DateTimeField(default=timezone.now)

    objects = ShardedManager(group="users", key="id", lookups=["email"])

    def __str__(self) -> str:
        return f"@{self.handle}"

    def get_absolute_url(self) -> str:
        return reverse("social:profile", args=[self.pk])


class Post(models.Model):
    id = SnowflakeField(primary_key=True)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    body = models.TextField(max_length=500)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    likes = models.PositiveIntegerField(default=0)

    objects = ShardedManager(group="users", key="author")  # co-located with its author

    def __str__(self) -> str:
        return self.body[:50]

    def get_absolute_url(self) -> str:
        return reverse("social:posts", args=[self.author_id])


class Follow(models.Model):
    """``follower`` follows ``followee``. Stored with the follower, so the followee (who may
    live on another shard) is a reference without a database constraint."""

    id = SnowflakeField(primary_key=True)
    follower = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="following")
    followee = models.ForeignKey(
        Author, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    created = models.DateTimeField(default=timezone.now)

    objects = ShardedManager(group="users", key="follower")

    class Meta:
        constraints = [
            # holds globally: every follow of one follower is on the follower's shard
            models.UniqueConstraint(fields=["follower", "followee"], name="follow_once"),
        ]

    def __str__(self) -> str:
        return f"{self.follower_id} follows {self.followee_id}"
