"""Transactions on one shard."""

from __future__ import annotations

from typing import Any

from django.db import models, transaction

from django_shards.routing import shard_for


def atomic(
    model: type[models.Model], key: Any, *, savepoint: bool = True, durable: bool = False
) -> transaction.Atomic:
    """``transaction.atomic`` on the primary of the shard that owns ``key`` for ``model``.

    Usable as a context manager or a decorator. Reads of that shard inside the block go
    to its primary. Writes to other shards are not part of the transaction.
    """
    return transaction.atomic(
        using=shard_for(model, key).primary, savepoint=savepoint, durable=durable
    )
