"""The serving policy: SquareCB over a quality model (router/policy/quality.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.errors import PolicyError
from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import Action, Policy, RewardSpec
from router.policy.direct import QualityPredictor
from router.policy.igw import igw_pmf
from router.policy.quality import QualitySquareCBPolicy
from training.datasets import RoutingDataset
from training.evaluation import Reference
from training.simulate import quality_policy_curve, replay_rounds, true_rewards

Fitted = tuple[RequestFeaturizer, ActionCatalogue, np.ndarray]


def test_igw_pmf_is_squarecb_with_a_floor() -> None:
    rewards = np.array([0.9, 0.5, 0.1, 0.89])
    pmf = igw_pmf(rewards, gamma=10.0, epsilon=0.2)
    assert pmf.sum() == pytest.approx(1.0)
    assert np.all(pmf >= 0.2 / 4 - 1e-12)
    assert np.argmax(pmf) == 0
    assert pmf[3] > pmf[1] > pmf[2]  # smaller gap, more probability
    # without the floor binding: SquareCB's 1 / (K + gamma * gap)
    free = igw_pmf(np.array([1.0, 0.99]), gamma=10.0, epsilon=0.01)
    assert free[1] == pytest.approx(1.0 / (2 + 10.0 * 0.01))
    assert igw_pmf(np.array([0.3]), 5.0, 0.1).tolist() == [1.0]


def test_invalid_parameters_are_refused() -> None:
    with pytest.raises(PolicyError, match="epsilon"):
        QualitySquareCBPolicy(epsilon=0.0)
    with pytest.raises(PolicyError, match="gamma_scale"):
        QualitySquareCBPolicy(gamma_scale=-1.0)
    with pytest.raises(PolicyError, match="kappa"):
        QualitySquareCBPolicy(kappa=0.0)
    with pytest.raises(PolicyError, match="min_outcomes"):
        QualitySquareCBPolicy(min_outcomes=-1)


def test_linear_form_reproduces_the_predictor(small: RoutingDataset, fitted: Fitted) -> None:
    _featurizer, catalogue, x = fitted
    train = small.split("train")
    predictor = QualityPredictor("logistic", C=0.3).fit(x, catalogue.names, train.quality)
    form = predictor.linear_form()
    assert form is not None
    w, b = form
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-(x @ w + b))), predictor.predict(x), atol=1e-12)
    assert (
        QualityPredictor("lgbm").fit(x[:50], catalogue.names, train.quality[:50]).linear_form()
        is None
    )


def test_residuals_move_a_model_whose_reward_drifted(fitted: Fitted) -> None:
    """Bandit feedback corrects the prior: a model the prior rates best but that keeps
    scoring 0 loses its place."""
    _featurizer, catalogue, x = fitted
    names = catalogue.names[:3]
    quality = np.tile([0.9, 0.6, 0.5], (len(x), 1))
    policy = QualitySquareCBPolicy(reward=RewardSpec(), estimator="logistic", kappa=5.0)
    policy.fit(x, catalogue.actions(x[0], 0.0, names), quality)
    actions = catalogue.actions(x[0], 0.0, names)
    assert np.argmax(policy.predict_one(x[0], actions)) == 0
    for i in range(60):
        policy.learn_one(x[i], actions, 0, 0.5, 0.0)  # model 0 now always fails
    assert np.argmax(policy.predict_one(x[0], actions)) == 1
    assert policy.residuals(names)[0] < -0.5


def _served_reward(
    policy: QualitySquareCBPolicy,
    test: RoutingDataset,
    xt: np.ndarray,
    catalogue: ActionCatalogue,
    spec: RewardSpec,
) -> float:
    rewards = true_rewards(test, spec)
    cost = catalogue.expected_cost(xt, test.input_tokens)
    total = 0.0
    for i in range(test.n_prompts):
        eligible = np.flatnonzero(test.available[i])
        actions = catalogue.actions_with_costs(
            cost[i], np.zeros(len(catalogue.names)), [catalogue.names[j] for j in eligible]
        )
        total += float(policy.predict_one(xt[i], actions) @ rewards[i, eligible])
    return total / test.n_prompts


def _warm_replay(
    data: RoutingDataset, spec_w_cost: float, make: Any
) -> tuple[Any, RoutingDataset, np.ndarray, ActionCatalogue, RewardSpec, np.ndarray]:
    """The seeded learning-loop replay of the tests below: the featurizer fitted on the train
    split, a quarter of it labelled (seed 1), the rest streamed as partial feedback in 3
    retraining rounds of the policy ``make(spec)`` builds. Returns (replay result, test split,
    its features, catalogue, reward spec, labelled mask)."""
    train, test = data.split("train"), data.split("test")
    featurizer = RequestFeaturizer(FeaturizerConfig(n_components=48)).fit(
        train.prompts["prompt"].tolist()
    )
    x = featurizer.transform(train.prompts["prompt"].tolist())
    xt = featurizer.transform(test.prompts["prompt"].tolist())
    catalogue = ActionCatalogue(data.models).fit(x, train.output_tokens, train.available)
    spec = RewardSpec(w_cost=spec_w_cost, cost_scale=Reference.of(train).c_hi)
    labelled = np.random.default_rng(1).random(train.n_prompts) < 0.25
    result = replay_rounds(
        lambda: make(spec),
        train,
        x,
        catalogue,
        catalogue.expected_cost(x, train.input_tokens),
        catalogue.expected_latency(x),
        labelled=labelled,
        rounds=3,
    )
    return result, test, xt, catalogue, spec, labelled


def _best_fixed(test: RoutingDataset, spec: RewardSpec) -> float:
    """The best single model's mean reward on ``test`` (known outcomes)."""
    rewards = np.where(test.available, true_rewards(test, spec), np.nan)
    return float(np.nanmax(np.nanmean(rewards, axis=0)))


