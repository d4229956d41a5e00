"""Failover and switchover of a shard's primary (MariaDB, GTID replication).

A **failover** replaces a primary that does not answer: every replica first applies what
it received (``MASTER_GTID_WAIT`` on its ``Gtid_IO_Pos``), the one that has applied the
most of the primary's GTID domains is promoted (or ``--to``), the other replicas are
pointed at it (``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos`` with
``OPERATOR["REPLICATION_USER"]``), and a map version makes it the shard's primary and
records the old one as ``demoted`` (never used again by the app). With semi-synchronous
replication at ``AFTER_SYNC``, a write acknowledged to the application had reached a
replica's relay log, so the most advanced replica has every acknowledged write.

A **switchover** is planned, the primary alive: once every process polls the map every
``FENCE_POLL_SECONDS`` (one lease after the job is recorded), the primary is made
read-only (a write then fails with the retryable ``ShardUnavailable``), the candidate
applies exactly its ``gtid_binlog_pos``, is promoted, the old primary and the other
replicas become its replicas, and the map names it. Writes are refused for the few
milliseconds of those steps plus one poll.

Every step is recorded in a :class:`~django_shards.models.FailoverJob` before the next
starts; running the command again finishes a job killed half-way (each step can be done
twice). All work beyond the app's rights uses the ``OPERATOR`` account.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import connections
from django.utils import timezone

from django_shards.conf import Shard, get_config
from django_shards.exceptions import ShardingError
from django_shards.health import fetch_dict
from django_shards.models import FailoverJob
from django_shards.operator import operator_account, operator_connect
from django_shards.resharding.stream import parse_gtid
from django_shards.shardmap import registry, write_version

logger = logging.getLogger("django_shards.failover")
Phase = FailoverJob.Phase
Kind = FailoverJob.Kind

#: how long a replica may take to apply what it received, or the old primary's position
CATCH_UP_SECONDS = 10
#: connect timeout of a probe of a server (seconds)
PROBE_TIMEOUT_SECONDS = 2
#: added to each lease wait, for clocks and in-flight statements
LEASE_MARGIN_SECONDS = 0.2


class FailoverError(ShardingError):
    """A failover or switchover was refused (nothing changed) or stopped (the job says
    where; run the command again to finish it)."""


@dataclass
class ServerState:
    """What a probe of one server of the shard found."""

    alias: str
    reachable: bool
    error: str = ""
    read_only: bool | None = None
    #: replicas: the position received (``Gtid_IO_Pos``) and applied (``gtid_slave_pos``)
    received: str = ""
    applied: str = ""
    #: the server's own binlog position (``gtid_binlog_pos``)
    binlog: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "reachable": self.reachable,
            "error": self.error,
            "read_only": self.read_only,
            "received": self.received,
            "applied": self.applied,
        }


@dataclass
class Plan:
    """The decision, and its evidence, before anything is changed."""

    group: str
    shard: Shard
    kind: str
    candidate: str
    reason: str
    primary: ServerState
    replicas: list[ServerState] = field(default_factory=list)

    @property
    def new_shard(self) -> Shard:
        """The shard as the new map version records it."""
        others = [r for r in self.shard.replicas if r != self.candidate]
        if self.kind == Kind.SWITCHOVER:
            return replace(
                self.shard, primary=self.candidate, replicas=(*others, self.shard.primary)
            )
        demoted = (*self.shard.demoted, self.shard.primary)
        return replace(self.shard, primary=self.candidate, replicas=tuple(others), demoted=demoted)

    def as_dict(self) -> dict[str, Any]:
        new = self.new_shard
        return {
            "group": self.group,
            "shard": self.shard.name,
            "kind": self.kind,
            "old_primary": self.shard.primary,
            "new_primary": self.candidate,
            "reason": self.reason,
            "primary": self.primary.as_dict(),
            "replicas": [r.as_dict() for r in self.replicas],
            "after": new.as_dict(),
        }

    def lines(self) -> list[str]:
        out = [f"{self.kind} of {self.group}/{self.shard.name}"]
        p = self.primary
        out.append(
            f"  primary {p.alias}: "
            + (f"answers (binlog {p.binlog or '-'})" if p.reachable else f"unreachable ({p.error})")
        )
        for r in self.replicas:
            if r.reachable:
                out.append(
                    f"  replica {r.alias}: received {r.received or '-'}, applied {r.applied or '-'}"
                )
            else:
                out.append(f"  replica {r.alias}: unusable ({r.error})")
        out.append(f"chosen: {self.candidate} ({self.reason})")
        new = self.new_shard
        out.append(
            f"after: primary {new.primary}, replicas {', '.join(new.replicas) or 'none'}"
            + (f", demoted {', '.join(new.demoted)}" if new.demoted else "")
        )
        return out


def _seq(position: str, domains: set[int]) -> tuple[int, ...]:
    parsed = parse_gtid(position) if position else {}
    return tuple(parsed.get(d, (0, 0))[1] for d in sorted(domains))


def _query(conn: Any, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cursor:
        cursor.execute(sql, args)
        return list(cursor.fetchall()) if cursor.description else []


def _slave_status(conn: Any) -> dict[str, Any]:
    """``SHOW SLAVE STATUS`` as a dict (empty: the server replicates from nothing)."""
    with conn.cursor() as cursor:
        cursor.execute("SHOW SLAVE STATUS")
        return fetch_dict(cursor) or {}


def _stop_replicating(conn: Any, *, forget: bool = False) -> None:
    """Stop the server's replication, if it has any (and ``forget`` it: RESET SLAVE ALL);
    a second call does nothing."""
    if _slave_status(conn):
        _query(conn, "STOP SLAVE")
        if forget:
            _query(conn, "RESET SLAVE ALL")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else ("" if value is None else str(value))


def _connect(alias: str, timeout: int = PROBE_TIMEOUT_SECONDS) -> Any:
    return operator_connect(alias, connect_timeout=timeout)


def probe(alias: str, *, replica: bool, wait_relay: bool = False) -> ServerState:
    """Probe ``alias`` as the operator. ``wait_relay``: let a replica apply what it has
    received first (at most CATCH_UP_SECONDS). Never raises for an unreachable server."""
    try:
        conn = _connect(alias)
    except Exception as exc:  # noqa: BLE001 - any failure to connect: unreachable
        return ServerState(alias, False, error=_one_line(exc))
    try:
        state = ServerState(alias, True)
        ((read_only, binlog),) = _query(conn, "SELECT @@global.read_only, @@gtid_binlog_pos")
        state.read_only, state.binlog = bool(read_only), _text(binlog)
        if replica:
            status = _slave_status(conn)
            state.received = _text(status.get("Gtid_IO_Pos"))
            if wait_relay and state.received:
                _query(conn, "SELECT MASTER_GTID_WAIT(%s, %s)", [state.received, CATCH_UP_SECONDS])
            ((applied,),) = _query(conn, "SELECT @@gtid_slave_pos")
            state.applied = _text(applied)
            if not status:
                state.reachable, state.error = False, "not a replica (no SHOW SLAVE STATUS)"
        return state
    except Exception as exc:  # noqa: BLE001 - a server that fails its probe is unusable
        return ServerState(alias, False, error=_one_line(exc))
    finally:
        conn.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


class Failover:
    """One ``shard_failover`` run: plan, or run (or finish) the job of a shard."""

    def __init__(
        self,
        group: str,
        shard: str,
        *,
        to: str | None = None,
        switchover: bool = False,
        report: Callable[[str], None] = logger.info,
        hold: Callable[[str], None] | None = None,
    ) -> None:
        self.group, self.shard_name = group, shard
        self.to, self.switchover = to, switchover
        self.report = report
        #: called with each phase once it is recorded (tests hold the run there)
        self.hold = hold
        self.catalog = get_config().catalog

    # -- planning ----------------------------------------------------------------------

    def unfinished(self) -> FailoverJob | None:
        return (
            FailoverJob.objects.using(self.catalog)
            .filter(group=self.group, shard=self.shard_name, phase__in=FailoverJob.ACTIVE_PHASES)
            .order_by("-created")
            .first()
        )

    def plan(self) -> Plan:
        """Probe the shard's servers and choose; raises ``FailoverError`` when refused."""
        shard = registry.refresh(self.group).shard_named(self.shard_name)
        kind = Kind.SWITCHOVER if self.switchover else Kind.FAILOVER
        if not shard.replicas:
            raise FailoverError(f"Shard {self.group}/{shard.name} has no replica to promote.")
        if self.to is not None and self.to not in shard.replicas:
            raise FailoverError(
                f"--to {self.to!r} is not a replica of shard {self.group}/{shard.name} "
                f"(replicas: {', '.join(shard.replicas)})."
            )
        for alias in shard.aliases:
            if alias not in connections.settings or connections[alias].vendor != "mysql":
                raise FailoverError(
                    f"{self.group}/{shard.name} cannot fail over: {alias!r} is not a "
                    "MariaDB/MySQL database of DATABASES (failover promotes a GTID replica)."
                )
        if get_config().operator is None:
            raise FailoverError(
                'DJANGO_SHARDS["OPERATOR"] is not configured: promoting a replica and '
                "repointing the others need the operator account. Nothing was changed."
            )
        primary = probe(shard.primary, replica=False)
        if kind == Kind.FAILOVER and primary.reachable:
            raise FailoverError(
                f"The primary {shard.primary!r} of {self.group}/{shard.name} answers; a "
                "failover would split the shard's writes. Use --switchover to change a live "
                "primary. Nothing was changed."
            )
        if kind == Kind.SWITCHOVER and not primary.reachable:
            raise FailoverError(
                f"The primary {shard.primary!r} of {self.group}/{shard.name} does not answer "
                f"({primary.error}); a switchover needs it. Run a failover (without "
                "--switchover). Nothing was changed."
            )
        replicas = [
            probe(alias, replica=True, wait_relay=kind == Kind.FAILOVER) for alias in shard.replicas
        ]
        usable = [r for r in replicas if r.reachable]
        if not usable:
            raise FailoverError(
                f"No replica of {self.group}/{shard.name} is usable: "
                + "; ".join(f"{r.alias}: {r.error}" for r in replicas)
                + ". Nothing was changed."
            )
        domains = {d for r in usable for d in parse_gtid(r.applied or r.received or "")}
        if kind == Kind.SWITCHOVER:
            domains |= set(parse_gtid(primary.binlog or ""))
        best = max(usable, key=lambda r: (_seq(r.applied, domains), -shard.replicas.index(r.alias)))
        candidate = best
        reason = f"the most applied of domain(s) {sorted(domains)}: {best.applied or 'empty'}"
        if self.to is not None:
            chosen = next((r for r in replicas if r.alias == self.to), None)
            if chosen is None or not chosen.reachable:
                error = chosen.error if chosen is not None else "not probed"
                raise FailoverError(
                    f"--to {self.to!r} is not usable: {error}. Nothing was changed."
                )
            candidate = chosen
            if kind == Kind.FAILOVER and _seq(best.applied, domains) > _seq(
                candidate.applied, domains
            ):
                raise FailoverError(
                    f"--to {self.to!r} has applied {candidate.applied or 'nothing'}, less than "
                    f"{best.alias!r} ({best.applied}): promoting it would lose those "
                    "transactions. Choose it, or leave out --to. Nothing was changed."
                )
            reason = "--to"
        return Plan(self.group, shard, kind, candidate.alias, reason, primary, replicas)

    # -- running -----------------------------------------------------------------------

    def run(self, plan: Plan | None = None) -> FailoverJob:
        """Record ``plan`` (or plan now) and carry it out, or finish an unfinished job."""
        job = self.unfinished()
        if job is None:
            plan = plan or self.plan()
            new = plan.new_shard
            job = FailoverJob.objects.using(self.catalog).create(
                group=self.group,
                shard=self.shard_name,
                kind=plan.kind,
                old_primary=plan.shard.primary,
                new_primary=plan.candidate,
                replicas=list(new.replicas),
                steps=[_step("planned", plan.as_dict())],
            )
            self.report(f"{job.kind}: {job.old_primary} -> {job.new_primary} (job {job.pk})")
        else:
            self.report(f"finishing {job.kind} job {job.pk} from phase {job.phase}")
        try:
            return self._carry_out(job)
        except Exception as exc:
            job.error = _one_line(exc)
            job.save(using=self.catalog, update_fields=["error", "updated"])
            raise

    def _carry_out(self, job: FailoverJob) -> FailoverJob:
        lease = get_config().map_lease_seconds + LEASE_MARGIN_SECONDS
        if job.kind == Kind.SWITCHOVER and job.phase == Phase.PLANNED:
            # every process re-reads the map each FENCE_POLL_SECONDS from now on (the job
            # is active); after one lease all of them do
            self.report(f"waiting {lease:.1f}s (one map lease) so every process polls the map")
            time.sleep(lease)
            self._fence_old_primary(job)
        if job.phase in (Phase.PLANNED, Phase.FENCED):
            self._catch_up(job)
        if job.phase == Phase.CAUGHT_UP:
            self._promote(job)
        if job.phase == Phase.PROMOTED:
            # before the map names it: a semi-synchronous write to it waits for a replica
            self._repoint(job)
        if job.phase == Phase.REPOINTED:
            self._write_map(job)
        if job.phase == Phase.MAPPED:
            # like a split's cutover: no process routes by the old map any more
            self.report(f"waiting {lease:.1f}s (one map lease) so no process routes by the old map")
            time.sleep(lease)
            self._advance(job, Phase.DONE, "done", {})
        return job

    def _advance(self, job: FailoverJob, phase: str, step: str, detail: dict[str, Any]) -> None:
        job.phase = phase
        job.steps = [*job.steps, _step(step, detail)]
        job.error = ""
        job.save(using=self.catalog, update_fields=["phase", "steps", "error", "updated"])
        logger.info("%s %s/%s job %s: %s %s", job.kind, job.group, job.shard, job.pk, step, detail)
        self.report(f"phase: {phase}")
        if self.hold is not None:
            self.hold(phase)

    def _fence_old_primary(self, job: FailoverJob) -> None:
        conn = _connect(job.old_primary)
        try:
            _query(conn, "SET GLOBAL read_only = ON")
            ((position,),) = _query(conn, "SELECT @@gtid_binlog_pos")
        finally:
            conn.close()
        job.position = _text(position)
        self._advance(job, Phase.FENCED, "old primary read-only", {"position": job.position})

    def _catch_up(self, job: FailoverJob) -> None:
        conn = _connect(job.new_primary)
        try:
            if job.kind == Kind.SWITCHOVER:
                wanted = job.position
            else:  # what it received from the dead primary
                wanted = _text(_slave_status(conn).get("Gtid_IO_Pos"))
            if wanted:
                ((result,),) = _query(
                    conn, "SELECT MASTER_GTID_WAIT(%s, %s)", [wanted, CATCH_UP_SECONDS]
                )
                if result != 0:
                    raise FailoverError(
                        f"{job.new_primary!r} did not apply {wanted} within {CATCH_UP_SECONDS}s."
                    )
            ((applied,),) = _query(conn, "SELECT @@gtid_current_pos")
        except Exception:
            if job.kind == Kind.SWITCHOVER:
                self._lift_fence(job)
            raise
        finally:
            conn.close()
        job.position = _text(applied)
        self._advance(job, Phase.CAUGHT_UP, "caught up", {"applied": job.position})

    def _lift_fence(self, job: FailoverJob) -> None:
        """A switchover that cannot go on before the promotion: the old primary takes
        writes again, and the job is aborted."""
        try:
            conn = _connect(job.old_primary)
            try:
                _query(conn, "SET GLOBAL read_only = OFF")
            finally:
                conn.close()
        finally:
            self._advance(job, Phase.ABORTED, "aborted: old primary writable again", {})

    def _promote(self, job: FailoverJob) -> None:
        conn = _connect(job.new_primary)
        try:
            _stop_replicating(conn, forget=True)
            _query(conn, "SET GLOBAL read_only = OFF")
            ((position,),) = _query(conn, "SELECT @@gtid_current_pos")
        finally:
            conn.close()
        self._advance(job, Phase.PROMOTED, "promoted", {"position": _text(position)})

    def _write_map(self, job: FailoverJob) -> None:
        current = registry.refresh(job.group)
        shard = current.shard_named(job.shard)
        if shard.primary != job.new_primary:
            demoted = shard.demoted
            if job.kind == Kind.FAILOVER and job.old_primary not in demoted:
                demoted = (*demoted, job.old_primary)
            new = replace(
                shard,
                primary=job.new_primary,
                replicas=tuple(job.replicas),
                demoted=tuple(d for d in demoted if d != job.new_primary),
            )
            shards = [new if s.name == shard.name else s for s in current.shards.values()]
            written = write_version(
                job.group, shards, current.layout, note=f"{job.kind} of {job.shard} (job {job.pk})"
            )
            detail = {"version": written.version, "shard": new.as_dict()}
        else:
            detail = {"version": current.version, "already": True}
        self._advance(job, Phase.MAPPED, "map version written", detail)

    def _repoint(self, job: FailoverJob) -> None:
        """Every replica of the new map replicates from the new primary (the old primary
        too, in a switchover); one that cannot be reached is left, and said so."""
        account = operator_account()
        if not account.replication_user:
            raise FailoverError(
                'DJANGO_SHARDS["OPERATOR"]["REPLICATION_USER"] is not set: the replicas cannot '
                "be pointed at the new primary. Set it and run the command again."
            )
        host, port = replication_endpoint(job.new_primary)
        done, skipped = [], {}
        for alias in job.replicas:
            try:
                conn = _connect(alias)
            except Exception as exc:  # noqa: BLE001 - a dead replica is left, and said so
                skipped[alias] = _one_line(exc)
                continue
            try:
                _stop_replicating(conn)
                if alias == job.old_primary:  # it wrote the binlog; it has all of it
                    _query(conn, "SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos")
                _query(
                    conn,
                    "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
                    "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1",
                    [host, port, account.replication_user, account.replication_password or ""],
                )
                _query(conn, "START SLAVE")
                _query(conn, "SET GLOBAL read_only = ON")
                done.append(alias)
            finally:
                conn.close()
        if job.kind == Kind.FAILOVER:
            fence_demoted(job.old_primary)  # if it is back already
        self._advance(
            job, Phase.REPOINTED, "replicas repointed", {"done": done, "skipped": skipped}
        )


def replication_endpoint(alias: str) -> tuple[str, int]:
    """Host and port a replica connects to for ``alias`` (TCP, as in its settings)."""
    settings_dict = connections[alias].settings_dict
    host = settings_dict.get("HOST") or "127.0.0.1"
    if host.startswith("/"):
        raise FailoverError(
            f"{alias!r} is reached through a socket ({host}); replicas need its TCP host."
        )
    return ("127.0.0.1" if host == "localhost" else host), int(settings_dict.get("PORT") or 3306)


def fence_demoted(alias: str) -> bool:
    """Make a demoted primary read-only if it answers and is not; True when it was done."""
    try:
        conn = _connect(alias)
    except Exception:  # noqa: BLE001 - still down: nothing to fence
        return False
    try:
        ((read_only,),) = _query(conn, "SELECT @@global.read_only")
        if read_only:
            return False
        _query(conn, "SET GLOBAL read_only = ON")
        logger.warning("demoted primary %s answered writable: made read-only", alias)
        return True
    finally:
        conn.close()


def _step(step: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, "at": timezone.now().isoformat(), "detail": detail}
