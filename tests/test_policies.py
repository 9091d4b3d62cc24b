"""The conformance checks (router.policy.checks) on every registered policy, and checks of
particular policies (VW's exact fast path, warm start, learning from partial feedback)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from features.errors import ConfigError
from features.featurizer import RequestFeaturizer
from router.policy import POLICIES, Policy, RewardSpec, get_policy_class
from router.policy.actions import ActionCatalogue
from router.policy.base import Action
from router.policy.checks import (
    CheckData,
    PolicyFactory,
    check_policy,
    make_check_data,
    policy_factory,
    unit_test_params,
    yield_checks,
)
from training.datasets import RoutingDataset

SPEC = RewardSpec(w_cost=0.5, cost_scale=1e-3)


def make(name: str, models: list[str], seed: int = 0) -> Policy:
    """A registered policy with the conformance checks' constructor arguments."""
    return policy_factory(name, models, SPEC)(seed)


def trained(
    small: RoutingDataset,
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
    seed: int = 0,
    steps: int = 60,
) -> Policy:
    """The VW policy warm-started on real full-information data, then a short
    partial-feedback stream (the fast-path tests below start from it)."""
    _featurizer, catalogue, x = fitted
    train = small.split("train")
    policy = make("vw_squarecb", catalogue.names, seed)
    policy.fit(x[:100], catalogue.actions(x[0], 100.0), train.quality[:100])
    rng = np.random.default_rng(seed)
    for i in range(100, 100 + steps):
        eligible = [m for j, m in enumerate(catalogue.names) if train.available[i, j]]
        actions = catalogue.actions(x[i], 100.0, eligible)
        pmf = policy.predict_one(x[i], actions)
        k = int(rng.choice(len(actions), p=pmf))
        quality = train.quality[i, catalogue.index[actions[k].model]]
        policy.learn_one(x[i], actions, k, float(pmf[k]), float(quality))
    return policy


# ---- the conformance checks (router.policy.checks) on every registered policy ---------------


@pytest.fixture(scope="module")
def check_data() -> CheckData:
    return make_check_data()


