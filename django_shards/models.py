"""Catalog tables, kept on the catalog alias (``CATALOG``, default ``"default"``)."""

from __future__ import annotations

from django.db import models


class ShardMapVersion(models.Model):
    """One version of a group's shard map. Append-only.

    Version 1 is recorded from settings by the first ``migrate`` that creates these tables;
    every split writes the next version. Each version carries its own strategy and options,
    and is decoded with them: from then on settings never move a key.
    """

    group = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    strategy = models.CharField(max_length=255, help_text="dotted path of the strategy class")
    options = models.JSONField(default=dict, help_text="the strategy's OPTIONS")
    shards = models.JSONField(help_text="[{name, primary, replicas}] in layout order")
    layout = models.JSONField(help_text="the strategy's layout, as Layout.to_json() wrote it")
    note = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["group", "version"], name="shards_map_group_version")
        ]
        ordering = ["group", "version"]

    def __str__(self) -> str:
        return f"{self.group} v{self.version}"


class SplitJob(models.Model):
    """One shard split, from plan to clean-up. Every phase is recorded here so a split
    can resume after a crash (``shard_split --resume``) or be aborted before cutover.

    Online (MariaDB): ``planned, prepared, copying, catching_up, frozen, verified,
    cut_over, cleaned, done``. Frozen copy (SQLite, or no ``OPERATOR`` account):
    ``planned, prepared, frozen, copying, verified, cut_over, cleaned, done``.
    """

    class Phase(models.TextChoices):
        PLANNED = "planned"
        PREPARED = "prepared"  # target registered as pending, tables created
        COPYING = "copying"  # rows being copied (online: from a snapshot, writes go on)
        CATCHING_UP = "catching_up"  # online: the source's binlog applied to the target
        FROZEN = "frozen"  # moving keys frozen: writes to them raise ShardMoving
        VERIFIED = "verified"
        CUT_OVER = "cut_over"  # new map version written, freeze lifted
        CLEANED = "cleaned"  # moved rows deleted from the source
        DONE = "done"
        ABORTED = "aborted"

    #: the phases an abort may undo: nothing is cut over yet, the source never written
    BEFORE_CUTOVER = (
        Phase.PLANNED,
        Phase.PREPARED,
        Phase.COPYING,
        Phase.CATCHING_UP,
        Phase.FROZEN,
        Phase.VERIFIED,
    )
    ACTIVE_PHASES = (*BEFORE_CUTOVER, Phase.CUT_OVER, Phase.CLEANED)

    group = models.CharField(max_length=100)
    source = models.CharField(max_length=100)
    target = models.CharField(max_length=100)
    target_primary = models.CharField(max_length=100)
    target_replicas = models.JSONField(default=list)
    at = models.JSONField(null=True, blank=True, help_text="range split key, tagged")
    base_version = models.PositiveIntegerField(help_text="map version the plan starts from")
    new_shards = models.JSONField(help_text="[{name, primary, replicas}] after the split")
    new_layout = models.JSONField(help_text="the strategy's layout after the split")
    phase = models.CharField(max_length=20, choices=Phase.choices, default=Phase.PLANNED)
    frozen = models.BooleanField(default=False, help_text="writes to moving keys refused")
    progress = models.JSONField(default=dict, help_text="per model: copied rows, last pk, ...")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"split {self.group}/{self.source} -> {self.target} ({self.phase})"


