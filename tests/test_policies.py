"""The generic conformance suite, run on every registered policy, plus policy-specific checks."""

from __future__ import annotations

import numpy as np
import pytest

from router.errors import ConfigError, PolicyError
from router.policy import POLICIES, Policy, RewardSpec, get_policy_class
from router.policy.actions import ActionCatalogue
from router.policy.base import Action
from training.datasets import RoutingDataset

SPEC = RewardSpec(w_cost=0.5, cost_scale=1e-3)


def make(name: str, models: list[str], seed: int = 0) -> Policy:
    cls = get_policy_class(name)
    if name == "fixed":
        return cls(reward=SPEC, seed=seed, model=models[0])  # type: ignore[call-arg]
    if name in ("linucb", "epsilon_greedy"):
        return cls(reward=SPEC, seed=seed, models=models)  # type: ignore[call-arg]
    return cls(reward=SPEC, seed=seed)


def trained(name: str, small: RoutingDataset, fitted, seed: int = 0, steps: int = 60) -> Policy:
    """Warm-started on full information where the policy supports it, then a short
    partial-feedback stream: the same for every policy."""
    _featurizer, catalogue, x = fitted
    train = small.split("train")
    policy = make(name, catalogue.names, seed)
    policy.fit(x[:100], catalogue.actions(x[0], 100.0), train.quality[:100])
    rng = np.random.default_rng(seed)
    for i in range(100, 100 + steps):
        eligible = [m for j, m in enumerate(catalogue.names) if train.available[i, j]]
        actions = catalogue.actions(x[i], 100.0, eligible)
        pmf = policy.predict_one(x[i], actions)
        k = int(rng.choice(len(actions), p=pmf))
        quality = train.quality[i, catalogue.index[actions[k].model]]
        assert policy.learn_one(x[i], actions, k, float(pmf[k]), float(quality)) is None
    return policy


@pytest.fixture(params=sorted(POLICIES))
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _contexts(fitted) -> np.ndarray:
    return fitted[2][300:330]


def test_pmf_is_a_distribution_over_any_subset(name: str, small: RoutingDataset, fitted) -> None:
    policy = trained(name, small, fitted)
    catalogue: ActionCatalogue = fitted[1]
    rng = np.random.default_rng(1)
    for x in _contexts(fitted):
        size = int(rng.integers(1, len(catalogue.names) + 1))
        subset = list(rng.choice(catalogue.names, size=size, replace=False))
        pmf = policy.predict_one(x, catalogue.actions(x, 500.0, subset))
        assert pmf.shape == (size,)
        assert pmf.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.all(pmf >= 0)
        if policy.explores:
            assert np.all(pmf > 0), f"{name} explores but gave a zero probability"


def test_same_seed_same_result(name: str, small: RoutingDataset, fitted) -> None:
    a, b = trained(name, small, fitted, seed=7), trained(name, small, fitted, seed=7)
    catalogue: ActionCatalogue = fitted[1]
    for x in _contexts(fitted):
        actions = catalogue.actions(x, 500.0)
        np.testing.assert_array_equal(a.predict_one(x, actions), b.predict_one(x, actions))


def test_save_load_round_trip(name: str, small: RoutingDataset, fitted, tmp_path) -> None:
    policy = trained(name, small, fitted)
    policy.save(tmp_path / name)
    loaded = Policy.load(tmp_path / name)
    assert type(loaded) is type(policy)
    assert loaded.reward == policy.reward
    catalogue: ActionCatalogue = fitted[1]
    for x in _contexts(fitted):
        actions = catalogue.actions(x, 500.0)
        np.testing.assert_allclose(
            loaded.predict_one(x, actions), policy.predict_one(x, actions), atol=1e-6
        )


def test_contract_violations_are_refused(name: str, fitted) -> None:
    catalogue: ActionCatalogue = fitted[1]
    policy = make(name, catalogue.names)
    x = fitted[2][0]
    actions = catalogue.actions(x, 10.0)
    with pytest.raises(PolicyError, match="no eligible actions"):
        policy.predict_one(x, [])
    with pytest.raises(PolicyError, match="duplicate"):
        policy.predict_one(x, [actions[0], actions[0]])
    with pytest.raises(PolicyError, match="1-D"):
        policy.predict_one(x[None, :], actions)
    with pytest.raises(PolicyError, match="chosen"):
        policy.learn_one(x, actions, len(actions), 0.5, 1.0)
    with pytest.raises(PolicyError, match="probability"):
        policy.learn_one(x, actions, 0, 0.0, 1.0)
    with pytest.raises(PolicyError, match="reward"):
        policy.learn_one(x, actions, 0, 0.5, float("nan"))


