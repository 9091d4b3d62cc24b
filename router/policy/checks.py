"""The policy conformance checks, river-style (``river.checks.check_estimator``).

Every registered policy must pass them; a new policy gets them for free::

    from router.policy.checks import check_policy, policy_factory

    check_policy(policy_factory("my_policy"))  # PolicyCheckError names the failed check

(:class:`~features.errors.PolicyCheckError` is an ``AssertionError``: a test runner reports a
failure.)

A check takes a *factory* (``seed -> a new, unfitted policy``) and a :class:`CheckData`, a small
synthetic routing problem made here (contexts, one action per model, full-information quality
with unknown entries), so the checks need neither the bundled data set nor training code.

The constructor arguments a policy needs for the checks (the ``fixed`` policy its model, the
per-model bandits their arms) sit in :data:`UNIT_TEST_PARAMS`, keyed by registry name; a policy
not listed there is built with its defaults (and ``models=`` when its constructor takes it).
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.actions import ACTION_FEATURES
from features.errors import PolicyCheckError, PolicyError
from router.policy.base import PMF_TOLERANCE, Action, Policy, RewardSpec
from router.policy.registry import get_policy_class

PolicyFactory = Callable[[int], Policy]
"""``factory(seed)``: a new, unfitted policy seeded with ``seed``."""

MODELS = ("model-a", "model-b", "model-c", "model-d", "model-e", "model-f")
REWARD = RewardSpec(w_cost=0.5, cost_scale=1e-3)

UNIT_TEST_PARAMS: dict[str, Callable[[Sequence[str]], dict[str, Any]]] = {
    "direct": lambda models: {"estimator": "logistic"},  # the contract, not the CV search
    "fixed": lambda models: {"model": models[0]},
    "linucb": lambda models: {"models": list(models)},
    "epsilon_greedy": lambda models: {"models": list(models)},
}
"""Per registry name: the constructor arguments the checks use, given the models' names."""


def unit_test_params(name: str, models: Sequence[str] = MODELS) -> dict[str, Any]:
    """Constructor arguments for the checks: :data:`UNIT_TEST_PARAMS`, else the defaults (plus
    ``models`` when the constructor takes it: a per-model policy needs its arms)."""
    if name in UNIT_TEST_PARAMS:
        return UNIT_TEST_PARAMS[name](models)
    accepted = inspect.signature(get_policy_class(name)).parameters
    return {"models": list(models)} if "models" in accepted else {}


def policy_factory(
    name: str, models: Sequence[str] = MODELS, reward: RewardSpec = REWARD
) -> PolicyFactory:
    """A factory of the registered policy ``name`` with its :func:`unit_test_params`."""
    cls = get_policy_class(name)
    params = unit_test_params(name, models)

    def factory(seed: int) -> Policy:
        return cls(reward=reward, seed=seed, **params)

    factory.__name__ = f"policy_factory({name!r})"
    return factory


# ---- the synthetic routing problem ---------------------------------------------------------


@dataclass(frozen=True)
class CheckData:
    """A small routing problem: ``quality[i, j]`` of model j on context i (NaN: unknown),
    ``actions[i]`` the per-request actions of context i (all models, per-request costs)."""

    models: tuple[str, ...]
    contexts: np.ndarray
    actions: list[list[Action]]
    quality: np.ndarray

    def eligible(self, i: int, names: Sequence[str]) -> list[Action]:
        """Context i's actions for the models ``names``, in that order."""
        by_name = {a.model: a for a in self.actions[i]}
        return [by_name[m] for m in names]


