"""Models of the test project: a small social network sharded by author, plus one model
per strategy, one on the HA trio, and unsharded twins for differential tests."""

from django.db import models
from django.utils import timezone

from django_shards import ShardedManager, SnowflakeField


class Author(models.Model):
    id = SnowflakeField(primary_key=True)
    email = models.EmailField()
    name = models.CharField(max_length=100, blank=True)
    score = models.IntegerField(default=0)
    joined = models.DateTimeField(default=timezone.now)

    objects = ShardedManager(group="users", key="id")

    def __str__(self):
        return self.email


class Post(models.Model):
    id = SnowflakeField(primary_key=True)
    author = models.ForeignKey(Author, on_delete=models.CASCADE)
    title = models.CharField(max_length=200)
    likes = models.IntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)

    objects = ShardedManager(group="users", key="author")

    def __str__(self):
        return self.title


class Follow(models.Model):
    """``follower`` follows ``followee``; stored with the follower."""

    id = SnowflakeField(primary_key=True)
    follower = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="following")
    followee = models.ForeignKey(
        Author, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )

    objects = ShardedManager(group="users", key="follower")


class Event(models.Model):
    """Range-sharded by account number."""

    id = SnowflakeField(primary_key=True)
    account = models.IntegerField()
    kind = models.CharField(max_length=20)
    amount = models.IntegerField(default=0)

    objects = ShardedManager(group="events", key="account")


class Reading(models.Model):
    """Hash-sharded by sensor."""

    id = SnowflakeField(primary_key=True)
    sensor_id = models.IntegerField()
    value = models.FloatField()

    objects = ShardedManager(group="metrics", key="sensor_id")


class LegacyCode(models.Model):
    """Modulo-sharded by a string code."""

    code = models.CharField(max_length=40, primary_key=True)
    label = models.CharField(max_length=100, blank=True)

    objects = ShardedManager(group="legacy", key="code")


class Deposit(models.Model):
    """On the HA trio's one shard (group ``ha``): what the failover tests write and count."""

    id = SnowflakeField(primary_key=True)
    account = models.IntegerField()
    amount = models.IntegerField(default=0)

    objects = ShardedManager(group="ha", key="account")


class Tag(models.Model):
    """Unsharded: lives on the catalog/default alias like any plain model."""

    name = models.CharField(max_length=50, unique=True)


class AuthorTwin(models.Model):
    """Unsharded twin of Author for differential tests."""

    id = models.BigIntegerField(primary_key=True)
    email = models.EmailField()
    name = models.CharField(max_length=100, blank=True)
    score = models.IntegerField(default=0)
    joined = models.DateTimeField(default=timezone.now)


class PostTwin(models.Model):
    id = models.BigIntegerField(primary_key=True)
    author = models.ForeignKey(AuthorTwin, on_delete=models.CASCADE)
    title = models.CharField(max_length=200)
    likes = models.IntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)


class Member(models.Model):
    """A user found by e-mail (cluster-unique) or handle (not unique): lookup indexes."""

    id = SnowflakeField(primary_key=True)
    email = models.EmailField(unique=True)
    handle = models.CharField(max_length=40)
    city = models.CharField(max_length=40, blank=True)

    objects = ShardedManager(group="members", key="id", lookups=["email", "handle"])


class Note(models.Model):
    """Co-located with its member; looked up by title (not unique, shared by a key's rows)."""

    id = SnowflakeField(primary_key=True)
    member = models.ForeignKey(Member, on_delete=models.CASCADE)
    title = models.CharField(max_length=100)

    objects = ShardedManager(group="members", key="member", lookups=["title"])


class MemberTwin(models.Model):
    """Unsharded twin of Member for differential tests."""

    id = models.BigIntegerField(primary_key=True)
    email = models.EmailField(unique=True)
    handle = models.CharField(max_length=40)
    city = models.CharField(max_length=40, blank=True)


class NoteTwin(models.Model):
    id = models.BigIntegerField(primary_key=True)
    member = models.ForeignKey(MemberTwin, on_delete=models.CASCADE)
    title = models.CharField(max_length=100)
