"""Connections as the operator account (``DJANGO_SHARDS["OPERATOR"]``): the work the app's
own user may not do (binlog streams, consistent snapshots with their binlog position,
promotion and ``CHANGE MASTER TO`` in a failover).

The operator logs in at the same host, port and database as an alias of ``DATABASES``.
Its password never appears in a message or a ``repr()``.
"""

from __future__ import annotations

from typing import Any

from django.db import connections

from django_shards.conf import OperatorSettings, get_config
from django_shards.exceptions import SplitError


class OperatorUnavailable(SplitError):
    """The operator account cannot be used for an alias: ``OPERATOR`` is not configured,
    or the alias is not a MySQL/MariaDB database."""


def operator_account() -> OperatorSettings:
    """``OPERATOR`` as parsed; raises :class:`OperatorUnavailable` when it is not set."""
    operator = get_config().operator
    if operator is None:
        raise OperatorUnavailable(
            'DJANGO_SHARDS["OPERATOR"] is not configured: the binlog stream of an online '
            "split needs an account with REPLICATION SLAVE and BINLOG MONITOR (see the "
            "settings docs)."
        )
    return operator


def _alias_settings(alias: str) -> dict[str, Any]:
    if alias not in connections.settings:
        raise OperatorUnavailable(f"Database alias {alias!r} is not in DATABASES.")
    settings_dict = connections[alias].settings_dict
    if connections[alias].vendor != "mysql":
        raise OperatorUnavailable(
            f"Database alias {alias!r} is not MySQL/MariaDB ({settings_dict['ENGINE']}): "
            "it has no binlog to stream."
        )
    return settings_dict


def _endpoint(settings_dict: dict[str, Any]) -> dict[str, Any]:
    """Host or socket, and port, of an alias (Django's MySQL conventions)."""
    host = settings_dict.get("HOST") or "localhost"
    options = settings_dict.get("OPTIONS") or {}
    endpoint: dict[str, Any] = {"connect_timeout": int(options.get("connect_timeout", 10))}
    if host.startswith("/"):
        endpoint["unix_socket"] = host
    else:
        endpoint["host"] = host
    if settings_dict.get("PORT"):
        endpoint["port"] = int(settings_dict["PORT"])
    return endpoint


def operator_connect(alias: str, *, connect_timeout: int | None = None) -> Any:
    """A new ``MySQLdb`` connection as the operator, to ``alias``'s host, port and database
    (the test database during tests): autocommit on, utf8mb4, the alias's connect timeout
    (or ``connect_timeout``).
    The caller closes it. Raises :class:`OperatorUnavailable`, or ``MySQLdb``'s
    ``OperationalError`` when the server refuses or cannot be reached."""
    operator = operator_account()
    settings_dict = _alias_settings(alias)  # a MySQL/MariaDB alias: mysqlclient is installed
    import MySQLdb

    endpoint = _endpoint(settings_dict)
    if connect_timeout is not None:
        endpoint["connect_timeout"] = connect_timeout
    conn = MySQLdb.connect(
        user=operator.user,
        password=operator.password,
        database=settings_dict["NAME"],
        charset="utf8mb4",
        autocommit=True,
        **endpoint,
    )
    return conn


def binlog_settings(alias: str) -> dict[str, Any]:
    """``connection_settings`` for pymysqlreplication's ``BinLogStreamReader`` (PyMySQL
    keywords): the operator at ``alias``'s host and port. A dead server is noticed within
    30 s of silence (``read_timeout``); a non-blocking stream is never silent for long.
    Raises :class:`OperatorUnavailable`."""
    operator = operator_account()
    settings = _endpoint(_alias_settings(alias))
    settings.setdefault("port", 3306)
    return {
        **settings,
        "user": operator.user,
        "password": operator.password,
        "charset": "utf8mb4",
        "read_timeout": 30,
    }