def test_unknown_policy_name() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        get_policy_class("nope")


def _toy_actions() -> list[Action]:
    return [
        Action("good", np.zeros(5), expected_cost=1e-3),
        Action("bad", np.ones(5), expected_cost=1e-3),
        Action("pricey", np.full(5, 2.0), expected_cost=1e-1),
    ]


@pytest.mark.parametrize("name", ["vw_squarecb", "epsilon_greedy", "linucb"])
def test_bandits_learn_which_model_is_better(name: str) -> None:
    """From partial feedback alone, the policy comes to prefer the model with the best reward."""
    policy = make(name, ["good", "bad", "pricey"], seed=3)
    rng = np.random.default_rng(3)
    truth = {"good": 0.9, "bad": 0.2, "pricey": 0.9}
    actions = _toy_actions()
    for _ in range(400):
        x = rng.normal(size=4)
        pmf = policy.predict_one(x, actions)
        k = int(rng.choice(3, p=pmf))
        reward = SPEC.reward(
            float(rng.random() < truth[actions[k].model]), actions[k].expected_cost, 0.0
        )
        policy.learn_one(x, actions, k, float(pmf[k]), float(reward))
    pmf = policy.predict_one(rng.normal(size=4), actions)
    assert int(np.argmax(pmf)) == 0, pmf


def test_vw_epsilon_floor_is_respected() -> None:
    policy = make("vw_squarecb", ["good", "bad", "pricey"])
    assert isinstance(policy, get_policy_class("vw_squarecb"))
    pmf = policy.predict_one(np.ones(4), _toy_actions())
    assert pmf.min() >= 0.02 / 3 - 1e-6


def test_reward_spec() -> None:
    spec = RewardSpec(w_cost=2.0, w_latency=0.5, cost_scale=0.01, latency_scale=1000.0)
    assert spec.reward(1.0, 0.005, 2000.0) == pytest.approx(1.0 - 1.0 - 1.0)
    with pytest.raises(ValueError, match="w_cost"):
        RewardSpec(w_cost=-1)
    with pytest.raises(ValueError, match="cost_scale"):
        RewardSpec(cost_scale=0)


def test_direct_router_beats_random_on_held_out_prompts(small: RoutingDataset, fitted) -> None:
    featurizer, catalogue, x = fitted
    train, test = small.split("train"), small.split("test")
    policy = get_policy_class("direct")(reward=RewardSpec()).fit(
        x, catalogue.actions(x[0], 0.0), train.quality
    )
    xt = featurizer.transform(test.prompts["prompt"].tolist())
    q_hat = policy.predict_quality(xt)  # type: ignore[attr-defined]
    chosen = np.argmax(np.where(test.available, q_hat, -np.inf), axis=1)
    routed = test.quality[np.arange(len(chosen)), chosen].mean()
    random = np.nanmean(test.quality)
    assert routed > random + 0.1


def test_vw_warm_start_from_full_information_routes_better_than_cold(
    small: RoutingDataset, fitted
) -> None:
    featurizer, catalogue, x = fitted
    train, test = small.split("train"), small.split("test")
    cls = get_policy_class("vw_squarecb")
    warm = cls(reward=RewardSpec()).fit(x, catalogue.actions(x[0], 0.0), train.quality)
    cold = cls(reward=RewardSpec())
    xt = featurizer.transform(test.prompts["prompt"].tolist())

    def served_quality(policy: Policy) -> float:
        total = 0.0
        for i, row in enumerate(xt):
            eligible = [m for j, m in enumerate(catalogue.names) if test.available[i, j]]
            pmf = policy.predict_one(row, catalogue.actions(row, 100.0, eligible))
            cols = [catalogue.index[m] for m in eligible]
            total += float(pmf @ test.quality[i, cols])
        return total / len(xt)

    assert served_quality(warm) > served_quality(cold) + 0.05
