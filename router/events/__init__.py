"""Decision / outcome / feedback events, their sinks (files by default, PostgreSQL shared), the
join into one row per decision, and the VW DSJSON export (the event path of
docs/architecture.md)."""

from features.errors import EventLogError, EventLogFullError
from router.events.dsjson import DSJSONExportStats, export_dsjson, to_dsjson
from router.events.file_sink import FileEventSink, read_events
from router.events.join import JoinedDecision, join_decisions, join_events
from router.events.models import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    OutcomeEvent,
    RewardSpecRecord,
    event_from_record,
    event_to_record,
    new_event_id,
)
from router.events.writer import BackgroundEventWriter

__all__ = [
    "BackgroundEventWriter",
    "DSJSONExportStats",
    "DecisionEvent",
    "Event",
    "EventLogError",
    "EventLogFullError",
    "FeedbackEvent",
    "FileEventSink",
    "JoinedDecision",
    "OutcomeEvent",
    "RewardSpecRecord",
    "event_from_record",
    "event_to_record",
    "export_dsjson",
    "join_decisions",
    "join_events",
    "new_event_id",
    "read_events",
    "to_dsjson",
]
