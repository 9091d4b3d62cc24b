"""Retraining from the gateway's logs: join, recompute the reward, split by time, train.

``train_from_logs`` is the core of ``polyroute train``:

1. **Load** the events (a file-sink directory or a PostgreSQL DSN) from ``since`` on.
2. **Join** decisions with outcomes and feedback (:func:`router.events.join.join_events`): a
   feedback or outcome counts only within ``join_window_s`` (default 1 h) of its decision; a
   decision without quality feedback in the window gets ``default_quality`` (default 0.0, i.e.
   an unrated answer is not assumed good) and is flagged ``quality_imputed``.
3. **Select** the rows that can be learned from: the policy chose (no rule override), the
   outcome is known and is the chosen model's (no fallback), the quality is not still pending
   (a decision without feedback that is within ``join_window_s`` of the log's last decision
   may yet be rated: it is left out, not learned as unrated; a later run learns it when it falls
   after the champion's ``trained_through``, i.e. unless the log is shorter than the join
   window), and the context features come
   from the base bundle's featurizer version (the logged features are reused as they are, so
   the candidate keeps the base bundle's featurizer: no training/serving skew). Everything
   left out is counted by reason. Errors are kept: their quality is the default (no rating),
   their cost what the outcome logged. One reward spec applies to all profiles' decisions
   (the champion's, or ``--w-cost``/``--w-latency``); per-profile policies are not built.
4. **Reward** is recomputed from the raw logged components with the target reward spec (the
   profile's weights), never taken from the log: ``quality - w_cost * cost_usd / cost_scale -
   w_latency * latency_ms / latency_scale``.
5. **Split by time, then by prompt**: the earliest ``1 - holdout`` share trains, the latest
   ``holdout`` share is kept for off-policy evaluation (evaluating on the rows a policy learned
   from would flatter it), and the training side drops the decisions on prompts the held-out
   side holds, so the evaluation is on prompts the candidate never saw (``prompt_in_holdout``).
6. **Train** the VW policy, warm-started from the base bundle's policy (default) or from
   scratch, on the training rows in time order with their logged probabilities, and a LightGBM
   reward model (``training.reward_model``) on the same rows.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.errors import ConfigError, DatasetError
from router.bundle import PolicyBundle
from router.events.join import charge_failures, join_events, unrated_horizon
from router.events.models import DecisionEvent, Event
from router.policy.base import Action, Policy, RewardSpec

logger = logging.getLogger(__name__)

DEFAULT_JOIN_WINDOW_S = 3600.0
DEFAULT_QUALITY = 0.0


def parse_since(value: str | float | None, now: float | None = None) -> float | None:
    """``since`` as unix seconds: a number, an ISO 8601 time, or a duration ago (``90m``,
    ``24h``, ``7d``)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if match:
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return (now if now is not None else time.time()) - float(match.group(1)) * seconds
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise DatasetError(
            f"--since: expected unix seconds, an ISO 8601 time or a duration like 24h, got {text!r}"
        ) from exc


def load_events(
    source: str | Path, since: float | None = None, table_prefix: str = "polyroute"
) -> Iterator[Event]:
    """Events from a file-sink directory or a PostgreSQL DSN (``postgresql://...``, tables
    ``<table_prefix>_*``).

    ``since`` selects by *decision* time: decisions at or after it, with their outcomes and
    feedback (an outcome of an earlier decision is left out, not turned into an orphan).
    """
    text = str(source)
    events: Iterable[Event]
    if text.startswith(("postgresql://", "postgres://")):
        from router.events.postgres_sink import read_events_pg

        events = read_events_pg(text, table_prefix=table_prefix, since=since)
    else:
        from router.events.file_sink import event_files, read_events

        if not Path(text).is_dir():
            raise DatasetError(f"--events: {text} is not a directory of event files")
        if not event_files(text):
            raise DatasetError(f"--events: no event files (events-*.jsonl[.zst]) in {text}")
        events = read_events(text)
    if since is None:
        yield from events
        return
    # followers are kept back to the end: with several workers, a feedback can sit in a file
    # that sorts before its decision's (the join holds everything in memory anyway)
    kept: set[str] = set()
    followers: list[Event] = []
    for event in events:
        if isinstance(event, DecisionEvent):
            if event.timestamp >= since:
                kept.add(event.event_id)
                yield event
        else:
            followers.append(event)
    yield from (event for event in followers if event.event_id in kept)


