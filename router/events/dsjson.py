"""Export logged decisions as VW Decision Service JSON (``vw --cb_explore_adf --dsjson``).

One line per learnable decision, in the layout of VW's own test data
(``test/train-sets/decisionservice.json``) and DSJSON parser tests
(``vowpalwabbit/json_parser/tests/dsjson_parser_test.cc``, ``ParseDsjsonCb``)::

    {"_label_cost": -reward, "_label_probability": p_chosen,
     "_label_Action": k + 1, "_labelIndex": k,
     "Timestamp": "...Z", "Version": "1", "EventId": "<event id>",
     "a": [k + 1, <the other actions, 1-based, in eligible order>],
     "c": {"c": {"0": x_0, "1": x_1, ...},
           "_multi": [{"a": {"m=<model>": 1, "log_usd_in": ..., ...}}, ...]},
     "p": [p_chosen, <the others' probabilities, aligned with "a">]}

- ``_labelIndex`` (0-based) selects the ``_multi`` entry that gets the CB label
  ``_label_Action:_label_cost:_label_probability``; VW learns costs, hence ``-reward``.
- ``a`` is the decision service's ranking: 1-based action ids, the chosen one first; ``p`` is
  aligned with ``a`` (``p[0]`` is the chosen probability), as in ``decisionservice.json``.
- Namespaces mirror the text lines of :mod:`router.policy.vw_text`: the shared
  request features in ``c`` (feature names are indices), each model in ``a`` with its identity
  ``m=<model>`` and its numeric action features, so ``--interactions ca`` has the same meaning.

Decisions a rule overrode (``learnable`` False, probability 1) are skipped and counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.actions import ACTION_FEATURES
from features.errors import DatasetError
from router.events.join import JoinedDecision, join_decisions
from router.events.models import DecisionEvent, Event

_UNSAFE = re.compile(r"[\s|:]")


def _action_namespace(model: str, features: list[float]) -> dict[str, float]:
    names = ACTION_FEATURES if len(features) == len(ACTION_FEATURES) else None
    namespace: dict[str, float] = {f"m={_UNSAFE.sub('_', model)}": 1.0}
    for i, value in enumerate(features):
        namespace[names[i] if names else f"f{i}"] = value
    return namespace


def to_dsjson(decision: DecisionEvent, outcome_reward: float) -> str:
    """One DSJSON line (no trailing newline) for ``decision`` observed with ``outcome_reward``.

    Raises
    ------
    DatasetError
        If the decision is not learnable (a rule overrode the policy) or the reward is not
        finite.
    """
    if not decision.learnable:
        raise DatasetError(
            f"override_reason: decision {decision.event_id} was overridden "
            f"({decision.override_reason}); it is not learnable"
        )
    if outcome_reward != outcome_reward or abs(outcome_reward) == float("inf"):
        raise DatasetError(f"outcome_reward: must be finite, got {outcome_reward}")
    k = decision.chosen_index
    order = [k] + [i for i in range(len(decision.eligible_models)) if i != k]
    stamp = datetime.fromtimestamp(decision.timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    line: dict[str, Any] = {
        "_label_cost": -float(outcome_reward),
        "_label_probability": decision.chosen_probability,
        "_label_Action": k + 1,
        "_labelIndex": k,
        "Timestamp": stamp,
        "Version": "1",
        "EventId": decision.event_id,
        "a": [i + 1 for i in order],
        "c": {
            "c": {str(i): v for i, v in enumerate(decision.context_features)},
            "_multi": [
                {"a": _action_namespace(model, features)}
                for model, features in zip(
                    decision.eligible_models, decision.action_features, strict=True
                )
            ],
        },
        "p": [decision.probabilities[i] for i in order],
    }
    return json.dumps(line, separators=(",", ":"))


@dataclass(frozen=True)
class DSJSONExportStats:
    """What :func:`export_dsjson` wrote and skipped."""

    written: int
    skipped_not_learnable: int
    skipped_no_reward: int


RewardFn = Callable[[JoinedDecision], float | None]


def export_dsjson(
    events: Iterable[Event],
    out_path: str | Path,
    reward_fn: RewardFn | None = None,
    join_window_s: float = 3600.0,
    default_quality: float = 0.0,
) -> DSJSONExportStats:
    """Join ``events`` (:func:`router.events.join.join_decisions`) and write DSJSON lines.

    Parameters
    ----------
    reward_fn : callable, optional
        Reward of a joined decision, or None to skip it (counted in ``skipped_no_reward``).
        Default: :meth:`JoinedDecision.reward` (the decision's reward spec; None without an
        outcome).
    """
    reward_of: RewardFn = reward_fn or JoinedDecision.reward
    written = not_learnable = no_reward = 0
    joined = join_decisions(events, join_window_s, default_quality)
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        for row in joined.rows:
            if not row.decision.learnable:
                not_learnable += 1
                continue
            reward = reward_of(row)
            if reward is None:
                no_reward += 1
                continue
            out.write(to_dsjson(row.decision, reward) + "\n")
            written += 1
    return DSJSONExportStats(written, not_learnable, no_reward)
