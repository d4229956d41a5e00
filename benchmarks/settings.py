"""Settings of the database benchmarks: the test project's, with their own test databases.

Everything comes from :mod:`tests.settings` (``SHARDS_DB=sqlite|mariadb``, the same groups
and shards). The only change: Django's test databases get a ``test_bench_`` prefix on
MariaDB, so a benchmark never drops or fills the databases a concurrent test run uses
(``test_catalog``, ``test_shard0`` ...). The app user may create any ``test_%`` database.
On SQLite ``tests.settings`` already puts every file in a fresh temporary directory
(or ``SHARDS_SQLITE_DIR``), which the benchmark sets and removes.

The benchmarks create and drop the test databases themselves
(``django.test.utils.setup_databases``); the real databases are never touched.
"""

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES, SHARDS_DB

if SHARDS_DB == "mariadb":
    for _alias, _db in DATABASES.items():
        _test = _db.setdefault("TEST", {})
        if not _test.get("MIRROR"):
            _test["NAME"] = f"test_bench_{_db['NAME']}"