class FailoverJob(models.Model):
    """One failover or switchover of a shard's primary (``shard_failover``). Every step is
    recorded (``steps``: what was done, when, with its evidence) and the phase after it,
    so a run killed half-way is finished by running the command again.

    Phases: ``planned`` (the candidate chosen), ``fenced`` (switchover: the old primary is
    read-only), ``caught_up`` (the candidate applied everything), ``promoted`` (its
    replication reset, writable), ``repointed`` (the other replicas, and in a switchover
    the old primary, replicate from it: its semi-synchronous writes have replicas to
    acknowledge them), ``mapped`` (the map version naming it written), ``done``;
    ``aborted`` when a switchover failed before the promotion and the old primary was made
    writable again.
    """

    class Kind(models.TextChoices):
        FAILOVER = "failover"
        SWITCHOVER = "switchover"

    class Phase(models.TextChoices):
        PLANNED = "planned"
        FENCED = "fenced"
        CAUGHT_UP = "caught_up"
        PROMOTED = "promoted"
        REPOINTED = "repointed"
        MAPPED = "mapped"
        DONE = "done"
        ABORTED = "aborted"

    #: phases of a job still to be finished: writes to its group poll the map quickly
    ACTIVE_PHASES = (
        Phase.PLANNED,
        Phase.FENCED,
        Phase.CAUGHT_UP,
        Phase.PROMOTED,
        Phase.REPOINTED,
        Phase.MAPPED,
    )

    group = models.CharField(max_length=100)
    shard = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    old_primary = models.CharField(max_length=100)
    new_primary = models.CharField(max_length=100)
    replicas = models.JSONField(default=list, help_text="the shard's replicas afterwards")
    position = models.CharField(
        max_length=1000, blank=True, help_text="the GTID position the new primary applied"
    )
    phase = models.CharField(max_length=20, choices=Phase.choices, default=Phase.PLANNED)
    steps = models.JSONField(default=list, help_text="[{step, at, detail}] in order")
    error = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created"]

    def __str__(self) -> str:
        return f"{self.kind} {self.group}/{self.shard}: {self.old_primary} -> {self.new_primary}"


class LoadReport(models.Model):
    """What one process routed to one shard between two flushes (``django_shards.load``):
    reads, writes, rows and time, and a sample of the points (shard keys) it routed there.
    Written every ``LOAD_FLUSH_SECONDS``; ``shard_status`` sums the reports of the last
    ``LOAD_WINDOW_SECONDS``. Old reports are deleted by the flushes."""

    group = models.CharField(max_length=100)
    shard = models.CharField(max_length=100)
    process = models.CharField(max_length=255, help_text="host:pid of the process")
    started = models.DateTimeField(help_text="the counts are from this moment ...")
    ended = models.DateTimeField(db_index=True, help_text="... to this one")
    reads = models.PositiveBigIntegerField(default=0)
    writes = models.PositiveBigIntegerField(default=0)
    rows = models.PositiveBigIntegerField(default=0)
    seconds = models.FloatField(default=0.0, help_text="time spent in the shard's queries")
    sample = models.JSONField(
        default=list, help_text="routed points (encoded keys), a uniform sample of them"
    )
    #: how many points the sample stands for (reads + writes that named a key)
    sampled_from = models.PositiveBigIntegerField(default=0)

    class Meta:
        indexes = [models.Index(fields=["group", "ended"], name="shards_load_group_ended")]

    def __str__(self) -> str:
        return f"load {self.group}/{self.shard} {self.process} until {self.ended}"


class LookupEntry(models.Model):
    """One entry of a lookup index: a value of a looked-up field and the shard key of the
    rows that have it (``ShardedManager(lookups=[...])``, :mod:`django_shards.lookups`).

    Kept on ``LOOKUP_ALIAS`` (the catalog by default). Keys, not shards, are stored, so a
    split or a failover never touches these rows. ``dedupe`` is ``""`` for a field declared
    ``unique=True`` (one entry per value: the unique index makes the value cluster-unique)
    and the key otherwise (one entry per value and key).
    """

    model = models.CharField(max_length=100, help_text="app_label.modelname")
    field = models.CharField(max_length=64)
    value = models.CharField(max_length=255, help_text="the value's canonical text")
    key = models.CharField(max_length=255, help_text="the rows' shard key, as text")
    dedupe = models.CharField(max_length=255, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["model", "field", "value", "dedupe"], name="shards_lookup_value"
            )
        ]
        indexes = [models.Index(fields=["model", "field", "key"], name="shards_lookup_key")]

    def __str__(self) -> str:
        return f"{self.model}.{self.field}={self.value!r} -> {self.key}"
