"""PostgreSQL event sink for replicas sharing one log.

Tables (created if missing; ``<prefix>`` must be a plain SQL identifier)::

    <prefix>_decisions (event_id text PRIMARY KEY, ts timestamptz, tenant text,
                        policy_version text, chosen text, probability double precision,
                        payload jsonb)
    <prefix>_outcomes  (seq bigserial PRIMARY KEY, event_id text, kind text, ts timestamptz,
                        payload jsonb)          -- kind: 'outcome' or 'feedback'

Outcomes and feedback share one table (feedback quality joins by ``event_id`` like an outcome;
``seq`` keeps their arrival order). ``payload`` is the full record, so reading back needs no
column mapping and the typed columns exist only for queries and indexes.

Same semantics as the file sink: one background writer drains a bounded queue; ``emit``
raises :class:`~features.errors.EventLogFullError` rather than drop; each batch of up to
``batch_size`` events is one transaction (``executemany``, pipelined by psycopg), so a batch
is durable once committed. A failed batch is retried once on a fresh connection; if that fails
too the sink fails loudly (``emit``/``flush``/``close`` raise). Decisions are inserted with
``ON CONFLICT DO NOTHING`` so that retry cannot duplicate them.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from features.errors import ConfigError
from router.events.models import (
    DecisionEvent,
    DecisionRecord,
    Emitted,
    Event,
    event_from_record,
    event_to_record,
)
from router.events.writer import BackgroundEventWriter

logger = logging.getLogger(__name__)

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


def _tables(table_prefix: str) -> tuple[sql.Identifier, sql.Identifier]:
    if not _IDENTIFIER.match(table_prefix):
        raise ConfigError(
            f"table_prefix: expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most "
            f"41 characters), got {table_prefix!r}"
        )
    return sql.Identifier(f"{table_prefix}_decisions"), sql.Identifier(f"{table_prefix}_outcomes")


def create_tables(conn: psycopg.Connection, table_prefix: str) -> None:
    """Create the event tables and indexes if they do not exist."""
    decisions, outcomes = _tables(table_prefix)
    index = sql.Identifier(f"{table_prefix}_outcomes_event_id")
    statements = [
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (event_id text PRIMARY KEY, ts timestamptz NOT NULL,"
            " tenant text NOT NULL, policy_version text NOT NULL, chosen text NOT NULL,"
            " probability double precision NOT NULL, payload jsonb NOT NULL)"
        ).format(decisions),
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (seq bigserial PRIMARY KEY, event_id text NOT NULL,"
            " kind text NOT NULL, ts timestamptz NOT NULL, payload jsonb NOT NULL)"
        ).format(outcomes),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (event_id)").format(index, outcomes),
    ]
    with conn.transaction():
        for statement in statements:
            conn.execute(statement)


class PostgresEventSink(BackgroundEventWriter):
    """Event sink writing to PostgreSQL tables ``<table_prefix>_decisions`` / ``_outcomes``.

    Parameters
    ----------
    dsn : str
        libpq connection string, e.g. ``"host=127.0.0.1 user=postgres dbname=polyroute"``.
    table_prefix : str
        Lower-case identifier prefixing the two table names.
    queue_size, put_timeout_s, batch_size
        See :class:`~router.events.writer.BackgroundEventWriter`.
    connect_timeout_s : int
        libpq connect timeout; the constructor connects (and creates the tables) so a wrong DSN
        fails at startup, not on the first request.
    """

    def __init__(
        self,
        dsn: str,
        table_prefix: str = "polyroute",
        queue_size: int = 10_000,
        batch_size: int = 200,
        put_timeout_s: float = 0.05,
        connect_timeout_s: int = 5,
    ) -> None:
        super().__init__(queue_size=queue_size, put_timeout_s=put_timeout_s, batch_size=batch_size)
        self.dsn = dsn
        self.table_prefix = table_prefix
        self.connect_timeout_s = connect_timeout_s
        decisions, outcomes = _tables(table_prefix)
        self._insert_decision = sql.SQL(
            "INSERT INTO {} (event_id, ts, tenant, policy_version, chosen, probability, payload)"
            " VALUES (%s, to_timestamp(%s), %s, %s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING"
        ).format(decisions)
        self._insert_outcome = sql.SQL(
            "INSERT INTO {} (event_id, kind, ts, payload) VALUES (%s, %s, to_timestamp(%s), %s)"
        ).format(outcomes)
        self._conn: psycopg.Connection | None = self._connect()
        create_tables(self._conn, table_prefix)
        self._start()

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, connect_timeout=self.connect_timeout_s, autocommit=True)

    # ---- writer thread -------------------------------------------------------------------
    def _write_batch(self, events: list[Emitted]) -> None:
        decision_rows: list[tuple[Any, ...]] = []
        outcome_rows: list[tuple[Any, ...]] = []
        for emitted in events:
            # the full record (float64 values as they are), validated
            event = emitted.to_event() if isinstance(emitted, DecisionRecord) else emitted
            record = Jsonb(event_to_record(event))
            if isinstance(event, DecisionEvent):
                decision_rows.append(
                    (
                        event.event_id,
                        event.timestamp,
                        event.tenant,
                        event.policy_version,
                        event.chosen_model,
                        event.chosen_probability,
                        record,
                    )
                )
            else:
                outcome_rows.append((event.event_id, event.kind, event.timestamp, record))
        try:
            self._insert(decision_rows, outcome_rows)
        except psycopg.OperationalError:
            # a dropped connection (server restart, idle timeout): one retry on a fresh one
            logger.warning("event log: PostgreSQL write failed, reconnecting", exc_info=True)
            self._reconnect()
            self._insert(decision_rows, outcome_rows)

    def _insert(
        self, decision_rows: list[tuple[Any, ...]], outcome_rows: list[tuple[Any, ...]]
    ) -> None:
        assert self._conn is not None
        with self._conn.transaction(), self._conn.cursor() as cur:
            if decision_rows:
                cur.executemany(self._insert_decision, decision_rows)
            if outcome_rows:
                cur.executemany(self._insert_outcome, outcome_rows)

    def _reconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = self._connect()

    def _close_resources(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def read_events_pg(
    dsn: str, table_prefix: str = "polyroute", since: float | datetime | None = None
) -> Iterator[Event]:
    """Yield the events in ``<table_prefix>_*`` ordered by timestamp (decisions first on ties).

    Parameters
    ----------
    since : float (unix seconds) or datetime, optional
        Only events with a timestamp at or after it.
    """
    decisions, outcomes = _tables(table_prefix)
    if isinstance(since, datetime):
        since = since.timestamp()
    # the union keeps one ordered stream; ``rank`` puts a decision before its same-instant outcome
    query = sql.SQL(
        "SELECT payload FROM ("
        " SELECT payload, ts, 0 AS rank, 0::bigint AS seq FROM {decisions}"
        "  WHERE %(since)s::double precision IS NULL OR ts >= to_timestamp(%(since)s)"
        " UNION ALL"
        " SELECT payload, ts, 1 AS rank, seq FROM {outcomes}"
        "  WHERE %(since)s::double precision IS NULL OR ts >= to_timestamp(%(since)s)"
        ") AS events ORDER BY ts, rank, seq"
    ).format(decisions=decisions, outcomes=outcomes)
    with psycopg.connect(dsn) as conn, conn.cursor(name="polyroute_read_events") as cur:
        # a named (server-side) cursor streams rows instead of loading the whole log
        cur.execute(query, {"since": since})
        for (payload,) in cur:
            yield event_from_record(payload)
