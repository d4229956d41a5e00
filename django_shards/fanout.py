"""Fan-out: run one query on several shards in parallel and merge like one database.

The executor runs one task per shard on ``FANOUT_WORKERS`` threads; each task treats its
connections as a request does (each connection it uses is checked before and after, as
``close_old_connections`` does, honouring ``CONN_MAX_AGE``) and comes back as a
:class:`FanoutResult`. A shard whose alias is inside
a transaction of the calling thread runs in the calling thread, so it sees that
transaction's writes.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ALL_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, connections

from django_shards.conf import Shard, get_config
from django_shards.exceptions import FanoutError, ShardKeyRequired
from django_shards.replicas import is_connection_error, pool

logger = logging.getLogger("django_shards.fanout")


@dataclass(frozen=True)
class FanoutResult:
    """What one shard answered: its value, or the error it raised, and how long it took."""

    shard: Shard
    alias: str
    value: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class FanoutExecutor:
    """Runs a task on each shard in parallel. Subclass and override :meth:`submit` (or
    set ``executor_class``) to change how tasks are scheduled."""

    executor_class: type[ThreadPoolExecutor] = ThreadPoolExecutor

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = self.executor_class(
            max_workers=workers, thread_name_prefix="django_shards_fanout"
        )

    def submit(self, fn: Callable[[], FanoutResult]) -> Any:
        return self._executor.submit(fn)

    def run(
        self,
        targets: Sequence[tuple[Shard, str]],
        task: Callable[[str], Any],
        *,
        timeout: float,
    ) -> list[FanoutResult]:
        """Run ``task(alias)`` for every ``(shard, alias)``; results in ``targets`` order.

        A read on a replica that fails is retried on the shard's primary.
        """
        results: list[FanoutResult | None] = [None] * len(targets)
        futures = {}
        for i, (shard, alias) in enumerate(targets):
            if len(targets) == 1 or connections[alias].in_atomic_block:
                results[i] = _run_one(shard, alias, task, in_worker=False)
            else:
                ctx = contextvars.copy_context()
                futures[self.submit(functools.partial(ctx.run, _run_one, shard, alias, task))] = i
        if futures:
            done, not_done = wait(futures, timeout=timeout, return_when=ALL_COMPLETED)
            for future in done:
                results[futures[future]] = future.result()
            for future in not_done:
                i = futures[future]
                future.cancel()
                shard, alias = targets[i]
                results[i] = FanoutResult(
                    shard,
                    alias,
                    error=TimeoutError(f"no answer within {timeout:g}s"),
                    elapsed=timeout,
                )
        return [r for r in results if r is not None]

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _close_old(aliases: set[str]) -> None:
    """``close_old_connections`` for the aliases a task uses (honours ``CONN_MAX_AGE``):
    what Django does around a request, without walking every alias."""
    for name in aliases:
        connections[name].close_if_unusable_or_obsolete()


def _run_one(
    shard: Shard, alias: str, task: Callable[[str], Any], in_worker: bool = True
) -> FanoutResult:
    started = time.perf_counter()
    used = {alias}
    if in_worker:
        _close_old(used)
    try:
        while True:
            try:
                value = task(alias)
            except DatabaseError as exc:
                if alias == shard.primary:
                    raise
                replica, alias = alias, shard.primary  # a replica failed: the primary answers
                used.add(alias)
                if is_connection_error(exc):
                    pool.mark_down(replica, exc)
                    continue
                value = task(alias)  # raises if the error is the query's, not the replica's
                pool.mark_down(replica, exc)
            if alias != shard.primary:
                pool.observe(alias, time.perf_counter() - started)
            return FanoutResult(shard, alias, value, None, time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - reported in the result, raised by the caller
        return FanoutResult(shard, alias, None, exc, time.perf_counter() - started)
    finally:
        if in_worker:
            _close_old(used)


_executor: FanoutExecutor | None = None
_executor_lock = threading.Lock()


def get_executor() -> FanoutExecutor:
    """The process's executor, sized by ``FANOUT_WORKERS`` (rebuilt when it changes)."""
    global _executor
    workers = get_config().fanout_workers
    with _executor_lock:
        if _executor is None or _executor.workers != workers:
            if _executor is not None:
                _executor.shutdown()
            _executor = FanoutExecutor(workers)
        return _executor


def reset_executor() -> None:
    global _executor
    with _executor_lock:
        if _executor is not None:
            _executor.shutdown()
        _executor = None


def collect(
    results: list[FanoutResult], *, allow_partial: bool, what: str
) -> tuple[list[FanoutResult], list[str]]:
    """The successful results and the names of the shards left out.

    A database error or timeout on a shard raises :class:`FanoutError` naming it, unless
    ``allow_partial``; any other error (a bad field, a bad lookup) is the caller's and is
    raised as it is.
    """
    good, missing = [], []
    for result in results:
        if result.error is None:
            good.append(result)
            continue
        if not isinstance(result.error, DatabaseError | TimeoutError):
            raise result.error
        if not allow_partial:
            raise FanoutError(
                f"{what} failed on shard {result.shard.name!r} ({result.alias}): "
                f"{result.error}. Use .allow_partial() to accept answers from the other shards."
            ) from result.error
        logger.warning("fan-out %s left out shard %s: %s", what, result.shard.name, result.error)
        missing.append(result.shard.name)
    return good, missing


def apply_fanout_setting(model: Any, sk: Any, shards: Sequence[Shard], where: Any) -> None:
    """``FANOUT`` for a query of ``model`` without its key (``sk``) that would run on
    ``shards``: ``deny`` raises ``ShardKeyRequired``, ``warn`` logs the model and filter."""
    mode = get_config().fanout
    if mode == "deny":
        raise ShardKeyRequired(
            f"This {model._meta.label} query does not name its shard key "
            f"({sk.field_name!r}) and FANOUT is 'deny'; it would run on "
            f"{len(shards)} shards. Filter on the key, or call .fanout() to allow it."
        )
    if mode == "warn":
        logger.warning(
            "fan-out: %s on %d shards (%s), filter: %s",
            model._meta.label,
            len(shards),
            ", ".join(s.name for s in shards),
            where,
        )