def test_warm_started_learning_loop_against_the_best_single_model(bundled: RoutingDataset) -> None:
    """Seeded replay of the learning loop on the bundled sample: a quarter of the train split
    labelled, the rest partial feedback in 3 retraining rounds. On the unseen test prompts the
    final policy (exploration included) reaches the best single model's quality for at most 80%
    of its cost, and at the trade-off it learned with it serves within 0.03 of the best fixed
    model's reward (the cold VW policy of the previous loop ended 0.04 below it).

    Measured: it does not beat the best fixed model's reward at w_cost = 0.2 on this sample:
    there, always gemini-1.5-flash is nearly optimal (see experiments/results/SUMMARY.md)."""
    result, test, xt, catalogue, spec, labelled = _warm_replay(
        bundled,
        0.2,
        lambda spec: QualitySquareCBPolicy(reward=spec, estimator="logistic", C=0.1),
    )
    policy = result.policy
    assert isinstance(policy, QualitySquareCBPolicy)
    assert result.n_labelled == int(labelled.sum())
    # every streamed prompt logged exactly one outcome, the labelled ones all of theirs
    seen = np.isfinite(result.logged_quality)
    assert (seen[~labelled].sum(axis=1) == 1).all()
    ref = Reference.of(test)
    curve = quality_policy_curve(
        policy,
        test,
        xt,
        catalogue.expected_cost(xt, test.input_tokens),
        spec.cost_scale,
        np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 40)]),
    )
    assert any(c <= 0.8 * ref.best_cost and q >= 0.99 * ref.best_quality for c, q in curve)
    served = _served_reward(policy, test, xt, catalogue, spec)
    best_fixed = _best_fixed(test, spec)
    assert served > best_fixed - 0.03, (served, best_fixed)


# Two generalists and a maths specialist of the bundled sample, the 3-model set whose category
# routing gains most over its best single model on the train split itself (+0.050 at w_cost 0;
# experiments/cv/task_bound.py --search 3, which reads no test prompt): no one model is best on
# every category, so routing has value here. On the sample's 29 models gemini-1.5-flash alone is
# nearly optimal and no router measured beats it (the test above).
SPECIALIST_SET = ["Phi-3-mini-4k-instruct", "Yi-34B", "mathstral-7B"]


def test_warm_started_bandit_beats_the_best_single_model_where_routing_pays(
    bundled: RoutingDataset,
) -> None:
    """Seeded replay of the serving policy (the default estimator) on the bundled sample
    restricted to ``SPECIALIST_SET``: a quarter of the train split labelled (the prior), the
    rest partial feedback in 3 retraining rounds. On the unseen test prompts the final policy,
    exploration included, serves more than the best single model's reward + 0.02 (measured:
    +0.036 with this seed, +0.023 with seed 2; per-model LR's prior +0.027 / +0.015)."""
    result, test, xt, catalogue, spec, _labelled = _warm_replay(
        bundled.with_models(SPECIALIST_SET), 0.0, lambda spec: QualitySquareCBPolicy(reward=spec)
    )
    assert isinstance(result.policy, QualitySquareCBPolicy)
    assert result.policy.estimator == "blend"  # the default prior
    served = _served_reward(result.policy, test, xt, catalogue, spec)
    best_fixed = _best_fixed(test, spec)
    assert served > best_fixed + 0.02, (served, best_fixed)


def test_the_command_line_default_is_the_registry_default() -> None:
    from router.cli.options import DEFAULT_POLICY
    from router.policy.registry import DEFAULT_POLICY as REGISTRY_DEFAULT

    assert DEFAULT_POLICY == REGISTRY_DEFAULT == QualitySquareCBPolicy.name


