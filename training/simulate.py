"""Bandit replay on a full-information routing dataset (partial feedback).

Prompts stream once in a seeded order. For each, the policy gets the request features and the
available models as actions (with predicted cost/latency), returns a pmf, one model is sampled,
and the policy learns only that model's reward (its true outcome in the dataset). We record the
reward and the regret against the per-prompt oracle under the same reward spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from features.errors import ConfigError
from router.policy.actions import ActionCatalogue
from router.policy.base import Action, Policy, RewardSpec
from router.policy.igw import igw_pmf
from router.policy.quality import QualitySquareCBPolicy
from training.datasets import RoutingDataset
from training.metrics import Curve


@dataclass(frozen=True)
class ReplayTrace:
    """Per-step record of one replay. Arrays have shape (n_steps,)."""

    reward: np.ndarray
    oracle_reward: np.ndarray
    chosen_probability: np.ndarray

    @property
    def cumulative_regret(self) -> np.ndarray:
        return np.cumsum(self.oracle_reward - self.reward)

    def moving_average_reward(self, window: int = 200) -> np.ndarray:
        kernel = np.ones(min(window, len(self.reward))) / min(window, len(self.reward))
        return np.convolve(self.reward, kernel, mode="valid")


def true_rewards(data: RoutingDataset, spec: RewardSpec) -> np.ndarray:
    """Reward of every (prompt, model), shape (n, M); -inf where the outcome is unknown."""
    reward = spec.reward(data.quality, data.cost, data.latency)
    return np.where(data.available, reward, -np.inf)


def _eligible_actions(
    data: RoutingDataset,
    catalogue: ActionCatalogue,
    expected_cost: np.ndarray,
    expected_latency: np.ndarray,
    i: int,
) -> tuple[np.ndarray, list[Action]]:
    """Columns of the models known on prompt ``i`` and their actions (same order)."""
    eligible = np.flatnonzero(data.available[i])
    names = [catalogue.names[j] for j in eligible]
    return eligible, catalogue.actions_with_costs(expected_cost[i], expected_latency[i], names)


def replay(
    policy: Policy,
    data: RoutingDataset,
    contexts: np.ndarray,
    catalogue: ActionCatalogue,
    expected_cost: np.ndarray,
    expected_latency: np.ndarray,
    seed: int = 0,
    on_step: Callable[[], None] | None = None,
) -> ReplayTrace:
    """One pass of partial-feedback learning over ``data`` (the train split)."""
    rng = np.random.default_rng(seed)
    rewards = true_rewards(data, policy.reward)
    order = rng.permutation(data.n_prompts)
    got, best, prob = (np.empty(len(order)) for _ in range(3))
    for t, i in enumerate(order):
        eligible, actions = _eligible_actions(data, catalogue, expected_cost, expected_latency, i)
        pmf = policy.predict_one(contexts[i], actions)
        k = int(rng.choice(len(actions), p=pmf))
        reward = float(rewards[i, eligible[k]])
        policy.learn_one(contexts[i], actions, k, float(pmf[k]), reward)
        got[t], best[t], prob[t] = reward, rewards[i, eligible].max(), pmf[k]
        if on_step is not None:
            on_step()
    return ReplayTrace(reward=got, oracle_reward=best, chosen_probability=prob)


def expected_point(
    policy: Policy,
    data: RoutingDataset,
    contexts: np.ndarray,
    catalogue: ActionCatalogue,
    expected_cost: np.ndarray,
    expected_latency: np.ndarray,
) -> tuple[float, float]:
    """(mean cost, mean quality) of serving ``data`` with the policy's pmf (no learning)."""
    cost = quality = 0.0
    for i in range(data.n_prompts):
        eligible, actions = _eligible_actions(data, catalogue, expected_cost, expected_latency, i)
        pmf = policy.predict_one(contexts[i], actions)
        cost += float(pmf @ data.cost[i, eligible])
        quality += float(pmf @ data.quality[i, eligible])
    return cost / data.n_prompts, quality / data.n_prompts


