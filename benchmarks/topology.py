"""What the benchmarks' own settings modules (``fanout_settings``, ``lookup_settings``)
share: their database entries and their primaries-only shard lists."""

from pathlib import Path
from typing import Any


def mysql_database(
    env: Any, var: str, *, prefix: str, conn_max_age: int, name: str | None = None, suffix: str = ""
) -> dict:
    """The database of the URL in ``$var`` (named ``name`` when given), utf8mb4, with a test
    database ``<prefix>_<name>[_<suffix>]``."""
    cfg = env.db(var)
    if name is not None:
        cfg["NAME"] = name
    cfg.setdefault("OPTIONS", {}).update({"charset": "utf8mb4", "connect_timeout": 2})
    cfg["CONN_MAX_AGE"] = conn_max_age
    cfg["TEST"] = {"NAME": f"{prefix}_{cfg['NAME']}" + (f"_{suffix}" if suffix else "")}
    return cfg


def sqlite_database(directory: Path, name: str, *, prefix: str, conn_max_age: int) -> dict:
    """The SQLite file ``<name>.sqlite3`` in ``directory``, test file ``<prefix>_<name>``."""
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(directory / f"{name}.sqlite3"),
        "TEST": {"NAME": str(directory / f"{prefix}_{name}.sqlite3")},
        "OPTIONS": {"timeout": 20},
        "CONN_MAX_AGE": conn_max_age,
    }


def primaries(aliases: list[str], ranges: list | None = None) -> list[dict]:
    """``SHARDS`` of a group: one shard per alias, named after it, without replicas."""
    out = []
    for n, alias in enumerate(aliases):
        shard: dict[str, Any] = {"NAME": alias, "PRIMARY": alias, "REPLICAS": []}
        if ranges:
            shard["RANGE"] = ranges[n]
        out.append(shard)
    return out
