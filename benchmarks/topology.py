"""What the benchmarks' own settings modules (``fanout_settings``, ``lookup_settings``)
share: their database entries and their primaries-only shard lists."""

import os
import sys
import tempfile
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


def databases_dir(backend: str, needs: tuple[str, ...], dir_var: str, prefix: str) -> str | None:
    """Before Django starts: on MariaDB, exit with one sentence unless the topology's URLs
    ``needs`` are set; on SQLite, a new temporary directory for the database files, also
    put in ``$dir_var`` for the settings module (returned, for the caller to remove)."""
    if backend == "mariadb":
        missing = [v for v in needs if not os.environ.get(v)]
        if missing:
            sys.exit(
                f"--backend mariadb needs {', '.join(missing)}; "
                "run `source /tmp/django_shards_mariadb/env` first (scripts/mariadb-topology up)."
            )
        return None
    tmp = tempfile.mkdtemp(prefix=prefix)
    os.environ[dir_var] = tmp
    return tmp
