"""Catalog tables, kept on the catalog alias (``CATALOG``, default ``"default"``)."""

from __future__ import annotations

from django.db import models


class ShardMapVersion(models.Model):
    """One version of a group's shard map. Version 1 comes from settings and is not stored;
    every split writes the next version here. Append-only."""

    group = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    strategy = models.CharField(max_length=255)
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