@dataclass
class LoggedRows:
    """The learnable part of a joined log, with the reward recomputed."""

    frame: pd.DataFrame  # the joined rows kept, with ``reward`` recomputed under ``spec``
    spec: RewardSpec
    excluded: dict[str, int] = field(default_factory=dict)

    def split(self, holdout: float) -> tuple[LoggedRows, LoggedRows]:
        """Earliest ``1 - holdout`` share / latest ``holdout`` share, by decision time; then
        the training side drops every decision on a prompt that the held-out side also holds
        (counted as ``prompt_in_holdout``), so the held-out evaluation is on prompts this
        candidate never learned from. Traffic repeats prompts (retries, templates, popular
        questions); judging a candidate on prompts it was trained on flatters it."""
        if not 0.0 <= holdout < 1.0:
            raise ConfigError(f"holdout must be in [0, 1), got {holdout}")
        ordered = self.frame.sort_values("timestamp", kind="stable")
        cut = len(ordered) - round(holdout * len(ordered))
        times = ordered["timestamp"].to_numpy()
        while 0 < cut < len(times) and times[cut] == times[cut - 1]:
            cut += 1  # never split one instant: the next run starts after the last trained one
        train, held = ordered.iloc[:cut], ordered.iloc[cut:]
        excluded = dict(self.excluded)
        if len(held) and len(train):
            seen = prompt_keys(train).isin(set(prompt_keys(held)))
            if seen.any():
                excluded["prompt_in_holdout"] = int(seen.sum())
                train = train[~seen.to_numpy()]
        return LoggedRows(train, self.spec, excluded), LoggedRows(held, self.spec, {})


def prompt_keys(frame: pd.DataFrame) -> pd.Series:
    """One key per decision that is equal exactly when two decisions saw the same request
    features (the same prompt, for a deterministic featurizer): a hash of the logged context
    features as float32 bytes, as they were written. The prompt text itself is only logged
    when the config allows it, the features always are."""
    keys = [
        hashlib.blake2b(np.asarray(c, dtype=np.float32).tobytes(), digest_size=12).hexdigest()
        for c in frame["context_features"]
    ]
    return pd.Series(keys, index=frame.index)


def select_learnable(
    joined: pd.DataFrame,
    feature_version: str,
    spec: RewardSpec,
    models: Iterable[str],
    feedback_horizon: float | None = None,
) -> LoggedRows:
    """Keep the rows a policy can learn from and recompute their reward under ``spec``.

    ``feedback_horizon``: decisions after it whose feedback has not arrived are still inside
    their join window, so their default quality would be a guess, not the rule: they are left
    out (``pending_feedback``) rather than learned as unrated answers.
    """
    known = set(models)
    excluded: dict[str, int] = {}
    # a failed choice answered by a fallback is charged to the decision that chose it
    joined, unattributed = charge_failures(joined)
    if unattributed:
        excluded["fallback_unattributed"] = unattributed
    keep = pd.Series(True, index=joined.index)
    pending = pd.Series(False, index=joined.index)
    if feedback_horizon is not None:
        pending = joined["quality_imputed"].astype(bool) & (joined["timestamp"] > feedback_horizon)
    reasons = [
        ("rule_override", ~joined["learnable"].astype(bool)),
        ("no_outcome", ~joined["has_outcome"].astype(bool)),
        ("other_feature_version", joined["feature_version"] != feature_version),
        (
            "unknown_model",
            ~joined["eligible_models"].map(lambda names: set(names) <= known).astype(bool),
        ),
        ("pending_feedback", pending),
    ]
    for reason, mask in reasons:
        hit = keep & mask
        if hit.any():
            excluded[reason] = int(hit.sum())
        keep &= ~mask
    frame = joined.loc[keep].copy()
    frame["reward"] = spec.reward(
        frame["quality"].to_numpy(float),
        frame["cost_usd"].to_numpy(float),
        frame["latency_ms"].to_numpy(float),
    )
    if excluded:
        logger.info("left out of training: %s", excluded)
    return LoggedRows(frame, spec, excluded)


def logged_actions(bundle: PolicyBundle, row: Any) -> tuple[np.ndarray, list[Action]]:
    """The context and the eligible actions of one logged decision, as the policy saw them.

    Static action features come from the log; expected cost and latency are recomputed with the
    bundle's catalogue from the logged context and the outcome's input tokens.
    """
    context = np.asarray(row.context_features, dtype=float)
    tokens = float(row.input_tokens) if np.isfinite(row.input_tokens) else 0.0
    rebuilt = bundle.catalogue.actions(context, tokens, list(row.eligible_models))
    features = np.asarray(row.action_features, dtype=float)
    actions = [
        Action(a.model, features[i], a.expected_cost, a.expected_latency_ms)
        for i, a in enumerate(rebuilt)
    ]
    return context, actions


def copy_policy(policy: Policy, reward: RewardSpec) -> Policy:
    """An independent copy of ``policy`` (through its saved form) with ``reward`` as its spec."""
    with tempfile.TemporaryDirectory() as tmp:
        clone = Policy.load(policy.save(Path(tmp) / "policy"))
    clone.reward = reward
    return clone


def learn_from_rows(policy: Policy, bundle: PolicyBundle, rows: LoggedRows) -> int:
    """Feed the rows to ``policy.learn_one`` in time order; returns how many were learned."""
    ordered = rows.frame.sort_values("timestamp", kind="stable")
    n = 0
    for row in ordered.itertuples(index=False):
        context, actions = logged_actions(bundle, row)
        chosen: Any = row.chosen_index
        probability: Any = row.chosen_probability
        reward: Any = row.reward
        policy.learn_one(context, actions, int(chosen), float(probability), float(reward))
        n += 1
    return n


