"""The PostgreSQL event sink against the real server: skipped without one, failed without one
when POLYROUTE_REQUIRE_SERVICES=1 (CI)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

# pytest puts tests/ on sys.path (rootdir conftest, no package), so the sibling module imports
from services import unavailable
from test_events import decision, outcome

from features.errors import ConfigError
from router.events import EventLogFullError, FeedbackEvent, join_events
from router.events.postgres_sink import PostgresEventSink, read_events_pg

DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A table prefix unique to this test, its tables dropped afterwards."""
    try:
        psycopg.connect(DSN, connect_timeout=2).close()
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    name = f"test_events_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(DSN, autocommit=True) as conn:
        for table in ("decisions", "outcomes"):
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(f"{name}_{table}"))
            )


def test_round_trip_and_join(prefix: str) -> None:
    eid = decision(0).event_id
    t0 = decision(0).timestamp
    sent: list[Any] = [
        decision(0),
        decision(1, override_reason="pinned", probabilities=[0, 1, 0], chosen_probability=1.0),
        outcome(0),
        FeedbackEvent(event_id=eid, timestamp=t0 + 5, quality=0.4),
        FeedbackEvent(event_id=eid, timestamp=t0 + 9, quality=0.7),
    ]
    with PostgresEventSink(DSN, table_prefix=prefix, batch_size=2) as sink:
        for event in sent:
            sink.emit(event)
    back = list(read_events_pg(DSN, prefix))
    assert sorted(back, key=lambda e: (e.event_id, e.timestamp)) == sorted(
        sent, key=lambda e: (e.event_id, e.timestamp)
    )
    assert [e.timestamp for e in back] == sorted(e.timestamp for e in back)
    row = join_events(back).set_index("event_id").loc[eid]
    assert row["quality"] == 0.7 and row["n_feedback"] == 2
    later = list(read_events_pg(DSN, prefix, since=t0 + 1.0))
    assert all(e.timestamp >= t0 + 1.0 for e in later) and len(later) == 4
    with psycopg.connect(DSN) as conn:
        typed = conn.execute(
            sql.SQL("SELECT tenant, chosen, probability FROM {} ORDER BY ts").format(
                sql.Identifier(f"{prefix}_decisions")
            )
        ).fetchall()
    assert typed == [("acme", "medium", 0.5), ("acme", "medium", 1.0)]


def test_close_loses_nothing(prefix: str) -> None:
    sink = PostgresEventSink(DSN, table_prefix=prefix, queue_size=5_000, batch_size=200)
    for i in range(2_000):
        sink.emit(decision(i))
        sink.emit(outcome(i))
    sink.close()
    back = list(read_events_pg(DSN, prefix))
    assert len(back) == 4_000
    assert len({e.event_id for e in back}) == 2_000


def test_full_queue_raises_and_loses_nothing_accepted(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = PostgresEventSink(DSN, table_prefix=prefix, queue_size=4, put_timeout_s=0.02)
    release, stalled = threading.Event(), threading.Event()
    original = sink._write_batch

    def blocked(events: list[Any]) -> None:
        stalled.set()
        release.wait(timeout=10)
        original(events)

    monkeypatch.setattr(sink, "_write_batch", blocked)
    sink.emit(decision(0))
    assert stalled.wait(timeout=5)
    accepted = [decision(0).event_id]
    with pytest.raises(EventLogFullError, match="full"):
        for i in range(1, 20):
            sink.emit(decision(i))
            accepted.append(decision(i).event_id)
    assert len(accepted) == 1 + 4
    release.set()
    sink.close()
    assert sorted(e.event_id for e in read_events_pg(DSN, prefix)) == sorted(accepted)


def test_bad_prefix_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="table_prefix"):
        list(read_events_pg(DSN, "x; DROP TABLE y"))
