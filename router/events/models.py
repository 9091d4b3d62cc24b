"""Decision, outcome and feedback events, as frozen pydantic models.

A decision event is written for every routed request before the response returns; its outcome
(cost, latency, tokens, error) follows when the upstream call ends, and quality feedback may
arrive much later through ``POST /v1/feedback``. All three share the decision's ``event_id``.

Records on disk and in PostgreSQL are ``{"kind": "decision" | "outcome" | "feedback", ...}``
dictionaries (:func:`event_to_record`, :func:`event_from_record`).

Invariants checked here, with messages naming the field:

- ``probabilities`` has one entry per eligible model, each in [0, 1], summing to 1;
- ``chosen_model == eligible_models[chosen_index]`` and
  ``chosen_probability == probabilities[chosen_index] > 0``;
- ``override_reason`` set (a rule overrode the policy) means the logging distribution was
  deterministic: ``chosen_probability == 1`` and ``learnable`` is False (such decisions are
  kept for audit but excluded from learning and off-policy evaluation).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from features.errors import DatasetError

PROBABILITY_TOLERANCE = 1e-6


def new_event_id() -> str:
    """A fresh event id: uuid4 as 32 hex characters."""
    return uuid.uuid4().hex


class RewardSpecRecord(BaseModel):
    """The reward weights in force at decision time (mirrors ``router.policy.base.RewardSpec``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    w_cost: float = Field(default=0.0, ge=0)
    w_latency: float = Field(default=0.0, ge=0)
    cost_scale: float = Field(default=1.0, gt=0)
    latency_scale: float = Field(default=1000.0, gt=0)


class _Event(BaseModel):
    # strict about unknown keys so a typo in a producer is caught rather than silently dropped
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: ClassVar[str]

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=128)
    timestamp: float = Field(default_factory=time.time, ge=0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record including ``kind``."""
        return event_to_record(self)


class DecisionEvent(_Event):
    """One routing decision.

    Attributes
    ----------
    eligible_models : list of str, length K
        The models the policy chose among, in the order the policy saw them.
    action_features : list of list of float, shape (K, n_action_features)
    probabilities : list of float, length K
        The full logging pmf over ``eligible_models``.
    context_features : list of float, shape (n_features,)
    prompt : str or None
        Raw prompt text, only when the config allows logging it.
    """

    kind: ClassVar[str] = "decision"

    tenant: str
    profile: str = "default"
    policy_version: str
    feature_version: str
    reward_spec: RewardSpecRecord = RewardSpecRecord()
    reward_spec_version: str = "1"
    eligible_models: list[str] = Field(min_length=1)
    action_features: list[list[float]]
    probabilities: list[float]
    chosen_model: str
    chosen_index: int = Field(ge=0)
    chosen_probability: float = Field(gt=0, le=1)
    override_reason: str | None = None
    context_features: list[float]
    prompt: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: Any) -> Any:
        # ``learnable`` is serialised for readers of the raw logs but derived, not an input
        if isinstance(data, dict) and "learnable" in data:
            data = dict(data)
            learnable = data.pop("learnable")
            if learnable != (data.get("override_reason") is None):
                raise ValueError("learnable: must be False exactly when override_reason is set")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DecisionEvent:
        k = len(self.eligible_models)
        if len(set(self.eligible_models)) != k:
            raise ValueError("eligible_models: duplicate model names")
        if len(self.probabilities) != k:
            raise ValueError(f"probabilities: expected {k} entries (one per eligible model)")
        if any(not 0.0 <= p <= 1.0 for p in self.probabilities):
            raise ValueError("probabilities: every entry must be in [0, 1]")
        if abs(math.fsum(self.probabilities) - 1.0) > 1e-4:
            raise ValueError(f"probabilities: must sum to 1, got {math.fsum(self.probabilities)}")
        if len(self.action_features) != k:
            raise ValueError(f"action_features: expected {k} rows (one per eligible model)")
        if len({len(row) for row in self.action_features}) > 1:
            raise ValueError("action_features: rows must all have the same length")
        if self.chosen_index >= k:
            raise ValueError(f"chosen_index: must be < {k} (number of eligible models)")
        if self.eligible_models[self.chosen_index] != self.chosen_model:
            raise ValueError("chosen_model: must equal eligible_models[chosen_index]")
        if abs(self.probabilities[self.chosen_index] - self.chosen_probability) > 1e-6:
            raise ValueError("chosen_probability: must equal probabilities[chosen_index]")
        if self.override_reason is not None and self.chosen_probability != 1.0:
            raise ValueError("chosen_probability: must be 1 when override_reason is set")
        return self

    @computed_field  # type: ignore[prop-decorator]
    @property
    def learnable(self) -> bool:
        """False when a rule overrode the policy (the pmf was not the policy's)."""
        return self.override_reason is None


class Attempt(BaseModel):
    """One upstream call of a request that needed more than one (``OutcomeEvent.attempts``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    error_class: str | None = None  # None: this call answered
    latency_ms: float = Field(ge=0)


class OutcomeEvent(_Event):
    """What happened when the chosen (or fallback) model served the request.

    ``cost_usd``, tokens and ``latency_ms`` are the request's (what the caller waited and paid:
    every attempt). ``attempts`` lists the calls in order when there was more than one (a retry
    on another instance, a fallback to another model); the first is the chosen model's, so a
    learner charges its failure to the decision that chose it.
    """

    kind: ClassVar[str] = "outcome"

    cost_usd: float = Field(ge=0)
    latency_ms: float = Field(ge=0)
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    error_class: str | None = None
    fallback_used: bool = False
    quality: float | None = None
    attempts: list[Attempt] | None = None


class FeedbackEvent(_Event):
    """Delayed quality from ``POST /v1/feedback``; ``event_id`` is the decision's id."""

    kind: ClassVar[str] = "feedback"

    quality: float


Event = DecisionEvent | OutcomeEvent | FeedbackEvent
EventKind = Literal["decision", "outcome", "feedback"]
_KINDS: dict[str, type[DecisionEvent] | type[OutcomeEvent] | type[FeedbackEvent]] = {
    "decision": DecisionEvent,
    "outcome": OutcomeEvent,
    "feedback": FeedbackEvent,
}


def event_to_record(event: _Event) -> dict[str, Any]:
    """``{"kind": ..., **fields}``, JSON-serialisable."""
    return {"kind": event.kind, **event.model_dump(mode="json")}


def event_to_json(event: _Event) -> bytes:
    """:func:`event_to_record` as compact UTF-8 JSON, by pydantic-core's serializer (much
    faster than ``json.dumps(event_to_record(event))``). The same keys
    in the same order and the same values; only number spelling may differ (``2.24e-6`` where
    ``json.dumps`` writes ``2.24e-06``) and non-ASCII text is written as UTF-8, not escaped."""
    body = event.__pydantic_serializer__.to_json(event)
    return b'{"kind":"' + event.kind.encode() + b'",' + body[1:]


def event_from_record(record: dict[str, Any]) -> Event:
    """Inverse of :func:`event_to_record`.

    Raises
    ------
    DatasetError
        When ``kind`` is missing or unknown.
    pydantic.ValidationError
        When a field is invalid (the error names the field).
    """
    data = dict(record)
    kind = data.pop("kind", None)
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DatasetError(f"kind: expected one of {sorted(_KINDS)}, got {kind!r}")
    return cls.model_validate(data)