@dataclass
class TrainResult:
    """What one retraining produced, with the numbers its MLflow run records."""

    candidate: PolicyBundle
    base: PolicyBundle
    train_rows: LoggedRows
    holdout_rows: LoggedRows
    reward_model: Any  # training.reward_model.RewardModel, or None when not asked for
    joined: pd.DataFrame
    stats: dict[str, float | int | str]


def train_from_logs(
    events: Iterable[Event] | pd.DataFrame,
    base: PolicyBundle,
    *,
    reward: RewardSpec | None = None,
    warm_start: bool = True,
    holdout: float = 0.3,
    join_window_s: float = DEFAULT_JOIN_WINDOW_S,
    default_quality: float = DEFAULT_QUALITY,
    seed: int = 0,
    min_rows: int = 50,
    fit_reward_model: bool = True,
    skip_unrated: bool = False,
) -> TrainResult:
    """Train a candidate bundle from logged events (see the module docstring for each step).

    Parameters
    ----------
    base : the serving (champion) bundle: its featurizer and catalogue are kept, and its policy
        is the warm start unless ``warm_start=False``.
    events : raw events, or the frame :func:`router.events.join.join_events` made of them (to
        train several policies on one join).
    reward : the reward spec to learn (default: the base bundle's).
    fit_reward_model : False when only the policy is wanted (``reward_model`` is then None).
    skip_unrated : leave out every decision without quality feedback (``pending_feedback``),
        not only those still inside the join window, instead of learning ``default_quality``:
        right when feedback is missing at random (a share of callers rate), wrong when a
        missing rating means something (then keep the default rule).
    """
    from training.reward_model import RewardModel

    start = time.perf_counter()
    spec = reward or base.reward
    joined = (
        events
        if isinstance(events, pd.DataFrame)
        else join_events(events, join_window_s=join_window_s, default_quality=default_quality)
    )
    if joined.empty:
        raise DatasetError(
            "no decision events in the selected window: nothing to train on (the window starts "
            "at --since, or after what the warm-start champion already learned)"
        )
    # feedback can still arrive for decisions within the join window of the log's last decision
    horizon = unrated_horizon(joined, join_window_s, skip_unrated)
    rows = select_learnable(
        joined, base.featurizer.version_, spec, base.catalogue.names, feedback_horizon=horizon
    )
    if len(rows.frame) < min_rows:
        raise DatasetError(
            f"only {len(rows.frame)} learnable decisions (need >= {min_rows}); "
            f"left out: {rows.excluded}"
        )
    train_rows, holdout_rows = rows.split(holdout)
    if len(train_rows.frame) < 2 or (holdout > 0 and len(holdout_rows.frame) < 2):
        raise DatasetError(
            f"--holdout {holdout} leaves {len(train_rows.frame)} decisions to train on and "
            f"{len(holdout_rows.frame)} to evaluate on: need at least 2 on each side"
        )
    if warm_start:
        policy = copy_policy(base.policy, spec)
    else:
        # the base policy's kind and parameters, untrained
        params = {k: v for k, v in base.policy.params().items() if k != "seed"}
        policy = type(base.policy)(reward=spec, seed=seed, **params)
    n_learned = learn_from_rows(policy, base, train_rows)
    reward_model = (
        RewardModel(seed=seed).fit(train_rows.frame, base.catalogue.names)
        if fit_reward_model
        else None
    )
    provenance = {
        "trained_from": "logs",
        "base_version": base.version,
        "warm_start": warm_start,
        "n_learned": n_learned,
        "window": [
            float(train_rows.frame["timestamp"].min()),
            float(train_rows.frame["timestamp"].max()),
        ],
        # a warm start from this bundle must not learn these rows again (see retrain)
        "trained_through": float(train_rows.frame["timestamp"].max()),
        "seed": seed,
    }
    candidate = PolicyBundle(base.featurizer, base.catalogue, policy, provenance)
    stats: dict[str, float | int | str] = {
        "n_decisions": len(joined),
        "n_learnable": len(rows.frame),
        "n_train": len(train_rows.frame),
        "n_holdout": len(holdout_rows.frame),
        "n_quality_imputed": int(joined["quality_imputed"].sum()),
        "n_late": int(joined.attrs.get("n_late", 0)),
        "n_orphans": int(joined.attrs.get("n_orphans", 0)),
        "train_mean_reward": float(train_rows.frame["reward"].mean()),
        "holdout_mean_reward": float(holdout_rows.frame["reward"].mean())
        if len(holdout_rows.frame)
        else float("nan"),
        "window_start": float(joined["timestamp"].min()),
        "window_end": float(joined["timestamp"].max()),
        "train_seconds": time.perf_counter() - start,
    }
    for reason, count in train_rows.excluded.items():
        stats[f"n_excluded_{reason}"] = count
    return TrainResult(candidate, base, train_rows, holdout_rows, reward_model, joined, stats)
