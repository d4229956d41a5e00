"""Settings of the fan-out benchmark (``benchmarks/fanout.py``): N shards, primaries only.

The test app's models (``tests.testapp``) on a topology of its own, chosen by environment
variables that the benchmark sets before Django starts:

- ``FANOUT_BENCH_BACKEND``: ``sqlite`` (default) or ``mariadb``;
- ``FANOUT_BENCH_SHARDS``: number of shard aliases ``f0`` .. ``f<N-1>`` (default 8);
- ``FANOUT_BENCH_WORKERS``: ``FANOUT_WORKERS`` (default 8);
- ``FANOUT_BENCH_CONN_MAX_AGE``: ``CONN_MAX_AGE`` of every alias (default 600 s, so the
  executor's ``close_old_connections`` keeps the worker threads' connections open);
- ``FANOUT_BENCH_DIR``: SQLite only, the directory of the database files (required).

MariaDB: ``f<i>`` is database ``shard<i>`` on primary server ``p<i mod 3>`` (the servers
of ``S0_URL``, ``S1_URL``, ``S2_URL``), the catalog is ``DATABASE_URL``. Django's test
databases are named ``test_fanout_*``, so the benchmark never touches the real databases,
the test suite's ``test_*`` or the routing benchmark's ``test_bench_*``. No replicas: every
read goes to a primary, so the benchmark measures the fan-out itself.

Groups: ``users`` (Author, Post, Follow) and ``metrics`` (Reading) are hashed over all N
shards; ``events`` (range) and ``legacy`` (hashed here, so the modulo warning W020 stays
quiet) use the first two shards only, so every test-app model has a home and the system
checks pass. ``FANOUT_BENCH_SHARDS`` must be at least 2.
"""

import os
from pathlib import Path

import environ

from benchmarks.topology import mysql_database, primaries, sqlite_database

env = environ.Env()
BACKEND = env.str("FANOUT_BENCH_BACKEND", default="sqlite")
SHARD_COUNT = env.int("FANOUT_BENCH_SHARDS", default=8)
FANOUT_WORKERS = env.int("FANOUT_BENCH_WORKERS", default=8)
CONN_MAX_AGE = env.int("FANOUT_BENCH_CONN_MAX_AGE", default=600)

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django_shards", "tests.testapp"]
DATABASE_ROUTERS = ["django_shards.router.ShardRouter"]
SHARD_ALIASES = [f"f{i}" for i in range(SHARD_COUNT)]

if BACKEND == "mariadb":

    def _mysql(var: str, name: str | None = None) -> dict:
        return mysql_database(env, var, prefix="test_fanout", conn_max_age=CONN_MAX_AGE, name=name)

    DATABASES = {"default": _mysql("DATABASE_URL")}
    for i, alias in enumerate(SHARD_ALIASES):
        DATABASES[alias] = _mysql(f"S{i % 3}_URL", name=f"shard{i}")
else:
    _dir = Path(os.environ["FANOUT_BENCH_DIR"])

    def _sqlite(name: str) -> dict:
        return sqlite_database(_dir, name, prefix="test_fanout", conn_max_age=CONN_MAX_AGE)

    DATABASES = {"default": _sqlite("catalog")}
    for alias in SHARD_ALIASES:
        DATABASES[alias] = _sqlite(alias)


DJANGO_SHARDS = {
    "GROUPS": {
        "users": {"STRATEGY": "hash", "SHARDS": primaries(SHARD_ALIASES)},
        "metrics": {"STRATEGY": "hash", "SHARDS": primaries(SHARD_ALIASES)},
        "events": {
            "STRATEGY": "range",
            "SHARDS": primaries(SHARD_ALIASES[:2], ranges=[[None, 1000], [1000, None]]),
        },
        "legacy": {"STRATEGY": "hash", "SHARDS": primaries(SHARD_ALIASES[:2])},
    },
    "CATALOG": "default",
    "FANOUT": "allow",
    "FANOUT_WORKERS": FANOUT_WORKERS,
    "FANOUT_TIMEOUT_SECONDS": 60.0,
}
