"""Test doubles shared by the gateway tests: an in-memory event sink and an OpenAI answer."""

from __future__ import annotations

from typing import Any

from router.events.models import DecisionRecord, Emitted, Event

USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}


class Clock:
    """A clock the test moves by hand (``clock.now += seconds``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ListSink:
    """Collects events in memory (the file and PostgreSQL sinks are tested on their own); a
    decision the gateway emits as a ``DecisionRecord`` is kept as its validated
    ``DecisionEvent``, so every emitted decision passes the full model's checks."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Emitted) -> None:
        self.events.append(event.to_event() if isinstance(event, DecisionRecord) else event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.events if e.kind == kind]


def completion(model: str, text: str) -> dict[str, Any]:
    """A ``chat.completion`` body from ``model`` saying ``text``, with usage."""
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
        ],
        "usage": USAGE,
    }