def test_save_and_load_keep_prior_and_residuals(fitted: Fitted, tmp_path: Path) -> None:
    _featurizer, catalogue, x = fitted
    quality = np.random.default_rng(0).random((len(x), len(catalogue.names)))
    policy = QualitySquareCBPolicy(
        reward=RewardSpec(w_cost=0.1, cost_scale=1e-3), estimator="logistic"
    )
    policy.fit(x, catalogue.actions(x[0], 0.0), quality)
    actions = catalogue.actions(x[1], 200.0)
    policy.learn_one(x[1], actions, 2, 0.3, 0.7)
    loaded = Policy.load(policy.save(tmp_path / "p"))
    assert isinstance(loaded, QualitySquareCBPolicy)
    assert loaded.residual_count_ == {actions[2].model: 1}
    np.testing.assert_allclose(loaded.predict_one(x[1], actions), policy.predict_one(x[1], actions))
    (tmp_path / "p" / "residuals.json").unlink()
    with pytest.raises(PolicyError, match=r"residuals\.json is missing"):
        Policy.load(tmp_path / "p")


def test_cold_policy_explores_every_model_until_it_has_enough_outcomes(fitted: Fitted) -> None:
    """No data: uniform. Once a model has ``min_outcomes`` outcomes it loses its 1/K floor and
    the trade-off decides; without the rule (``min_outcomes=0``) cost decides from the start."""
    _featurizer, catalogue, x = fitted
    spec = RewardSpec(w_cost=1.0, cost_scale=1e-3)
    policy = QualitySquareCBPolicy(reward=spec, min_outcomes=5)
    actions: list[Action] = catalogue.actions(x[0], 1000.0)
    np.testing.assert_allclose(policy.predict_one(x[0], actions), 1.0 / len(actions))
    cheapest = int(np.argmin([a.expected_cost for a in actions]))
    dearest = int(np.argmax([a.expected_cost for a in actions]))
    for k in range(len(actions)):
        if k != dearest:
            for _ in range(5):
                policy.learn_one(x[0], actions, k, 1.0 / len(actions), 0.5)
    pmf = policy.predict_one(x[0], actions)
    assert pmf[dearest] == pytest.approx(1.0 / len(actions))  # still unexplored
    assert np.argmax(pmf) == cheapest
    greedy = QualitySquareCBPolicy(reward=spec, min_outcomes=0)
    pmf = greedy.predict_one(x[0], actions)
    assert np.all(pmf > 0) and np.argmax(pmf) == cheapest


def test_ips_residuals_weight_each_outcome_by_its_inverse_probability(tmp_path: Path) -> None:
    """``residuals="ips"``: b = (sum w r / sum w) * n_eff / (n_eff + kappa) with w = 1 / p, so
    an outcome logged at a low probability (exploration, where the policy did not rate the
    model highest) counts for more than one the policy was sure of; saved and loaded with
    the policy."""
    actions = [Action(m, np.zeros(1)) for m in ("a", "b")]
    x = np.zeros((40, 2))
    q = np.full((40, 2), 0.5)
    policy = QualitySquareCBPolicy(RewardSpec(), residuals="ips", kappa=2.0).fit(x, actions, q)
    predicted = policy.quality(x[:1], ["a"])[0, 0]
    logged = [(0.9, predicted - 0.1), (0.9, predicted - 0.1), (0.1, predicted + 0.2)]
    for p, reward in logged:
        policy.learn_one(x[0], actions, 0, p, reward)
    w = np.array([1 / p for p, _ in logged])
    r = np.array([reward - predicted for _, reward in logged])
    n_eff = w.sum() ** 2 / (w**2).sum()
    expected = (w @ r / w.sum()) * n_eff / (n_eff + 2.0)
    assert expected > 0  # the rare, explored outcome outweighs the two sure ones
    np.testing.assert_allclose(policy.residuals(["a", "b"]), [expected, 0.0])
    plain = QualitySquareCBPolicy(RewardSpec(), kappa=2.0).fit(x, actions, q)
    for p, reward in logged:
        plain.learn_one(x[0], actions, 0, p, reward)
    np.testing.assert_allclose(plain.residuals(["a"]), [r.sum() / (3 + 2.0)])  # < 0
    loaded = Policy.load(policy.save(tmp_path / "p"))
    assert isinstance(loaded, QualitySquareCBPolicy)
    np.testing.assert_allclose(loaded.residuals(["a", "b"]), [expected, 0.0])
    with pytest.raises(PolicyError, match="residuals"):
        QualitySquareCBPolicy(RewardSpec(), residuals="weighted")