@pytest.mark.parametrize("check", list(yield_checks()), ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_registered_policy_conforms(
    name: str, check: Callable[[PolicyFactory, CheckData], None], check_data: CheckData
) -> None:
    check(policy_factory(name), check_data)


class _Greedy(Policy):
    """Always the first action: a valid policy, until it claims to explore."""

    name = "first"

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        pmf = np.zeros(len(actions))
        pmf[0] = 1.0
        return pmf


class _ClaimsToExplore(_Greedy):
    explores = True


class _Unseeded(_Greedy):
    """Ignores its seed: two policies built alike differ."""

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        return np.random.default_rng().dirichlet(np.ones(len(actions)))


class _Forgetful(Policy):
    """Prefers the action it last learned from, but saves nothing of it."""

    name = "forgetful"
    explores = True

    def __init__(self, reward: RewardSpec | None = None, seed: int = 0) -> None:
        super().__init__(reward, seed)
        self.last: str | None = None

    def _predict_one(self, context: np.ndarray, actions: Sequence[Action]) -> np.ndarray:
        pmf = np.ones(len(actions))
        pmf[[i for i, a in enumerate(actions) if a.model == self.last]] = 10.0
        normalised: np.ndarray = pmf / pmf.sum()
        return normalised

    def _learn_one(
        self,
        context: np.ndarray,
        actions: Sequence[Action],
        chosen: int,
        probability: float,
        reward: float,
    ) -> None:
        self.last = actions[chosen].model


@pytest.mark.parametrize(
    ("cls", "failed"),
    [
        (_ClaimsToExplore, "check_pmf_is_a_distribution_over_any_subset"),
        (_Unseeded, "check_same_seed_same_result"),
        (_Forgetful, "check_save_load_round_trip"),
    ],
)
def test_check_policy_catches_a_broken_policy(
    cls: type[Policy], failed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks can fail: each broken policy is caught by the check meant for it."""
    monkeypatch.setitem(POLICIES, cls.name, cls)  # registered, so that Policy.load finds it
    with pytest.raises(AssertionError, match=failed):
        check_policy(lambda seed: cls(reward=SPEC, seed=seed))


def test_check_policy_passes_a_registered_policy() -> None:
    check_policy(policy_factory("random"))


def test_unknown_names_get_default_params() -> None:
    assert unit_test_params("random") == {}
    assert unit_test_params("linucb", ["a", "b"]) == {"models": ["a", "b"]}
    assert unit_test_params("fixed", ["a", "b"]) == {"model": "a"}


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


def test_direct_router_beats_random_on_held_out_prompts(
    small: RoutingDataset, fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray]
) -> None:
    """The default (cross-validated) quality predictor, on every third model of the catalogue
    (ten models, strong and weak: the routing problem stays, at a third of the fitting time)."""
    featurizer, catalogue, x = fitted
    train, test = small.split("train"), small.split("test")
    cols = np.arange(0, len(catalogue.names), 3)
    actions = [catalogue.actions(x[0], 0.0)[j] for j in cols]
    policy = get_policy_class("direct")(reward=RewardSpec()).fit(x, actions, train.quality[:, cols])
    xt = featurizer.transform(test.prompts["prompt"].tolist())
    q_hat = policy.predict_quality(xt)  # type: ignore[attr-defined]
    quality, available = test.quality[:, cols], test.available[:, cols]
    chosen = np.argmax(np.where(available, q_hat, -np.inf), axis=1)
    routed = quality[np.arange(len(chosen)), chosen].mean()
    random = np.nanmean(np.where(available, quality, np.nan))
    assert routed > random + 0.1


def test_vw_warm_start_from_full_information_routes_better_than_cold(
    small: RoutingDataset, fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray]
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


# ---- the VW policy's exact fast path -----------------------------------------------------------


def _random_subsets(rng: np.random.Generator, names: list[str], n: int) -> list[list[str]]:
    sizes = rng.integers(1, len(names) + 1, size=n)
    return [list(rng.choice(names, size=int(s), replace=False)) for s in sizes]


def _assert_fast_path_equals_vw(
    policy: Policy, catalogue: ActionCatalogue, contexts: Sequence[np.ndarray]
) -> None:
    """The fast path's pmf equals Workspace.predict's bit for bit, on every context and on
    random eligible subsets (in random orders)."""
    from router.policy.vw import VWSquareCBPolicy

    assert isinstance(policy, VWSquareCBPolicy)
    rng = np.random.default_rng(11)
    subsets = [catalogue.names, *_random_subsets(rng, catalogue.names, len(contexts) - 1)]
    for x, subset in zip(contexts, subsets, strict=True):
        actions = catalogue.actions(x, 300.0, subset)
        fast = policy._fast_pmf(x, actions)
        assert fast is not None, policy.fast_path_error
        np.testing.assert_array_equal(fast, policy._vw_pmf(x, actions))
    assert policy.fast_path_error is None


def _probe_contexts(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Real contexts, and synthetic ones: other scales, zeros, ties of %.6g rounding."""
    rows = [x[i] for i in range(0, len(x), 7)]
    for _ in range(40):
        z = x[rng.integers(len(x))] * rng.choice([0.5, 1.0, 3.0, 1e-3])
        z[rng.random(len(z)) < 0.2] = 0.0
        z[rng.integers(len(z))] = 3 / 512  # 0.005859375: a tie at the 7th digit
        z[rng.integers(len(z))] = 10.0 ** int(rng.integers(-8, 6))
        rows.append(z)
    return rows


def test_vw_fast_path_equals_workspace_predict(
    small: RoutingDataset,
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
    tmp_path: Path,
) -> None:
    """After fit, after learn_one updates and after save/load: the same pmfs as VW's."""
    _featurizer, catalogue, x = fitted
    rng = np.random.default_rng(5)
    contexts = _probe_contexts(x, rng)
    policy = trained(small, fitted)  # fit + 60 partial-feedback updates
    _assert_fast_path_equals_vw(policy, catalogue, contexts)
    train = small.split("train")
    for i in range(160, 200):  # more updates: the fast path is rebuilt from the new weights
        actions = catalogue.actions(x[i], 100.0)
        policy.learn_one(x[i], actions, i % len(actions), 0.5, float(train.quality[i, i % 29]))
    _assert_fast_path_equals_vw(policy, catalogue, contexts)
    policy.save(tmp_path / "vw")
    loaded = Policy.load(tmp_path / "vw")
    assert loaded._n_learned == policy._n_learned  # type: ignore[attr-defined]
    _assert_fast_path_equals_vw(loaded, catalogue, contexts)


def test_vw_fast_path_serves_once_learning_pauses(
    small: RoutingDataset, fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray]
) -> None:
    from router.policy.vw import _REBUILD_AFTER

    _featurizer, catalogue, x = fitted
    policy = trained(small, fitted)
    served = []
    for i in range(300, 300 + 2 * _REBUILD_AFTER):
        actions = catalogue.actions(x[i], 100.0)
        pmf = policy.predict_one(x[i], actions)
        reference = policy._vw_pmf(x[i], actions)  # type: ignore[attr-defined]
        np.testing.assert_array_equal(pmf, reference / reference.sum())
        served.append(policy._scorer is not None)  # type: ignore[attr-defined]
    # right after learning VW predicts; once predictions follow without learning, the fast path
    assert served == [False] * _REBUILD_AFTER + [True] * _REBUILD_AFTER
    policy.learn_one(x[0], catalogue.actions(x[0], 100.0), 0, 0.5, 1.0)
    assert policy._scorer is None  # type: ignore[attr-defined]


def test_vw_fast_path_on_untrained_and_unsupported_policies(
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
) -> None:
    _featurizer, catalogue, x = fitted
    from router.policy.vw import VWSquareCBPolicy

    cls = get_policy_class("vw_squarecb")
    assert issubclass(cls, VWSquareCBPolicy)
    fresh = cls(reward=SPEC)  # counter 0: gamma 0, every score equal: a uniform pmf
    _assert_fast_path_equals_vw(fresh, catalogue, list(x[:5]))
    toy = cls(reward=SPEC)
    fast = toy._fast_pmf(np.ones(4), _toy_actions())
    np.testing.assert_array_equal(fast, toy._vw_pmf(np.ones(4), _toy_actions()))
    other = cls(reward=SPEC, extra_args="--l2 1e-6")  # not reproduced: VW predicts
    assert other.fast_path_error is not None
    pmf = other.predict_one(x[0], catalogue.actions(x[0], 100.0))
    assert pmf.sum() == pytest.approx(1.0)


def test_vw_text_parsing_is_reproduced_exactly() -> None:
    """Our float32 reading of f"{v:.6g}" is VW's own, on values of every scale."""
    from vowpalwabbit import Workspace

    from router.policy.vw_scorer import vw_text_value, vw_text_values

    vw = Workspace("--cb_adf --quiet")
    index = vw.hash_feature("0", vw.hash_space("c")) & (vw.num_weights() - 1)
    vw.set_weight(index, 0, 1.0)  # the score of an example is then the value VW read

    rng = np.random.default_rng(3)
    values = rng.normal(size=1500) * 10.0 ** rng.integers(-20, 13, size=1500)
    special = [3 / 512, 0.5, 0.125, 1.0, 10.0, 1e-5, 0.1, 1.2573, 9.999995, 999999.5, 1e12]
    values = np.concatenate([values, special, np.negative(special), [0.0]])
    read = np.array(
        [vw.predict(["shared |c 0:" + f"{v:.6g}", "|a m=x"])[0] if v else 0.0 for v in values],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(vw_text_values(values), read)
    np.testing.assert_array_equal([vw_text_value(float(v)) if v else 0.0 for v in values], read)
    assert vw_text_values(np.array([1.0, np.nan])) is None
    assert vw_text_values(np.array([1.0, 2e13])) is None


def test_squarecb_pmf_floor_and_ties() -> None:
    from router.policy.vw_scorer import squarecb_pmf

    f32 = np.float32
    one = squarecb_pmf(np.array([0.3], dtype=np.float32), f32(100.0), f32(0.02))
    np.testing.assert_array_equal(one, [1.0])
    tied = squarecb_pmf(np.zeros(3, dtype=np.float32), f32(100.0), f32(0.02))
    assert tied[0] == f32(1.0) - (f32(1 / 3) + f32(1 / 3))  # ties: the first is the best
    pmf = squarecb_pmf(np.array([0.0, 1.0, 0.001], dtype=np.float32), f32(1e4), f32(0.3))
    assert pmf.min() >= f32(0.1) and abs(float(pmf.sum()) - 1.0) < 1e-6


def test_catalogue_actions_share_read_only_rows(
    fitted: tuple[RequestFeaturizer, ActionCatalogue, np.ndarray],
) -> None:
    """One read-only features row per model, reused by every request (the fast path finds an
    eligible set by the identity of these rows); the actions equal plainly built ones."""
    _featurizer, catalogue, x = fitted
    model = "gemini-1.5-pro-002"
    j = catalogue.index[model]
    costs, latencies = np.arange(29.0), np.arange(29.0) * 2
    a, b = catalogue.actions_with_costs(costs, latencies, [model, model])
    assert a.features is b.features and not a.features.flags.writeable
    plain = Action(model, catalogue.static_features[j], float(j), float(2 * j))
    assert vars(a).keys() == vars(plain).keys()
    assert (a.model, a.expected_cost, a.expected_latency_ms) == (model, float(j), float(2 * j))
    np.testing.assert_array_equal(a.features, plain.features)
    assert catalogue.actions(x[0], 10.0)[j].features is a.features


def test_vw_text_vectorised_formatter_writes_the_online_text() -> None:
    """The one VW text format: the vectorised formatter (retraining at scale) writes, character
    for character, the lines the policy learns from (numbers of every scale, zeros, exponent
    spellings, rounding ties, model names with unsafe characters)."""
    import pyarrow as pa

    from router.policy.vw_text import example_lines, examples_text

    rng = np.random.default_rng(0)
    n, width, k = 200, 12, 4
    context = rng.normal(size=(n, width)) * 10.0 ** rng.integers(-8, 7, size=(n, width))
    context[rng.random((n, width)) < 0.3] = 0.0
    context[0, :4] = [999999.5, 1.25e-4, 0.000125, 4207.195]  # notation and tie edge cases
    per_action = rng.normal(size=(n * k, 6)) * 10.0 ** rng.integers(-6, 5, size=(n * k, 6))
    names = [[f"model {j}|v:{i % 3}" for j in range(k)] for i in range(n)]
    offsets = np.arange(0, n * k + 1, k)
    chosen = rng.integers(0, k, n)
    reward = rng.normal(size=n) * 10.0 ** rng.integers(-7, 2, size=n)
    probability = rng.uniform(1e-5, 1.0, n)
    texts = examples_text(
        context,
        pa.array(names, pa.list_(pa.string())),
        per_action,
        offsets,
        offsets[:-1] + chosen,
        -reward,
        probability,
    )
    for i in range(n):
        actions = [Action(names[i][j], per_action[i * k + j]) for j in range(k)]
        lines = example_lines(context[i], actions, int(chosen[i]), probability[i], reward[i])
        assert texts[i] == "\n".join(lines)
