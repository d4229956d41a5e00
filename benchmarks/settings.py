"""Settings of the database benchmarks: the test project's, with their own test databases.

Everything comes from :mod:`tests.settings` (``SHARDS_DB=sqlite|mariadb``, the same groups
and shards, and ``DJANGO_SHARDS["OPERATOR"]`` from ``SHARDS_OPERATOR_USER`` /
``SHARDS_OPERATOR_PASSWORD`` and ``SHARDS_REPLICATION_USER`` / ``SHARDS_REPLICATION_PASSWORD``
on MariaDB). The only change: Django's test databases get a
``test_bench_`` prefix on MariaDB (and ``SHARDS_TEST_SUFFIX``, when set, as a suffix), so
a benchmark never drops or fills the databases a concurrent test run uses (``test_catalog``,
``test_shard0`` ...), nor those of a benchmark run with another suffix. The app user may
create any ``test_%`` database. On SQLite ``tests.settings`` already puts every file in a
fresh temporary directory (or ``SHARDS_SQLITE_DIR``), which the benchmark sets and removes.

The benchmarks create and drop the test databases themselves
(``django.test.utils.setup_databases``); the real databases are never touched. A process a
benchmark starts on those databases (``benchmarks/split.py`` runs ``shard_split`` in one)
sets ``SHARDS_USE_TEST_DATABASES=1``: each alias then uses its benchmark test database as
its real one.
"""

import os

# tests.settings would switch to *its* test names; the benchmark's are switched to below
_use_test_databases = os.environ.pop("SHARDS_USE_TEST_DATABASES", "")
try:
    from tests.settings import *  # noqa: F403
    from tests.settings import DATABASES, SHARDS_DB
finally:
    if _use_test_databases:
        os.environ["SHARDS_USE_TEST_DATABASES"] = _use_test_databases

if SHARDS_DB == "mariadb":
    _suffix = os.environ.get("SHARDS_TEST_SUFFIX", "")
    for _alias, _db in DATABASES.items():
        _test = _db.setdefault("TEST", {})
        if not _test.get("MIRROR"):
            _test["NAME"] = f"test_bench_{_db['NAME']}" + (f"_{_suffix}" if _suffix else "")

if _use_test_databases in ("1", "true", "True", "yes"):
    for _alias, _db in DATABASES.items():
        _test = _db["TEST"]
        if not _test.get("MIRROR"):
            _db["NAME"] = _test["NAME"]
    for _alias, _db in DATABASES.items():  # a mirror reads its primary's (renamed) database
        if _db["TEST"].get("MIRROR"):
            _db["NAME"] = DATABASES[_db["TEST"]["MIRROR"]]["NAME"]
