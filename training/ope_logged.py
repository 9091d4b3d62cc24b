"""Off-policy evaluation of candidate policies on the gateway's logged decisions (docs/metrics.md).

For every joined decision that can be learned from (no rule override, an outcome, the policies'
feature version), each policy is replayed on the logged request: its pmf over the logged
eligible models is computed from the logged context features and :class:`Action` objects
rebuilt from the logged action features. With the logged chosen model ``a_i`` and its logging
probability ``p_i`` (the pscore), the importance weight is ``w_i = π(a_i | x_i) / p_i`` and the
estimators of :mod:`training.ope` (IPS, SNIPS, DM, DR, Switch-DR, ...) give the policy's value
with bootstrap and Gaussian intervals, for three targets: ``reward``, ``quality``, ``cost_usd``.

Reward. Raw components are logged, so the reward is recomputed offline with each policy's own
reward spec: ``quality - w_cost * cost / cost_scale - w_latency * latency / latency_scale``.
The reward model (:class:`training.reward_model.RewardModel`, cross-fitted) predicts quality,
cost and latency separately, and q̂ of a reward is the same linear combination, so DR of the
reward is exactly the combination of the DRs of its parts. Baselines use the reference spec
(the first policy's, or ``reward_spec``); policies with another spec are flagged in ``notes``.

Rebuilt actions (:mod:`training.ope_rows`). Logged action features are each model's static features
(:data:`router.policy.actions.ACTION_FEATURES`: log prices, TTFT, speed, context window). The
expected cost and latency a policy saw are rebuilt from them with the policy's own
output-length model (its bundle's catalogue) and the request's input tokens (the outcome's
count; the gateway estimated it from the text length, so this is close, not exact).

Baselines: ``logging`` (the logged pmf: its IPS value is the mean observed reward), ``uniform``
over eligible models, ``cheapest`` (lowest rebuilt expected cost).

The result is a :class:`training.ope_result.PolicyEvaluation`.

Paired comparison: :meth:`PolicyEvaluation.improvement` bootstraps the per-round differences of
two policies' terms over the same resampled decisions (OBP's bootstrap, Saito et al. 2021,
"Open Bandit Dataset and Pipeline", NeurIPS Datasets), with a Gaussian interval beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from features.errors import DatasetError, PolicyError
from router.bundle import PolicyBundle
from router.events.join import join_events, unrated_horizon
from router.events.models import Event
from router.policy.actions import ActionCatalogue
from router.policy.base import Action, RewardSpec
from training import ope, ope_support
from training.ope_result import TARGETS, PolicyEvaluation
from training.ope_rows import fill_tokens, rebuild_actions, scatter, select_rows, traffic_share
from training.reward_model import RewardModel

__all__ = [
    "BASELINES",
    "DEFAULT_ESTIMATORS",
    "FIXED",
    "TARGETS",
    "PolicyEvaluation",
    "evaluate_policies",
]

logger = logging.getLogger(__name__)

DEFAULT_ESTIMATORS = ("ipw", "snipw", "dm", "dr", "switch_dr")
BASELINES = ("logging", "uniform", "cheapest")
FIXED = "fixed:"  # baseline "fixed:<model>": always that model (where it is eligible)
ESTIMATOR_NAMES = ope.ESTIMATORS
_STATS = (
    "value", "low", "high", "support_se", "boot_low", "boot_high", "boot_mean", "gauss_low",
    "gauss_high",
)  # fmt: skip


class PolicyLike(Protocol):
    reward: RewardSpec

    def predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray: ...


# ---- the policies to evaluate ----------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    name: str
    kind: str  # "policy" or "baseline"
    policy: PolicyLike | None
    catalogue: ActionCatalogue | None
    feature_version: str | None
    reward: RewardSpec | None


def _target(name: str, item: Any) -> _Target:
    if isinstance(item, PolicyBundle):
        return _Target(
            name, "policy", item.policy, item.catalogue, item.featurizer.version_, item.reward
        )
    if not callable(getattr(item, "predict_one", None)):
        raise PolicyError(f"policy {name!r}: expected a PolicyBundle or a policy with predict_one")
    return _Target(name, "policy", item, None, None, getattr(item, "reward", None))


def _policy_pmfs(
    frame: pd.DataFrame, target: _Target, catalogue: ActionCatalogue | None, index: dict[str, int]
) -> np.ndarray:
    tokens = fill_tokens(frame["input_tokens"].to_numpy(float))  # 0: the upstream did not report
    default_tokens = float(np.median(fill_tokens(frame["output_tokens"].to_numpy(float))))
    pmfs = []
    columns = zip(
        frame["eligible_models"].tolist(),
        frame["probabilities"].tolist(),
        frame["context_features"].tolist(),
        frame["action_features"].tolist(),
        tokens,
        strict=True,
    )
    for names, logged, context_list, features, n_tokens in columns:
        if target.name == "logging":
            pmfs.append(np.asarray(logged, float))
            continue
        if target.name == "uniform":
            pmfs.append(np.full(len(names), 1.0 / len(names)))
            continue
        if target.name.startswith(FIXED):  # always this model where it may serve, else as logged
            model = target.name[len(FIXED) :]
            pmfs.append(
                np.array([float(m == model) for m in names])
                if model in names
                else np.asarray(logged, float)
            )
            continue
        context = np.asarray(context_list, float)
        actions = rebuild_actions(
            context, list(names), features, n_tokens, target.catalogue or catalogue, default_tokens
        )
        if target.name == "cheapest":
            cost = np.array([a.expected_cost for a in actions])
            best = cost <= cost.min() + 1e-15
            pmfs.append(best / best.sum())
            continue
        assert target.policy is not None
        pmfs.append(target.policy.predict_one(context, actions))
    return scatter(frame, index, pmfs)


def _outcome_models(
    frame: pd.DataFrame, models: list[str], prototype: RewardModel, n_folds: int, need: set[str]
) -> dict[str, np.ndarray]:
    """Cross-fitted q̂ ``(n, K)`` of each needed outcome column."""
    return {
        column: prototype.with_target(column).cross_fit(frame, models, n_folds=n_folds)
        for column in sorted(need)
    }


def evaluate_policies(
    joined: pd.DataFrame | Iterable[Event],
    policies: dict[str, Any],
    *,
    models: list[str] | None = None,
    estimators: Sequence[str] = DEFAULT_ESTIMATORS,
    baselines: Sequence[str] = BASELINES,
    alpha: float = 0.05,
    n_bootstrap: int = 1000,
    seed: int = 0,
    min_ess: float = 100.0,
    min_ess_ratio: float = 0.05,
    max_weight: float = 100.0,
    switch_lambda: float = 5.0,
    dros_lambda: float = 10.0,
    reward_model: RewardModel | None = None,
    n_folds: int = 2,
    reward_spec: RewardSpec | None = None,
    join_window_s: float = 3600.0,
    default_quality: float = 0.0,
    feedback_horizon: float | None = None,
    skip_unrated: bool = False,
    equivalence: float = ope_support.DEFAULT_EQUIVALENCE,
) -> PolicyEvaluation:
    """Evaluate ``policies`` (name -> :class:`PolicyBundle` or policy) and baselines off-policy.

    Parameters
    ----------
    joined : DataFrame from :func:`router.events.join.join_events`, or raw events (joined here
        with ``join_window_s`` and ``default_quality``).
    models : the full model list (action index space); default: every logged eligible model.
    estimators : rows of :func:`training.ope.estimate_policy_value` to keep.
    baselines : any of ``logging``, ``uniform``, ``cheapest``, and ``fixed:<model>`` (always
        that model where it is eligible, the logged choice where it is not).
    min_ess, min_ess_ratio, max_weight : diagnostics thresholds that add a warning.
    reward_model : prototype of the cross-fitted reward models (one per outcome column); its
        parameters are used with ``target`` replaced. Default ``RewardModel(seed=seed)``.
    reward_spec : the reward of the baselines; default: the first policy's.
    switch_lambda, dros_lambda : λ of Switch-DR and DRos (:mod:`training.ope`).
    n_folds : folds of the reward model's cross-fitting.
    feedback_horizon : decisions after it without quality feedback are left out as still
        pending (as training leaves them out); default: ``join_window_s`` before the last
        decision of ``joined``, or every unrated decision with ``skip_unrated`` (the rule of
        :func:`router.events.join.unrated_horizon`, which training uses). Pass the horizon of the
        whole log when ``joined`` is a slice.
    equivalence : the reward difference below which :meth:`PolicyEvaluation.improvement`'s
        verdict may say "no clear difference" (:func:`training.ope_support.verdict`).

    Raises
    ------
    PolicyError
        Policies of different feature versions, or an unknown baseline / estimator.
    DatasetError
        When no logged decision is left to evaluate (the message says why).
    """
    unknown = [e for e in estimators if e not in ESTIMATOR_NAMES]
    if unknown:
        raise PolicyError(f"estimators: unknown {unknown}; expected some of {ESTIMATOR_NAMES}")
    bad = [b for b in baselines if b not in BASELINES and not b.startswith(FIXED)]
    if bad:
        raise PolicyError(f"baselines: unknown {bad}; expected some of {BASELINES}")
    clash = [b for b in baselines if b in policies]
    if clash:
        raise PolicyError(f"policy name(s) {clash} are reserved for baselines; rename them")
    frame = (
        joined
        if isinstance(joined, pd.DataFrame)
        else join_events(joined, join_window_s, default_quality)
    )
    targets = [_target(name, item) for name, item in policies.items()]
    traffic = traffic_share(frame)
    # the same rule as training: feedback may still arrive within the join window of the log's end
    horizon = feedback_horizon
    if horizon is None and len(frame):
        horizon = unrated_horizon(frame, join_window_s, skip_unrated)
    versions = {t.name: t.feature_version for t in targets}
    frame, excluded, notes = select_rows(frame, versions, models, horizon)
    if models is None:
        models = sorted({m for names in frame["eligible_models"] for m in names})
    index = {m: j for j, m in enumerate(models)}
    n = len(frame)
    if n < 2 * n_folds:
        raise DatasetError(
            f"only {n} decision(s) left to evaluate: cross-fitting the reward model over "
            f"{n_folds} folds needs at least {2 * n_folds}"
        )

    reference = reward_spec or next((t.reward for t in targets if t.reward is not None), None)
    targets += [_Target(b, "baseline", None, None, None, reference) for b in baselines]
    for t in targets:
        if t.kind == "policy" and reference is not None and t.reward != reference:
            notes.append(
                f"{t.name!r} is evaluated with its own reward spec {t.reward}, not the "
                f"reference {reference}: compare its quality and cost, not its reward"
            )
    if reference is None:
        notes.append("no reward spec given: the reward is the one logged with each decision")
    catalogue = next((t.catalogue for t in targets if t.catalogue is not None), None)

    # q̂ of the outcome columns the rewards are made of, cross-fitted
    need = {"quality", "cost_usd"}
    if any(t.reward is not None and t.reward.w_latency > 0 for t in targets):
        need.add("latency_ms")
    if any(t.reward is None for t in targets):
        need.add("reward")
    prototype = reward_model or RewardModel(seed=seed)
    q_hat = _outcome_models(frame, models, prototype, n_folds, need)
    observed = {
        c: frame[c].to_numpy(float) for c in ("quality", "cost_usd", "latency_ms", "reward")
    }

    def outcome(target_name: str, spec: RewardSpec | None) -> tuple[np.ndarray, np.ndarray]:
        if target_name != "reward":
            return observed[target_name], q_hat[target_name]
        if spec is None:
            return observed["reward"], q_hat["reward"]
        zero = np.zeros((n, len(models)))
        r = spec.reward(observed["quality"], observed["cost_usd"], observed["latency_ms"])
        q = spec.reward(q_hat["quality"], q_hat["cost_usd"], q_hat.get("latency_ms", zero))
        return np.asarray(r, float), np.asarray(q, float)

    action = np.array([index[m] for m in frame["chosen_model"]])
    pscore = frame["chosen_probability"].to_numpy(float)
    logged_pmf = scatter(frame, index, frame["probabilities"])
    rows: list[pd.DataFrame] = []
    diagnostics: dict[str, dict[str, Any]] = {}
    terms: dict[tuple[str, str], pd.DataFrame] = {}
    action_dist: dict[str, np.ndarray] = {}
    q_hats: dict[tuple[str, str], np.ndarray] = {}
    sigma2: dict[tuple[str, str], float] = {}
    for t in targets:
        dist = action_dist[t.name] = _policy_pmfs(frame, t, catalogue, index)
        for target_name in TARGETS:
            r, q = outcome(target_name, t.reward)
            est = ope.estimate_policy_value(
                action, r, pscore, dist, q, alpha=alpha, n_bootstrap=n_bootstrap,
                seed=seed, switch_lambda=switch_lambda, dros_lambda=dros_lambda,
                logging_pmf=logged_pmf,
            )  # fmt: skip
            q_hats[(t.name, target_name)] = q
            sigma2[(t.name, target_name)] = ope_support.residual_variance(
                r, q[np.arange(n), action]
            )
            est = est.loc[[e for e in estimators if e in est.index], list(_STATS)]
            est.index = pd.MultiIndex.from_tuples(
                [(t.name, e, target_name) for e in est.index],
                names=["policy", "estimator", "target"],
            )
            rows.append(est)
            data = ope.check_ope_inputs(action, r, pscore, dist, q)
            lambdas = {"switch_dr": switch_lambda, "dros": dros_lambda}
            terms[(t.name, target_name)] = pd.DataFrame(
                {e: ope.round_terms(e, data, lambdas.get(e, np.inf)) for e in estimators}
            )
        diagnostics[t.name] = _diagnose(
            t, action, pscore, dist, logged_pmf, models, switch_lambda,
            min_ess, min_ess_ratio, max_weight,
        )  # fmt: skip
    estimates = pd.concat(rows)
    for note in notes:
        logger.info(note)
    return PolicyEvaluation(
        estimates=estimates,
        diagnostics=diagnostics,
        traffic=traffic,
        n=n,
        n_excluded=excluded,
        notes=notes,
        models=models,
        event_ids=frame["event_id"].tolist(),
        action_dist=action_dist,
        terms=terms,
        alpha=alpha,
        n_bootstrap=n_bootstrap,
        seed=seed,
        logging_pmf=logged_pmf,
        q_hat=q_hats,
        sigma2=sigma2,
        equivalence=equivalence,
    )


def _diagnose(
    t: _Target,
    action: np.ndarray,
    pscore: np.ndarray,
    dist: np.ndarray,
    logged_pmf: np.ndarray,
    models: list[str],
    switch_lambda: float,
    min_ess: float,
    min_ess_ratio: float,
    max_weight: float,
) -> dict[str, Any]:
    diag = dict(ope.diagnostics(action, pscore, dist, switch_lambda=switch_lambda))
    counts = np.bincount(action, minlength=len(models))
    diag["action_counts"] = {m: int(c) for m, c in zip(models, counts, strict=True)}
    diag["target_share"] = {m: float(s) for m, s in zip(models, dist.mean(axis=0), strict=True)}
    deficit = float(np.where(logged_pmf <= 0, dist, 0.0).sum(axis=1).mean())
    diag["support_deficit"] = deficit
    diag |= ope_support.summary(dist, logged_pmf)
    diag["kind"] = t.kind
    diag["reward_spec"] = None if t.reward is None else dict(t.reward.__dict__)
    diag["feature_version"] = t.feature_version
    warnings = []
    ess, ratio, wmax = float(diag["ess"]), float(diag["ess_ratio"]), float(diag["max_weight"])
    if ess < min_ess:
        warnings.append(f"effective sample size {ess:.0f} < {min_ess:.0f}: intervals unreliable")
    if ratio < min_ess_ratio:
        warnings.append(
            f"ESS is {100 * ratio:.1f}% of the decisions (< {100 * min_ess_ratio:.0f}%): the "
            "policy rarely agrees with the logging policy"
        )
    expected = float(diag["ess_expected"])
    if expected < min_ess:
        warnings.append(
            f"expected effective sample size {expected:.0f} < {min_ess:.0f}: the logger rarely "
            f"chose what this policy would ({100 * diag['departure']:.0f}% of its decisions "
            "differ from the logger's), so the estimate leans on the reward model there and the "
            "interval is wide"
        )
    if wmax > max_weight:
        warnings.append(f"max importance weight {wmax:.1f} > {max_weight:.0f}: IPS is volatile")
    if deficit > 0.01:
        warnings.append(
            f"{100 * deficit:.1f}% of the policy's mass is on models the logger never chose "
            "with p > 0: IPS/DR are biased there (support deficiency)"
        )
    diag["warnings"] = warnings
    return diag
