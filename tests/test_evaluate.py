"""Off-policy evaluation on a simulated gateway log (training/ope_logged.py, reward_model.py).

The log is made the way the gateway makes it: for each request of the bundled sample a logging
policy (a direct router with a wide epsilon floor) gives a pmf over the eligible models, one is
sampled, and its recorded outcome from the full-information dataset is the outcome event. Since
every model's outcome on every prompt is known, each policy's true value on the logged
requests is known too, and the estimates can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import pandas as pd
import pytest

from features.errors import DatasetError, PolicyError
from features.featurizer import RequestFeaturizer
from router.bundle import PolicyBundle
from router.events.join import join_events
from router.events.models import (
    DecisionEvent,
    Event,
    FeedbackEvent,
    OutcomeEvent,
    RewardSpecRecord,
)
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec, greedy_pmf
from router.policy.direct import DirectPolicy
from training.datasets import RoutingDataset
from training.evaluation import Reference
from training.ope_logged import PolicyEvaluation, evaluate_policies
from training.ope_rows import rebuild_actions, traffic_share
from training.reward_model import RewardModel

# six models from cheap and weak to expensive and strong, as a small gateway config would list
GATEWAY_MODELS = [
    "Llama-2-7b-hf",
    "Phi-3-mini-4k-instruct",
    "gemini-1.5-flash-002",
    "Meta-Llama-3_1-70B-Instruct",
    "Qwen1.5-110B",
    "gemini-1.5-pro-002",
]
T0 = 1_790_000_000.0


@dataclass
class SimulatedLog:
    events: list[Event]
    prompt_of: dict[str, int]  # decision id -> row of ``data``
    data: RoutingDataset
    bundles: dict[str, PolicyBundle]
    spec: RewardSpec

    def true_rewards(self, evaluation: PolicyEvaluation) -> np.ndarray:
        """Full-information reward of every model on every evaluated decision, (n, K)."""
        cols = [self.data.model_names.index(m) for m in evaluation.models]
        rows = [self.prompt_of[e] for e in evaluation.event_ids]
        d = self.data
        reward = self.spec.reward(
            d.quality[np.ix_(rows, cols)], d.cost[np.ix_(rows, cols)], d.latency[np.ix_(rows, cols)]
        )
        filled: np.ndarray = np.nan_to_num(reward, nan=0.0)
        return filled

    def true_value(self, evaluation: PolicyEvaluation, policy: str) -> float:
        return float((evaluation.action_dist[policy] * self.true_rewards(evaluation)).sum(1).mean())


def _bundle(
    featurizer: RequestFeaturizer,
    catalogue: ActionCatalogue,
    x: np.ndarray,
    data: RoutingDataset,
    spec: RewardSpec,
    epsilon: float,
    name: str,
) -> PolicyBundle:
    cols = [data.model_names.index(m) for m in GATEWAY_MODELS]
    policy = DirectPolicy(reward=spec, estimator="logistic", C=0.1, epsilon=epsilon)
    actions = catalogue.actions(x[0], 100.0, GATEWAY_MODELS)
    policy.fit(x, actions, data.quality[:, cols])
    return PolicyBundle(featurizer, catalogue, policy, {"name": name, "n_train": len(x)})


def simulate_log(
    bundled: RoutingDataset,
    featurizer: RequestFeaturizer,
    catalogue: ActionCatalogue,
    logging_bundle: PolicyBundle,
    rows: np.ndarray,
    seed: int = 0,
) -> tuple[list[Event], dict[str, int]]:
    """The gateway's events for the prompts ``rows`` of ``bundled``, logged by ``logging``."""
    rng = np.random.default_rng(seed)
    texts = bundled.prompts["prompt"].iloc[rows].tolist()
    contexts = featurizer.transform(texts)
    spec = logging_bundle.reward
    policy = logging_bundle.policy
    assert isinstance(policy, DirectPolicy)
    q_all = policy.predict_quality(contexts)
    events: list[Event] = []
    prompt_of: dict[str, int] = {}
    for t, (p, context) in enumerate(zip(rows, contexts, strict=True)):
        names = [m for m in GATEWAY_MODELS if bundled.available[p, bundled.model_names.index(m)]]
        if len(names) > 2 and rng.random() < 0.3:  # budget / SLO filters drop one sometimes
            names.pop(int(rng.integers(len(names))))
        actions = catalogue.actions(context, max(1, len(texts[t]) // 4), names)
        # DirectPolicy._predict_one with the quality predictions made in one batch (faster)
        q = q_all[t, [policy.predictor.index_[m] for m in names]]
        pmf = greedy_pmf(spec.expected(q, actions), policy.epsilon)
        k = int(rng.choice(len(names), p=pmf))
        j = bundled.model_names.index(names[k])
        ts = T0 + 12.0 * t
        decision = DecisionEvent(
            timestamp=ts,
            tenant="acme",
            policy_version=logging_bundle.version,
            feature_version=featurizer.version_,
            reward_spec=RewardSpecRecord(**spec.__dict__),
            eligible_models=names,
            action_features=[a.features.tolist() for a in actions],
            probabilities=pmf.tolist(),
            chosen_model=names[k],
            chosen_index=k,
            chosen_probability=float(pmf[k]),
            context_features=context.tolist(),
        )
        prompt_of[decision.event_id] = int(p)
        events.append(decision)
        outcome = OutcomeEvent(
            event_id=decision.event_id,
            timestamp=ts + 1.0,
            cost_usd=float(bundled.cost[p, j]),
            latency_ms=float(bundled.latency[p, j]),
            input_tokens=int(bundled.input_tokens[p, j]),
            output_tokens=int(bundled.output_tokens[p, j]),
        )
        events.append(outcome)
        events.append(
            FeedbackEvent(
                event_id=decision.event_id,
                timestamp=ts + 30.0,
                quality=float(bundled.quality[p, j]),
            )
        )
    return events, prompt_of


_CACHE: dict[int, SimulatedLog] = {}


def build_simulated_log(
    bundled: RoutingDataset,
    small: RoutingDataset,
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
) -> SimulatedLog:
    """The simulated log (built once per session: test_report.py uses it too)."""
    if id(bundled) in _CACHE:
        return _CACHE[id(bundled)]
    featurizer, catalogue, x = fitted
    train = small.split("train")
    spec = RewardSpec(w_cost=0.2, cost_scale=Reference.of(train).c_hi)
    logging_bundle = _bundle(featurizer, catalogue, x, train, spec, 0.3, "logging")
    direct = _bundle(featurizer, catalogue, x, train, spec, 0.05, "direct")
    # prompts outside the policies' training rows, as live traffic would be
    used = set(small.prompts["prompt_id"])
    fresh = np.flatnonzero(~bundled.prompts["prompt_id"].isin(used).to_numpy())
    rows = np.random.default_rng(1).choice(fresh, 1500, replace=False)
    events, prompt_of = simulate_log(bundled, featurizer, catalogue, logging_bundle, rows)
    # an "oracle-ish" policy: the same router fitted on full information about the logged prompts
    log_x = featurizer.transform(bundled.prompts["prompt"].iloc[rows].tolist())
    oracle = _bundle(featurizer, catalogue, log_x, bundled.subset(rows), spec, 0.05, "oracle")
    bundles = {"direct": direct, "oracle": oracle, "log": logging_bundle}
    _CACHE[id(bundled)] = SimulatedLog(events, prompt_of, bundled, bundles, spec)
    return _CACHE[id(bundled)]


@pytest.fixture(scope="session")
def simulated(
    bundled: RoutingDataset,
    small: RoutingDataset,
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
) -> SimulatedLog:
    return build_simulated_log(bundled, small, fitted)


@pytest.fixture(scope="session")
def evaluation(simulated: SimulatedLog) -> PolicyEvaluation:
    joined = join_events(simulated.events, join_window_s=3600.0)
    policies = {k: simulated.bundles[k] for k in ("direct", "oracle")}
    return evaluate_policies(joined, policies, n_bootstrap=300, seed=3)


# ---- (a) logging policy ----------------------------------------------------------------------
def test_logging_policy_ips_is_the_mean_observed_reward(
    simulated: SimulatedLog, evaluation: PolicyEvaluation
) -> None:
    joined = join_events(simulated.events)
    value = evaluation.estimates.loc[("logging", "ipw", "reward"), "value"]
    assert value == pytest.approx(joined["reward"].mean(), abs=1e-12)
    quality = evaluation.estimates.loc[("logging", "ipw", "quality"), "value"]
    assert quality == pytest.approx(joined["quality"].mean(), abs=1e-12)
    assert evaluation.diagnostics["logging"]["max_weight"] == pytest.approx(1.0)
    assert evaluation.n == 1500 and evaluation.n_excluded == {}


def test_estimates_cover_every_policy_estimator_and_target(evaluation: PolicyEvaluation) -> None:
    est = evaluation.estimates
    assert est.index.names == ["policy", "estimator", "target"]
    assert set(est.index.get_level_values("policy")) == {
        "direct", "oracle", "logging", "uniform", "cheapest"
    }  # fmt: skip
    assert set(est.index.get_level_values("estimator")) == {"ipw", "snipw", "dm", "dr", "switch_dr"}
    assert set(est.index.get_level_values("target")) == {"reward", "quality", "cost_usd"}
    assert (est["boot_low"] <= est["boot_high"]).all()
    assert (est["gauss_low"] <= est["value"]).all() and (est["value"] <= est["gauss_high"]).all()
    # SNIPS stays in the observed reward range (a convex combination of observed rewards)
    snips = evaluation.table("quality").xs("snipw", level="estimator")["value"]
    assert ((snips >= 0) & (snips <= 1)).all()
    # the per-round terms are the estimates' terms
    for policy in evaluation.policies:
        for e in ("ipw", "dr", "switch_dr"):
            mean = evaluation.round_terms(policy, e, "reward").mean()
            assert mean == pytest.approx(evaluation.estimates.loc[(policy, e, "reward"), "value"])


def cell(table: pd.DataFrame, row: str | tuple[str, ...], column: str = "value") -> float:
    """``table.loc[row, column]``, a number (pandas-stubs type a cell as any scalar)."""
    return cast(float, table.loc[row, column])


# ---- (b) a better policy is estimated above uniform -------------------------------------------
def test_oracle_policy_beats_uniform_and_true_values_are_covered(
    simulated: SimulatedLog, evaluation: PolicyEvaluation
) -> None:
    table = evaluation.table("reward")
    for e in ("ipw", "snipw", "dr"):
        assert cell(table, ("oracle", e)) > cell(table, ("uniform", e)) + 0.05
    for policy in ("oracle", "direct", "uniform"):
        truth = simulated.true_value(evaluation, policy)
        value = cell(table, (policy, "dr"))
        assert abs(value - truth) < 0.05, (policy, value, truth)
    diag = evaluation.diagnostics["oracle"]
    assert 0 < diag["ess"] <= evaluation.n and diag["warnings"] == []
    assert sum(diag["action_counts"].values()) == evaluation.n


# ---- (c) DR with a zero reward model is IPS ---------------------------------------------------
class ZeroRewardModel(RewardModel):
    def cross_fit(self, frame, models, n_folds=2, seed=None):  # type: ignore[no-untyped-def]
        return np.zeros((len(frame), len(models)))


def test_dr_with_a_zero_reward_model_equals_ips(simulated: SimulatedLog) -> None:
    joined = join_events(simulated.events).iloc[:400]
    result = evaluate_policies(
        joined,
        {"direct": simulated.bundles["direct"]},
        reward_model=ZeroRewardModel(),
        estimators=("ipw", "dr", "dm"),
        baselines=("uniform",),
        n_bootstrap=50,
    )
    for policy in ("direct", "uniform"):
        for target in ("reward", "quality", "cost_usd"):
            dr = result.estimates.loc[(policy, "dr", target), "value"]
            assert dr == pytest.approx(result.estimates.loc[(policy, "ipw", target), "value"])
            assert result.estimates.loc[(policy, "dm", target), "value"] == 0.0


# ---- (d) paired improvement interval ----------------------------------------------------------
def test_improvement_interval_contains_the_true_difference(
    simulated: SimulatedLog, evaluation: PolicyEvaluation
) -> None:
    for candidate, baseline in (("oracle", "direct"), ("direct", "uniform")):
        truth = simulated.true_value(evaluation, candidate) - simulated.true_value(
            evaluation, baseline
        )
        for estimator in ("dr", "ipw"):
            imp = evaluation.improvement(candidate, baseline, estimator=estimator)
            assert imp["low"] <= truth <= imp["high"], (candidate, baseline, estimator, imp, truth)
            assert imp["gauss_low"] <= truth <= imp["gauss_high"]
            assert imp["se"] > 0 and imp["same_reward_spec"]
            table = evaluation.table("reward")
            expected = cell(table, (candidate, estimator)) - cell(table, (baseline, estimator))
            assert imp["delta"] == pytest.approx(expected)
    # pairing: the paired interval is narrower than the two marginal intervals combined
    imp = evaluation.improvement("oracle", "direct", estimator="dr")
    table = evaluation.table("reward")
    oracle, direct = (
        cell(table, (p, "dr"), "gauss_high") - cell(table, (p, "dr")) for p in ("oracle", "direct")
    )
    marginal = np.hypot(oracle, direct)
    assert imp["gauss_high"] - imp["delta"] < marginal


# ---- (e) exclusions ---------------------------------------------------------------------------
def test_mismatched_feature_versions_overrides_and_missing_outcomes_are_excluded(
    simulated: SimulatedLog,
) -> None:
    decisions = [e for e in simulated.events if isinstance(e, DecisionEvent)][:300]
    keep = {d.event_id for d in decisions}
    events: list[Event] = []
    no_outcome = {d.event_id for d in decisions[200:210]}
    for i, event in enumerate(e for e in simulated.events if e.event_id in keep):
        if isinstance(event, DecisionEvent) and i % 30 == 0:
            event = event.model_copy(update={"feature_version": "feat-old"})
        if isinstance(event, OutcomeEvent) and event.event_id in no_outcome:
            continue
        events.append(event)
    override = decisions[0].model_copy(
        update={
            "event_id": "override-1",
            "override_reason": "pass-through: the caller named the model",
            "probabilities": [
                1.0 if i == 0 else 0.0 for i in range(len(decisions[0].probabilities))
            ],
            "chosen_index": 0,
            "chosen_model": decisions[0].eligible_models[0],
            "chosen_probability": 1.0,
        }
    )
    events.append(override)
    result = evaluate_policies(
        events, {"direct": simulated.bundles["direct"]}, n_bootstrap=20, baselines=("logging",)
    )
    n_old = sum(  # rows without an outcome are counted under that reason first
        1
        for e in events
        if isinstance(e, DecisionEvent)
        and e.feature_version == "feat-old"
        and e.event_id not in no_outcome
    )
    assert n_old > 0
    assert result.n_excluded["feature_version_mismatch"] == n_old
    assert result.n_excluded["not_learnable"] == 1
    assert result.n_excluded["no_outcome"] == 10
    assert result.n == 300 - n_old - 10
    assert any("feat-old" in note for note in result.notes)
    # the traffic view counts every decision, overrides and excluded rows included: it is the
    # share of the whole joined log, not of the rows the estimates use
    every = join_events(events)
    assert len(every) == 301 > result.n
    pd.testing.assert_frame_equal(result.traffic, traffic_share(every))
    np.testing.assert_allclose(result.traffic.sum(axis=1), 1.0)


def test_no_rows_left_and_incompatible_policies_raise(simulated: SimulatedLog) -> None:
    joined = join_events(simulated.events).iloc[:50].copy()
    joined["feature_version"] = "feat-old"
    with pytest.raises(DatasetError, match="feature version"):
        evaluate_policies(joined, {"direct": simulated.bundles["direct"]}, n_bootstrap=10)
    other = PolicyBundle(
        RequestFeaturizer().fit(["a b c", "d e f", "g h i"] * 10),
        simulated.bundles["direct"].catalogue,
        simulated.bundles["direct"].policy,
        {"name": "other"},
    )
    with pytest.raises(PolicyError, match="different feature versions"):
        evaluate_policies(joined, {"a": simulated.bundles["direct"], "b": other})
    with pytest.raises(PolicyError, match="reserved for baselines"):
        evaluate_policies(joined, {"uniform": simulated.bundles["direct"]})
    with pytest.raises(PolicyError, match="estimators"):
        evaluate_policies(joined, {}, estimators=("nope",))


def test_different_reward_specs_are_flagged(simulated: SimulatedLog) -> None:
    joined = join_events(simulated.events).iloc[:300]
    direct = simulated.bundles["direct"]
    cost_averse = DirectPolicy(reward=RewardSpec(w_cost=2.0, cost_scale=direct.reward.cost_scale))
    cost_averse.predictor = direct.policy.predictor  # type: ignore[attr-defined]
    result = evaluate_policies(
        joined, {"direct": direct, "averse": cost_averse}, n_bootstrap=20, baselines=()
    )
    assert any("'averse'" in note and "own reward spec" in note for note in result.notes)
    assert result.improvement("averse", "direct")["same_reward_spec"] is False


# ---- pieces -----------------------------------------------------------------------------------
def test_rebuilt_actions_match_the_gateway_actions(
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
) -> None:
    _, catalogue, x = fitted
    actions = catalogue.actions(x[3], 250.0, GATEWAY_MODELS)
    rebuilt = rebuild_actions(
        x[3], GATEWAY_MODELS, [a.features.tolist() for a in actions], 250.0, catalogue, 100.0
    )
    for a, b in zip(actions, rebuilt, strict=True):
        assert a.model == b.model
        assert b.expected_cost == pytest.approx(a.expected_cost, rel=1e-9)
        assert b.expected_latency_ms == pytest.approx(a.expected_latency_ms, rel=1e-9)
    with pytest.raises(DatasetError, match="action_features"):
        rebuild_actions(x[3], ["m"], [[1.0, 2.0]], 10.0, None, 100.0)


def test_reward_model_cross_fit_is_out_of_fold_and_deterministic(simulated: SimulatedLog) -> None:
    joined = join_events(simulated.events).iloc[:600].reset_index(drop=True)
    model = RewardModel(target="quality", n_estimators=40, seed=1)
    a = model.cross_fit(joined, GATEWAY_MODELS, n_folds=2)
    b = model.cross_fit(joined, GATEWAY_MODELS, n_folds=2)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (600, len(GATEWAY_MODELS))
    in_sample = model.fit(joined, GATEWAY_MODELS).predict_all(joined, GATEWAY_MODELS)
    chosen = np.array([GATEWAY_MODELS.index(m) for m in joined["chosen_model"]])
    y = joined["quality"].to_numpy()
    err_in = np.mean((in_sample[np.arange(600), chosen] - y) ** 2)
    err_out = np.mean((a[np.arange(600), chosen] - y) ** 2)
    assert err_in < err_out  # held-out rows are not fitted to
    # the model tells models apart: the strong model's mean q̂ is above the weakest's
    assert a[:, -1].mean() > a[:, 0].mean()
    with pytest.raises(ValueError, match="target"):
        RewardModel(target="nope")


def test_traffic_share_rows_sum_to_one(simulated: SimulatedLog) -> None:
    joined = join_events(simulated.events)
    share = traffic_share(joined)
    np.testing.assert_allclose(share.sum(axis=1), 1.0)
    assert len(share) <= 48 and share.attrs["bucket"] == "15min"
    assert set(share.columns) <= set(GATEWAY_MODELS)


def test_too_few_decisions_is_a_clear_error(simulated: SimulatedLog) -> None:
    joined = join_events(simulated.events).iloc[:3]
    with pytest.raises(DatasetError, match="only 3 decision"):
        evaluate_policies(joined, {"direct": simulated.bundles["direct"]}, n_bootstrap=10)


def test_train_and_evaluate_leave_out_the_same_pending_feedback(simulated: SimulatedLog) -> None:
    """A decision without feedback yet, within the join window of the log's end, may still be
    rated: training leaves it out, and so does evaluation (it used to count it as quality 0).
    One without feedback older than the window is an unrated answer for both."""
    from training.train import select_learnable

    decisions = [e for e in simulated.events if isinstance(e, DecisionEvent)][:400]
    keep = {d.event_id for d in decisions}
    recent = {d.event_id for d in decisions[-20:]}  # the last 240 s of a 4,800 s log
    old = {d.event_id for d in decisions[:20]}
    events = [
        e
        for e in simulated.events
        if e.event_id in keep and not (isinstance(e, FeedbackEvent) and e.event_id in recent | old)
    ]
    joined = join_events(events, join_window_s=600.0)
    horizon = float(joined["timestamp"].max()) - 600.0
    bundle = simulated.bundles["direct"]
    rows = select_learnable(
        joined, bundle.featurizer.version_, simulated.spec, GATEWAY_MODELS, feedback_horizon=horizon
    )
    result = evaluate_policies(
        joined, {"direct": bundle}, n_bootstrap=20, baselines=("logging",), join_window_s=600.0
    )
    assert rows.excluded.get("pending_feedback") == 20
    assert result.n_excluded["pending_feedback"] == 20
    assert set(result.event_ids) == set(rows.frame["event_id"])
    assert not recent & set(result.event_ids)
    assert old <= set(result.event_ids)  # unrated, not pending: evaluated at the default quality


def test_a_fixed_model_baseline_is_valued_against_the_truth(simulated: SimulatedLog) -> None:
    joined = join_events(simulated.events, join_window_s=3600.0)
    top = joined["chosen_model"].value_counts().index[0]
    name = f"fixed:{top}"
    result = evaluate_policies(
        joined, {"direct": simulated.bundles["direct"]}, baselines=("logging", name),
        n_bootstrap=100, seed=3,
    )  # fmt: skip
    dist = result.action_dist[name]
    column = result.models.index(top)
    eligible = np.array([top in names for names in joined["eligible_models"]])
    assert np.all(dist[eligible, column] == 1.0)  # always it, where it may serve
    truth = simulated.true_value(result, name)
    assert abs(cell(result.table("reward"), (name, "dr")) - truth) < 0.05
    with pytest.raises(PolicyError, match="baselines: unknown"):
        evaluate_policies(joined, {}, baselines=("always",))


def test_near_greedy_logs_say_they_cannot_tell(
    simulated: SimulatedLog,
    bundled: RoutingDataset,
    small: RoutingDataset,
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
) -> None:
    """A logger that barely explores (floor 0.02 / 6 per model) cannot judge a policy that differs
    from it: the diagnostics and the verdict say so instead of a tight interval."""
    featurizer, catalogue, x = fitted
    greedy = _bundle(featurizer, catalogue, x, small.split("train"), simulated.spec, 0.02, "g")
    rows = np.random.default_rng(5).choice(len(bundled.prompts), 400, replace=False)
    events, prompt_of = simulate_log(bundled, featurizer, catalogue, greedy, rows, seed=5)
    log = SimulatedLog(events, prompt_of, bundled, simulated.bundles, simulated.spec)
    joined = join_events(events, join_window_s=3600.0)
    result = evaluate_policies(
        joined, {"oracle": simulated.bundles["oracle"]}, baselines=("logging", "uniform"),
        n_bootstrap=200, seed=3,
    )  # fmt: skip
    diag = result.diagnostics["uniform"]
    assert diag["ess_expected"] < 100  # 400 decisions, 8 of them exploring
    assert any("expected effective sample size" in w for w in diag["warnings"])
    for candidate in ("uniform", "oracle"):
        imp = result.improvement(candidate, "logging")
        truth = log.true_value(result, candidate) - log.true_value(result, "logging")
        assert imp["low"] <= imp["boot_low"] and imp["high"] >= imp["boot_high"]
        # never a wrong verdict: not the wrong sign, not "no clear difference" for 0.05 or more
        wrong = {"better": truth < 0, "worse": truth > 0, "no clear difference": abs(truth) >= 0.05}
        assert not wrong.get(imp["verdict"], False), (candidate, imp, truth)
    same = result.improvement("logging", "logging")
    assert same["verdict"] == "no clear difference" and same["delta"] == 0.0
