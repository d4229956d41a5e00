"""The database backend the suite runs on, and waiting for its replicas."""

from __future__ import annotations

from django.conf import settings
from django.db import connections

from django_shards.conf import get_config

#: the suite runs on the real MariaDB topology (``SHARDS_DB=mariadb``), not on SQLite files
MARIADB = settings.SHARDS_DB == "mariadb"


def wait_for_replicas(timeout: float = 10.0) -> None:
    """Block until every replica has applied everything its primary committed.

    SQLite replicas read the primary's file, so there is nothing to wait for.
    """
    if not MARIADB:
        return
    for group in get_config().groups.values():
        for spec in group.shards:
            shard = spec.shard
            with connections[shard.primary].cursor() as cur:
                cur.execute("SELECT @@gtid_binlog_pos")
                (pos,) = cur.fetchone()
            for replica in shard.replicas:
                with connections[replica].cursor() as cur:
                    cur.execute("SELECT MASTER_GTID_WAIT(%s, %s)", [pos, timeout])
                    (result,) = cur.fetchone()
                assert result == 0, f"replica {replica} did not catch up with {pos}"
