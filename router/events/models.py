"""Decision, outcome and feedback events, as frozen pydantic models.

A decision event is written for every routed request before the response returns; its outcome
(cost, latency, tokens, error) follows when the upstream call ends, and quality feedback may
arrive much later through ``POST /v1/feedback``. All three share the decision's ``event_id``.

Records in PostgreSQL (and in files of format 1) are ``{"kind": "decision" | "outcome" |
"feedback", ...}`` dictionaries (:func:`event_to_record`, :func:`event_from_record`); the file
sink writes decisions in a compact form (:mod:`router.events.codec`) that reads back as the same
records.

The gateway emits a decision as a :class:`DecisionRecord` (the decision's own numpy arrays,
checked by the same invariants with a few numpy operations, no per-value Python objects); a sink
serialises it on its writer thread, and :meth:`DecisionRecord.to_event` gives the validated
:class:`DecisionEvent` wherever a full record is wanted (PostgreSQL, tests).

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
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, computed_field, model_validator

from features.errors import DatasetError, InvalidEventError

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


@dataclass(frozen=True, slots=True, eq=False)
class DecisionRecord:
    """A decision as the gateway emits it: the fields of :class:`DecisionEvent` with the numeric
    parts as the decision's own float64 arrays (``probabilities`` (K,), ``action_features``
    (K, n_action_features), ``context_features`` (n_features,)).

    Construction checks the invariants of :class:`DecisionEvent` (module docstring) with numpy
    and raises :class:`~features.errors.InvalidEventError` (a ValueError) naming the field;
    :meth:`to_event` validates the full model.
    """

    kind: ClassVar[str] = "decision"

    event_id: str
    tenant: str
    profile: str
    policy_version: str
    feature_version: str
    reward_spec: RewardSpecRecord
    eligible_models: list[str]
    action_features: np.ndarray
    probabilities: np.ndarray
    chosen_index: int
    chosen_probability: float
    context_features: np.ndarray
    override_reason: str | None = None
    prompt: str | None = None
    reward_spec_version: str = "1"
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        k = len(self.eligible_models)
        pmf, actions, context = self.probabilities, self.action_features, self.context_features
        if not 0 < len(self.event_id) <= 128:
            raise InvalidEventError("event_id: must have 1 to 128 characters")
        if k == 0 or len(set(self.eligible_models)) != k:
            raise InvalidEventError("eligible_models: must be non-empty, without duplicate names")
        if pmf.shape != (k,):
            raise InvalidEventError(f"probabilities: expected {k} entries (one per eligible model)")
        total = math.fsum(pmf.tolist())
        # written so that NaN fails every comparison
        if not (pmf.min() >= 0.0 and pmf.max() <= 1.0 and abs(total - 1.0) <= 1e-4):
            raise InvalidEventError(
                "probabilities: every entry must be in [0, 1] and they must sum to 1"
            )
        if actions.ndim != 2 or actions.shape[0] != k or not np.isfinite(actions).all():
            raise InvalidEventError(f"action_features: expected {k} rows of finite numbers")
        if context.ndim != 1 or not np.isfinite(context).all():
            raise InvalidEventError("context_features: expected one row of finite numbers")
        if not 0 <= self.chosen_index < k:
            raise InvalidEventError(f"chosen_index: must be in [0, {k})")
        p = self.chosen_probability
        if not 0.0 < p <= 1.0 or abs(float(pmf[self.chosen_index]) - p) > 1e-6:
            raise InvalidEventError("chosen_probability: must be probabilities[chosen_index], > 0")
        if self.override_reason is not None and p != 1.0:
            raise InvalidEventError("chosen_probability: must be 1 when override_reason is set")
        if not (math.isfinite(self.timestamp) and self.timestamp >= 0):
            raise InvalidEventError("timestamp: must be a finite number >= 0")

    @property
    def chosen_model(self) -> str:
        return self.eligible_models[self.chosen_index]

    @property
    def learnable(self) -> bool:
        return self.override_reason is None

    def to_event(self) -> DecisionEvent:
        """The validated :class:`DecisionEvent` (float64 values as they are)."""
        return DecisionEvent(
            event_id=self.event_id,
            timestamp=self.timestamp,
            tenant=self.tenant,
            profile=self.profile,
            policy_version=self.policy_version,
            feature_version=self.feature_version,
            reward_spec=self.reward_spec,
            reward_spec_version=self.reward_spec_version,
            eligible_models=list(self.eligible_models),
            action_features=self.action_features.tolist(),
            probabilities=self.probabilities.tolist(),
            chosen_model=self.chosen_model,
            chosen_index=self.chosen_index,
            chosen_probability=self.chosen_probability,
            override_reason=self.override_reason,
            context_features=self.context_features.tolist(),
            prompt=self.prompt,
        )

    def to_dict(self) -> dict[str, Any]:
        """The record of :meth:`to_event`."""
        return event_to_record(self.to_event())


Event = DecisionEvent | OutcomeEvent | FeedbackEvent
Emitted = Event | DecisionRecord  # what a sink accepts
EventKind = Literal["decision", "outcome", "feedback"]
_KINDS: dict[str, type[DecisionEvent] | type[OutcomeEvent] | type[FeedbackEvent]] = {
    "decision": DecisionEvent,
    "outcome": OutcomeEvent,
    "feedback": FeedbackEvent,
}


def event_to_record(event: _Event) -> dict[str, Any]:
    """``{"kind": ..., **fields}``, JSON-serialisable."""
    return {"kind": event.kind, **event.model_dump(mode="json")}


def event_to_json(event: _Event, exclude_defaults: bool = False) -> bytes:
    """:func:`event_to_record` as compact UTF-8 JSON, by pydantic-core's serializer (much
    faster than ``json.dumps(event_to_record(event))``). The same keys
    in the same order and the same values; only number spelling may differ (``2.24e-6`` where
    ``json.dumps`` writes ``2.24e-06``) and non-ASCII text is written as UTF-8, not escaped.
    ``exclude_defaults``: leave out the fields that hold their default (they read back the
    same)."""
    body = event.__pydantic_serializer__.to_json(event, exclude_defaults=exclude_defaults)
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
