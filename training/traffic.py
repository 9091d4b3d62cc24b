"""Gateway traffic simulated offline on a full-information routing dataset.

:func:`simulate_logs` writes the events the gateway would write if ``bundle`` routed the
dataset's prompts and the replay backends answered them: per request a decision event (the
policy's pmf over the models with a recorded outcome, the sampled model and its probability),
an outcome event (the recorded cost, latency and tokens of that model on that prompt) and, for a
``feedback_share`` of them, a feedback event with the recorded score. It is the fast path for
tests, notebooks and experiments; ``polyroute demo`` produces the same kind of log through the
real service (HTTP, OpenAI SDK, replay backends).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from features.errors import ConfigError, DatasetError
from router.bundle import PolicyBundle
from router.events.models import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    OutcomeEvent,
    RewardSpecRecord,
)
from router.pipeline import sample_index
from training.datasets import RoutingDataset


def simulate_events(
    bundle: PolicyBundle,
    data: RoutingDataset,
    n: int,
    *,
    seed: int = 0,
    feedback_share: float = 1.0,
    start_time: float = 1.7e9,
    interval_s: float = 1.0,
    tenant: str = "simulated",
    models: list[str] | None = None,
    true_quality: dict[str, float] | None = None,
) -> Iterator[Event]:
    """Yield decision, outcome and feedback events of ``n`` requests drawn from ``data``.

    Prompts are drawn uniformly with replacement; decisions are ``interval_s`` apart from
    ``start_time``; the feedback (when sent) follows its outcome by one second. ``models``
    restricts the eligible models (as a routing profile's allowed list does). When given,
    ``true_quality`` receives each decision's recorded score (sent as feedback or not).
    """
    if not 0.0 <= feedback_share <= 1.0:
        raise ConfigError(f"feedback_share must be in [0, 1], got {feedback_share}")
    rng = np.random.default_rng(seed)
    catalogue = bundle.catalogue
    unknown = [m for m in data.model_names if m not in catalogue.index]
    if unknown:
        raise DatasetError(f"models {unknown} of the dataset are not in the bundle's catalogue")
    allowed = np.ones(len(data.model_names), dtype=bool)
    if models is not None:
        missing = [m for m in models if m not in data.model_names]
        if missing:
            raise DatasetError(f"models {missing} are not in the dataset")
        allowed = np.isin(data.model_names, models)
    texts = data.prompts["prompt"].tolist()
    rows = rng.integers(0, data.n_prompts, size=n)
    contexts = bundle.featurizer.transform([texts[i] for i in np.unique(rows)])
    context_of = dict(zip(np.unique(rows).tolist(), contexts, strict=True))
    spec = RewardSpecRecord(**bundle.reward.__dict__)
    feature_version = bundle.featurizer.version_
    policy_version = bundle.version
    for t, i in enumerate(rows.tolist()):
        context = context_of[i]
        columns = np.flatnonzero(data.available[i] & allowed)
        if len(columns) == 0:
            continue
        names = [data.model_names[j] for j in columns]
        tokens_in = float(np.nanmax(data.input_tokens[i, columns]))
        actions = catalogue.actions(context, tokens_in, names)
        pmf = bundle.policy.predict_one(context, actions)
        k = sample_index(pmf, rng)  # as the gateway samples
        j = columns[k]
        now = start_time + t * interval_s
        decision = DecisionEvent(
            timestamp=now,
            tenant=tenant,
            policy_version=policy_version,
            feature_version=feature_version,
            reward_spec=spec,
            eligible_models=names,
            action_features=[a.features.tolist() for a in actions],
            probabilities=pmf.tolist(),
            chosen_model=names[k],
            chosen_index=k,
            chosen_probability=float(pmf[k]),
            context_features=context.tolist(),
        )
        if true_quality is not None:
            true_quality[decision.event_id] = float(data.quality[i, j])
        yield decision
        yield OutcomeEvent(
            event_id=decision.event_id,
            timestamp=now + float(data.latency[i, j]) / 1000.0,
            cost_usd=float(data.cost[i, j]),
            latency_ms=float(data.latency[i, j]),
            input_tokens=int(data.input_tokens[i, j]),
            output_tokens=int(data.output_tokens[i, j]),
        )
        if rng.random() < feedback_share:
            yield FeedbackEvent(
                event_id=decision.event_id,
                timestamp=now + float(data.latency[i, j]) / 1000.0 + 1.0,
                quality=float(data.quality[i, j]),
            )
