"""Join decisions with their outcome and quality feedback into one row per decision.

Rules (every decision yields exactly one row; nothing is silently dropped):

- **Window.** An outcome or feedback counts only if its timestamp is at most ``join_window_s``
  seconds after the decision's. Later ones are ignored and counted in ``attrs["n_late"]``.
- **Outcome.** The first outcome in the window is the decision's (a repeated outcome for the
  same id is ignored with a warning). Without one, cost/latency/tokens are NaN and
  ``has_outcome`` is False.
- **Quality.** Quality observations are the outcome's ``quality`` (when set) and every
  feedback event in the window. **The latest observation (by timestamp; on ties, the later
  one in the input) wins**, and ``n_feedback`` counts all of them, so a corrected rating
  replaces the first and repeated ratings are visible. With no observation,
  ``quality = default_quality`` and ``quality_imputed = True``.
- **Orphans.** Outcomes or feedback whose decision is absent are counted in
  ``attrs["n_orphans"]`` and logged, not joined.

The reward of a row is ``quality - w_cost * cost_usd / cost_scale - w_latency * latency_ms /
latency_scale`` with the decision's own reward spec (docs/metrics.md), NaN without an outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from features.errors import ConfigError
from router.events.models import DecisionEvent, Event, FeedbackEvent, OutcomeEvent

if TYPE_CHECKING:  # pandas is imported by the functions that build frames, not by serving
    import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JoinedDecision:
    """One decision with what the join window found for it."""

    decision: DecisionEvent
    outcome: OutcomeEvent | None
    quality: float
    quality_imputed: bool
    n_feedback: int

    def reward(self) -> float | None:
        """Reward under the decision's reward spec; None without an outcome."""
        if self.outcome is None:
            return None
        spec = self.decision.reward_spec
        return (
            self.quality
            - spec.w_cost * self.outcome.cost_usd / spec.cost_scale
            - spec.w_latency * self.outcome.latency_ms / spec.latency_scale
        )


@dataclass(frozen=True)
class JoinResult:
    """The joined decisions plus counts of what could not be joined."""

    rows: list[JoinedDecision]
    n_late: int
    n_orphans: int


def join_decisions(
    events: Iterable[Event], join_window_s: float = 3600.0, default_quality: float = 0.0
) -> JoinResult:
    """Join ``events`` (any order) by event id; see the module docstring for the rules."""
    if join_window_s < 0:
        raise ConfigError(f"join_window_s must be >= 0, got {join_window_s}")
    decisions: dict[str, DecisionEvent] = {}
    followers: list[tuple[int, OutcomeEvent | FeedbackEvent]] = []
    for position, event in enumerate(events):
        if isinstance(event, DecisionEvent):
            if event.event_id in decisions:
                logger.warning("duplicate decision %s ignored", event.event_id)
                continue
            decisions[event.event_id] = event
        else:
            followers.append((position, event))

    outcomes: dict[str, OutcomeEvent] = {}
    # (timestamp, input position, quality): max() picks the latest, ties to the later input
    qualities: dict[str, list[tuple[float, int, float]]] = {}
    n_late = n_orphans = 0
    for position, event in sorted(followers, key=lambda item: (item[1].timestamp, item[0])):
        decision = decisions.get(event.event_id)
        if decision is None:
            n_orphans += 1
            continue
        if event.timestamp > decision.timestamp + join_window_s:
            n_late += 1
            continue
        if isinstance(event, OutcomeEvent):
            if event.event_id in outcomes:
                logger.warning("second outcome for %s ignored", event.event_id)
                continue
            outcomes[event.event_id] = event
        if event.quality is not None:
            qualities.setdefault(event.event_id, []).append(
                (event.timestamp, position, event.quality)
            )
    if n_orphans:
        logger.warning("%d outcome/feedback events without a decision", n_orphans)

    rows = []
    for event_id, decision in decisions.items():
        observed = qualities.get(event_id, [])
        rows.append(
            JoinedDecision(
                decision=decision,
                outcome=outcomes.get(event_id),
                quality=max(observed)[2] if observed else default_quality,
                quality_imputed=not observed,
                n_feedback=len(observed),
            )
        )
    return JoinResult(rows=rows, n_late=n_late, n_orphans=n_orphans)


