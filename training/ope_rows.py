"""The rows an off-policy evaluation uses: logged decisions selected and prepared.

:func:`select_rows` keeps the decisions that can be evaluated and counts the rest by reason;
:func:`rebuild_actions` rebuilds the actions a policy saw from the logged action features;
:func:`traffic_share` is the traffic view of the report. Used by :mod:`training.ope_logged`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.errors import DatasetError, PolicyError
from router.events.join import charge_failures
from router.policy.actions import ACTION_FEATURES, ActionCatalogue
from router.policy.base import Action


# ---- rebuilt actions --------------------------------------------------------------------------
def rebuild_actions(
    context: np.ndarray,
    models: Sequence[str],
    action_features: Sequence[Sequence[float]],
    input_tokens: float,
    catalogue: ActionCatalogue | None,
    default_output_tokens: float,
) -> list[Action]:
    """The :class:`Action` objects of one logged decision, as the policy would have built them.

    Prices, TTFT and speed come from the logged action features (inverse of the transforms in
    :class:`ActionCatalogue`); output tokens from ``catalogue``'s output-length model when it
    knows the model and the context has its width, else ``default_output_tokens``.
    """
    f = np.asarray(action_features, dtype=float)
    if f.ndim != 2 or f.shape[1] != len(ACTION_FEATURES):
        raise DatasetError(
            f"action_features: expected {len(ACTION_FEATURES)} columns {ACTION_FEATURES}, "
            f"got shape {f.shape}"
        )
    col = {name: j for j, name in enumerate(ACTION_FEATURES)}
    price_in = np.expm1(f[:, col["log_usd_in"]]) / 1e6
    price_out = np.expm1(f[:, col["log_usd_out"]]) / 1e6
    ttft = np.exp(f[:, col["log_ttft"]]) - 1.0
    speed = np.exp(f[:, col["log_speed"]])
    out_tokens = np.full(len(models), float(default_output_tokens))
    coef = getattr(catalogue, "token_coef_", None)
    if catalogue is not None and coef is not None and coef.shape[0] == len(context):
        predicted = catalogue.expected_output_tokens(context)
        for j, name in enumerate(models):
            if name in catalogue.index:
                out_tokens[j] = predicted[catalogue.index[name]]
    cost = input_tokens * price_in + out_tokens * price_out
    latency = ttft + out_tokens / speed * 1000.0
    return [
        Action(
            model=m,
            features=f[j],
            expected_cost=float(cost[j]),
            expected_latency_ms=float(latency[j]),
        )
        for j, m in enumerate(models)
    ]


# ---- data preparation -------------------------------------------------------------------------
def traffic_share(frame: pd.DataFrame, bucket: str | None = None) -> pd.DataFrame:
    """Share of decisions per chosen model per time bucket (rows sum to 1).

    ``bucket`` is a pandas frequency; default: the smallest of 1min .. 1D giving <= 48 buckets.
    """
    if frame.empty:
        return pd.DataFrame()
    times = pd.to_datetime(frame["timestamp"].to_numpy(float), unit="s", utc=True)
    if bucket is None:
        span = (times.max() - times.min()).total_seconds()
        choices = (("1min", 60), ("5min", 300), ("15min", 900), ("1h", 3600), ("6h", 21600))
        bucket = next((name for name, s in choices if span / s <= 48), "1D")
    counts = pd.crosstab(times.floor(bucket), frame["chosen_model"].to_numpy())
    share = counts.div(counts.sum(axis=1), axis=0)
    share.index.name, share.columns.name = "time", "model"
    share.attrs["bucket"] = bucket
    return share


def select_rows(
    frame: pd.DataFrame,
    feature_versions: dict[str, str | None],
    models: list[str] | None,
    feedback_horizon: float | None = None,
) -> tuple[pd.DataFrame, dict[str, int], list[str]]:
    """The learnable rows with an outcome and the policies' feature version (``feature_versions``:
    policy name -> its featurizer version, None when unknown); counts the rest.

    ``feedback_horizon``: a decision after it without quality feedback may still be rated (it
    is within the join window of the log's last decision): it is left out, as
    ``training.train.select_learnable`` leaves it out of training, rather than counted as an
    unrated answer (``default_quality``)."""
    excluded: dict[str, int] = {}
    notes: list[str] = []

    def drop(mask: np.ndarray, reason: str, note: str) -> None:
        nonlocal frame
        count = int(mask.sum())
        if count:
            excluded[reason] = excluded.get(reason, 0) + count
            notes.append(f"{count} decision(s) excluded: {note}")
            frame = frame[~mask]

    # as training: a failed choice answered by a fallback is the chosen model's failure
    frame, unattributed = charge_failures(frame)
    if unattributed:
        excluded["fallback_unattributed"] = unattributed
        notes.append(
            f"{unattributed} decision(s) excluded: a fallback answered, and the log has no chain "
            "of attempts to charge the chosen model's failure to"
        )
    drop(~frame["learnable"].to_numpy(bool), "not_learnable", "a rule overrode the policy (p=1)")
    drop(~frame["has_outcome"].to_numpy(bool), "no_outcome", "no outcome within the join window")
    if feedback_horizon is not None:
        pending = frame["quality_imputed"].to_numpy(bool) & (
            frame["timestamp"].to_numpy(float) > feedback_horizon
        )
        drop(
            pending,
            "pending_feedback",
            "no quality feedback yet, but still within the join window of the log's end",
        )
    values = frame[["quality", "cost_usd", "latency_ms"]].to_numpy(float)
    drop(~np.isfinite(values).all(axis=1), "missing_outcome_values", "non-finite quality/cost")
    versions = {v for v in feature_versions.values() if v is not None}
    if len(versions) > 1:
        detail = {name: v for name, v in feature_versions.items() if v}
        raise PolicyError(
            f"policies use different feature versions {detail}: the logged context features "
            "can only be read by one of them; evaluate them on logs of their own featurizer"
        )
    logged = Counter(frame["feature_version"])
    wanted = versions.pop() if versions else (logged.most_common(1)[0][0] if logged else None)
    other = sorted(v for v in logged if v != wanted)
    drop(
        (frame["feature_version"] != wanted).to_numpy(),
        "feature_version_mismatch",
        f"logged with feature version(s) {other}, the policies need {wanted!r}",
    )
    if models is not None:
        known = set(models)
        outside = np.array([not set(names) <= known for names in frame["eligible_models"]], bool)
        drop(outside, "model_outside_list", f"an eligible model is not in models={models}")
    if frame.empty:
        raise DatasetError(
            "no logged decision is left to evaluate: " + ("; ".join(notes) or "the log is empty")
        )
    return frame.reset_index(drop=True), excluded, notes


def scatter(frame: pd.DataFrame, index: dict[str, int], values: Iterable[Any]) -> np.ndarray:
    """Per-row pmfs over each row's eligible models -> ``(n, K)`` over the full model list."""
    out = np.zeros((len(frame), len(index)))
    for i, (names, pmf) in enumerate(zip(frame["eligible_models"], values, strict=True)):
        out[i, [index[m] for m in names]] = pmf
    return out


def fill_tokens(values: np.ndarray) -> np.ndarray:
    """Non-positive or NaN token counts replaced by the median of the reported ones (or 0)."""
    ok = np.isfinite(values) & (values > 0)
    return np.where(ok, values, float(np.median(values[ok])) if ok.any() else 0.0)