def make_check_data(
    n: int = 200, n_features: int = 12, models: Sequence[str] = MODELS, seed: int = 0
) -> CheckData:
    """Contexts from a normal law; each model's quality a Bernoulli draw from a logistic model of
    the context (so there is something to learn); 10% of qualities unknown; per-request costs
    from per-model prices and a per-request length."""
    rng = np.random.default_rng(seed)
    k = len(models)
    contexts = rng.normal(size=(n, n_features))
    weights = rng.normal(size=(n_features, k))
    p = 1.0 / (1.0 + np.exp(-(contexts @ weights)))
    quality = (rng.random((n, k)) < p).astype(float)
    quality[rng.random((n, k)) < 0.1] = np.nan
    static = rng.uniform(0.0, 1.0, size=(k, len(ACTION_FEATURES)))
    static.flags.writeable = False
    price = rng.uniform(1e-4, 2e-3, size=k)
    speed = rng.uniform(200.0, 3000.0, size=k)
    length = rng.uniform(0.2, 2.0, size=n)
    actions = [
        [
            Action(m, static[j], float(price[j] * length[i]), float(speed[j] * length[i]))
            for j, m in enumerate(models)
        ]
        for i in range(n)
    ]
    return CheckData(tuple(models), contexts, actions, quality)


def _trained(factory: PolicyFactory, data: CheckData, seed: int = 0, steps: int = 60) -> Policy:
    """Warm-started on full information (100 contexts) where the policy supports it, then a
    partial-feedback stream over random eligible subsets: the same for every policy."""
    policy = factory(seed)
    n_fit = 100
    returned = policy.fit(data.contexts[:n_fit], data.actions[0], data.quality[:n_fit])
    assert returned is policy, f"{policy.name}: fit must return the policy itself"
    rng = np.random.default_rng(seed)
    for i in range(n_fit, n_fit + steps):
        size = int(rng.integers(1, len(data.models) + 1))
        names = [str(m) for m in rng.choice(data.models, size=size, replace=False)]
        actions = data.eligible(i, names)
        pmf = policy.predict_one(data.contexts[i], actions)
        k = int(rng.choice(len(actions), p=pmf))
        quality = data.quality[i, data.models.index(actions[k].model)]
        reward = float(REWARD.reward(0.5 if np.isnan(quality) else quality, 0.0, 0.0))
        learn: Callable[..., object] = policy.learn_one  # a subclass may return something
        out = learn(data.contexts[i], actions, k, float(pmf[k]), reward)
        assert out is None, f"{policy.name}: learn_one must return None, got {out!r}"
    return policy


def _probe(data: CheckData) -> range:
    """Contexts the checks predict on: never seen in training."""
    return range(len(data.contexts) - 30, len(data.contexts))


# ---- the checks -----------------------------------------------------------------------------


def check_pmf_is_a_distribution_over_any_subset(factory: PolicyFactory, data: CheckData) -> None:
    """A pmf over exactly the eligible actions, whatever subset (and order) they come in; > 0
    everywhere for a policy that declares ``explores``."""
    policy = _trained(factory, data)
    rng = np.random.default_rng(1)
    for i in _probe(data):
        size = int(rng.integers(1, len(data.models) + 1))
        names = [str(m) for m in rng.choice(data.models, size=size, replace=False)]
        pmf = policy.predict_one(data.contexts[i], data.eligible(i, names))
        assert pmf.shape == (size,), f"{policy.name}: pmf shape {pmf.shape} for {size} actions"
        assert abs(pmf.sum() - 1.0) <= PMF_TOLERANCE, f"{policy.name}: pmf sums to {pmf.sum()}"
        assert np.all(pmf >= 0), f"{policy.name}: negative probability in {pmf}"
        if policy.explores:
            assert np.all(pmf > 0), f"{policy.name} explores but gave a zero probability: {pmf}"


def check_same_seed_same_result(factory: PolicyFactory, data: CheckData) -> None:
    """Randomness comes only from the seed: two policies trained alike predict alike."""
    a, b = _trained(factory, data, seed=7), _trained(factory, data, seed=7)
    for i in _probe(data):
        pa = a.predict_one(data.contexts[i], data.actions[i])
        pb = b.predict_one(data.contexts[i], data.actions[i])
        np.testing.assert_array_equal(pa, pb, err_msg=f"{a.name}: same seed, other pmf")