@dataclass
class RoundsResult:
    """A replay in retraining rounds: the final policy, its trace and what it logged."""

    policy: Policy
    trace: ReplayTrace
    logged_quality: np.ndarray  # (n, M): the labelled rows' outcomes and each streamed choice's
    n_labelled: int


def replay_rounds(
    make_policy: Callable[[], Policy],
    data: RoutingDataset,
    contexts: np.ndarray,
    catalogue: ActionCatalogue,
    expected_cost: np.ndarray,
    expected_latency: np.ndarray,
    *,
    labelled: np.ndarray | None = None,
    rounds: int = 4,
    seed: int = 0,
    on_step: Callable[[], None] | None = None,
) -> RoundsResult:
    """The learning loop on a full-information dataset: partial feedback, periodic retraining.

    ``labelled`` rows (a boolean mask) are a labelled set the user brings: every model's outcome
    on them is known and the first policy is fitted on them (none: a cold start). The other rows
    stream once in a seeded order, split into ``rounds`` equal rounds of traffic; in each round
    the serving policy decides (a pmf), one model is sampled and only its outcome is seen and
    learned online (``learn_one``); after each round a new policy is fitted on everything seen
    so far (the labelled rows plus the chosen models' outcomes), as the retraining loop does.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(data.n_prompts, bool) if labelled is None else np.asarray(labelled, bool)
    logged = np.full(data.quality.shape, np.nan)
    logged[mask] = np.where(data.available[mask], data.quality[mask], np.nan)
    all_actions = catalogue.actions_with_costs(
        np.zeros(len(catalogue.names)), np.zeros(len(catalogue.names))
    )
    policy = make_policy()
    rewards_true = true_rewards(data, policy.reward)
    seen = mask.copy()
    if seen.any():
        policy.fit(contexts[seen], all_actions, logged[seen])
    stream = rng.permutation(np.flatnonzero(~mask))
    got, best, prob = (np.empty(len(stream)) for _ in range(3))
    t = 0
    for chunk in np.array_split(stream, rounds):
        for i in chunk:
            eligible, actions = _eligible_actions(
                data, catalogue, expected_cost, expected_latency, i
            )
            pmf = policy.predict_one(contexts[i], actions)
            k = int(rng.choice(len(actions), p=pmf))
            m = eligible[k]
            reward = float(rewards_true[i, m])
            policy.learn_one(contexts[i], actions, k, float(pmf[k]), reward)
            logged[i, m] = data.quality[i, m]
            got[t], best[t], prob[t] = reward, rewards_true[i, eligible].max(), pmf[k]
            t += 1
            if on_step is not None:
                on_step()
        seen[chunk] = True
        policy = make_policy().fit(contexts[seen], all_actions, logged[seen])
    trace = ReplayTrace(reward=got, oracle_reward=best, chosen_probability=prob)
    return RoundsResult(policy, trace, logged, int(mask.sum()))


def quality_policy_curve(
    policy: QualitySquareCBPolicy,
    data: RoutingDataset,
    contexts: np.ndarray,
    expected_cost: np.ndarray,
    cost_scale: float,
    grid: np.ndarray,
) -> Curve:
    """Operating points of serving ``data`` with the policy's pmf (exploration included) at each
    decision-time cost weight in ``grid``: ``(mean cost, mean quality)`` of the expected outcome.

    The policy's quality model does not depend on the trade-off, so one learned policy gives the
    whole curve (a profile's weights apply at decision time)."""
    names = data.model_names
    base = policy.quality(contexts, names) + policy.adjustments(names)[None, :]
    gamma = policy.gamma()
    unexplored = policy.unexplored(names)
    curve: Curve = []
    for lam in grid:
        cost = quality = 0.0
        weight = 1e6 if np.isinf(lam) else lam
        rewards = base - weight * expected_cost / cost_scale
        for i in range(data.n_prompts):
            eligible = np.flatnonzero(data.available[i])
            mask = None if unexplored is None else unexplored[eligible]
            pmf = igw_pmf(rewards[i, eligible], gamma, policy.epsilon, mask)
            cost += float(pmf @ data.cost[i, eligible])
            quality += float(pmf @ data.quality[i, eligible])
        curve.append((cost / data.n_prompts, quality / data.n_prompts))
    return curve