def join_events(
    events: Iterable[Event], join_window_s: float = 3600.0, default_quality: float = 0.0
) -> pd.DataFrame:
    """One row per decision, in input order, with its outcome and latest quality.

    Returns
    -------
    DataFrame
        Decision fields (list-valued columns hold the pmf and features), outcome fields
        (NaN / None without an outcome), ``has_outcome``, ``quality``, ``quality_imputed``,
        ``n_feedback`` and ``reward``. ``attrs`` holds ``n_late`` and ``n_orphans``.
    """
    import pandas as pd

    result = join_decisions(events, join_window_s, default_quality)
    records = []
    for row in result.rows:
        d, o = row.decision, row.outcome
        reward = row.reward()
        records.append(
            {
                "event_id": d.event_id,
                "timestamp": d.timestamp,
                "tenant": d.tenant,
                "profile": d.profile,
                "policy_version": d.policy_version,
                "feature_version": d.feature_version,
                "reward_spec_version": d.reward_spec_version,
                "eligible_models": d.eligible_models,
                "probabilities": d.probabilities,
                "chosen_model": d.chosen_model,
                "chosen_index": d.chosen_index,
                "chosen_probability": d.chosen_probability,
                "override_reason": d.override_reason,
                "learnable": d.learnable,
                "context_features": d.context_features,
                "action_features": d.action_features,
                "has_outcome": o is not None,
                "cost_usd": o.cost_usd if o else float("nan"),
                "latency_ms": o.latency_ms if o else float("nan"),
                "input_tokens": o.input_tokens if o else float("nan"),
                "output_tokens": o.output_tokens if o else float("nan"),
                "error_class": o.error_class if o else None,
                "fallback_used": o.fallback_used if o else None,
                "chosen_error_class": o.attempts[0].error_class if o and o.attempts else None,
                "chosen_latency_ms": o.attempts[0].latency_ms if o and o.attempts else float("nan"),
                "quality": row.quality,
                "quality_imputed": row.quality_imputed,
                "n_feedback": row.n_feedback,
                "reward": float("nan") if reward is None else reward,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=_COLUMNS)
    frame.attrs["n_late"] = result.n_late
    frame.attrs["n_orphans"] = result.n_orphans
    return frame


def unrated_horizon(joined: pd.DataFrame, join_window_s: float, skip_unrated: bool) -> float:
    """The decision time after which a decision without feedback is left out as pending: the
    join window before the log's last decision, or -inf with ``skip_unrated`` (every unrated
    decision is left out). Training and evaluation use the same horizon."""
    if skip_unrated or joined.empty:
        return float("-inf")
    return float(joined["timestamp"].max()) - join_window_s


def charge_failures(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The joined rows as outcomes *of the chosen model*, for learning and evaluation.

    When the chosen model failed and a fallback answered, the row's outcome (and any rating) is
    the fallback's; the decision that chose the failing model is charged its failure instead:
    quality 0 (as any failed call), no cost, the failed call's latency (``attempts[0]`` of the
    outcome). Rows with a fallback but no chain of attempts (logs from before it was recorded)
    cannot be attributed: they are dropped and counted. Returns the rows and that count.
    """
    if "chosen_error_class" not in frame.columns:
        frame = frame.assign(chosen_error_class=None, chosen_latency_ms=float("nan"))
    fallback = frame["fallback_used"].eq(True).to_numpy()
    if not fallback.any():
        return frame, 0
    chained = frame["chosen_error_class"].notna().to_numpy()
    unattributed = fallback & ~chained
    charged = fallback & chained
    frame = frame.copy()
    if charged.any():
        rows = frame.index[charged]
        frame.loc[rows, "quality"] = 0.0
        frame.loc[rows, "quality_imputed"] = False
        frame.loc[rows, "cost_usd"] = 0.0
        frame.loc[rows, "latency_ms"] = frame.loc[rows, "chosen_latency_ms"]
        frame.loc[rows, "error_class"] = frame.loc[rows, "chosen_error_class"]
    return frame.loc[~unattributed], int(unattributed.sum())


_COLUMNS = [
    "event_id",
    "timestamp",
    "tenant",
    "profile",
    "policy_version",
    "feature_version",
    "reward_spec_version",
    "eligible_models",
    "probabilities",
    "chosen_model",
    "chosen_index",
    "chosen_probability",
    "override_reason",
    "learnable",
    "context_features",
    "action_features",
    "has_outcome",
    "cost_usd",
    "latency_ms",
    "input_tokens",
    "output_tokens",
    "error_class",
    "fallback_used",
    "chosen_error_class",
    "chosen_latency_ms",
    "quality",
    "quality_imputed",
    "n_feedback",
    "reward",
]