def check_save_load_round_trip(factory: PolicyFactory, data: CheckData) -> None:
    """``Policy.load(policy.save(dir))`` is the same policy: class, reward, params and pmfs."""
    policy = _trained(factory, data)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = Policy.load(policy.save(Path(tmp) / "policy"))
    assert type(loaded) is type(policy), f"{policy.name}: loaded as {type(loaded).__name__}"
    assert loaded.reward == policy.reward, f"{policy.name}: reward not restored"
    assert loaded.params() == policy.params(), f"{policy.name}: params not restored"
    for i in _probe(data):
        np.testing.assert_allclose(
            loaded.predict_one(data.contexts[i], data.actions[i]),
            policy.predict_one(data.contexts[i], data.actions[i]),
            atol=1e-6,
            err_msg=f"{policy.name}: the loaded policy predicts otherwise",
        )


def check_inputs_are_not_modified(factory: PolicyFactory, data: CheckData) -> None:
    """``fit``, ``predict_one`` and ``learn_one`` leave the caller's arrays as they were."""
    contexts, quality = data.contexts[:100].copy(), data.quality[:100].copy()
    policy = factory(0)
    policy.fit(contexts, data.actions[0], quality)
    np.testing.assert_array_equal(contexts, data.contexts[:100], err_msg="fit changed contexts")
    np.testing.assert_array_equal(quality, data.quality[:100], err_msg="fit changed quality")
    x = data.contexts[150].copy()
    pmf = policy.predict_one(x, data.actions[150])
    policy.learn_one(x, data.actions[150], int(np.argmax(pmf)), float(pmf.max()), 1.0)
    np.testing.assert_array_equal(x, data.contexts[150], err_msg="a context was changed")


def check_contract_violations_are_refused(factory: PolicyFactory, data: CheckData) -> None:
    """Bad calls raise :class:`PolicyError` with a message saying what is wrong."""
    policy = factory(0)
    x, actions = data.contexts[0], data.actions[0]
    bad_calls: list[tuple[str, Callable[[], object]]] = [
        ("no eligible actions", lambda: policy.predict_one(x, [])),
        ("duplicate", lambda: policy.predict_one(x, [actions[0], actions[0]])),
        ("1-D", lambda: policy.predict_one(x[None, :], actions)),
        ("chosen", lambda: policy.learn_one(x, actions, len(actions), 0.5, 1.0)),
        ("probability", lambda: policy.learn_one(x, actions, 0, 0.0, 1.0)),
        ("reward", lambda: policy.learn_one(x, actions, 0, 0.5, float("nan"))),
    ]
    for expected, call in bad_calls:
        try:
            call()
        except PolicyError as exc:
            assert expected in str(exc), f"{policy.name}: {exc!s} does not say {expected!r}"
        else:
            raise PolicyCheckError(f"{policy.name}: no PolicyError for a call with {expected!r}")


CHECKS: tuple[Callable[[PolicyFactory, CheckData], None], ...] = (
    check_pmf_is_a_distribution_over_any_subset,
    check_same_seed_same_result,
    check_save_load_round_trip,
    check_inputs_are_not_modified,
    check_contract_violations_are_refused,
)


def yield_checks() -> Iterator[Callable[[PolicyFactory, CheckData], None]]:
    """Each check, for a test runner to report one by one (``pytest.mark.parametrize``)."""
    yield from CHECKS


def check_policy(factory: PolicyFactory, data: CheckData | None = None) -> None:
    """Run every check on the policies ``factory`` makes; raise
    :class:`~features.errors.PolicyCheckError` (an ``AssertionError``) naming the first check
    that fails (an assertion, or any exception the policy raised in it)."""
    data = data or make_check_data()
    for check in yield_checks():
        try:
            check(factory, data)
        except Exception as exc:
            raise PolicyCheckError(f"{check.__name__}: {type(exc).__name__}: {exc}") from exc
