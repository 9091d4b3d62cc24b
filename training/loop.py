"""The closed learning loop, round by round: serve, log, retrain, gate, promote, reload.

Each round the current ``@champion`` serves ``requests_per_round`` requests of the dataset's
train split (through :class:`Traffic`: simulated in-process, or real HTTP through the gateway
in ``polyroute demo``), the logs the champion has not learned from train a candidate
warm-started from it, off-policy evaluation on the latest of those requests gates it, and a
promoted candidate serves the next round. After every round the champion's true value on the
test split is computed from the full-information dataset, so the report shows whether the loop
learned, not only whether its own estimates say so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from features.errors import ConfigError
from router.bundle import PolicyBundle
from router.policy.base import Policy
from training import model_registry
from training.datasets import RoutingDataset
from training.loop_turn import RetrainConfig, retrain
from training.promote import GateConfig
from training.simulate import expected_point

logger = logging.getLogger(__name__)


class Traffic(Protocol):
    """Serves one round of requests with the current champion and logs them to ``events``."""

    def serve_round(
        self, round_index: int, champion: PolicyBundle, prompts: RoutingDataset
    ) -> dict[str, float]:
        """Returns ``n`` and ``mean_reward`` (true reward of what was served)."""
        ...


@dataclass
class LoopConfig:
    rounds: int = 5
    requests_per_round: int = 1000
    models: list[str] | None = None  # the routing profile's allowed models (None: all)
    feedback_share: float = 0.9
    holdout: float = 0.3
    gate: GateConfig = field(default_factory=lambda: GateConfig(min_ess=50.0))
    n_bootstrap: int = 500
    n_test: int = 600
    seed: int = 0
    # the simulated callers rate a random share of answers: a missing rating says nothing
    skip_unrated: bool = True

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.requests_per_round < 50:
            raise ConfigError("rounds must be >= 1 and requests_per_round >= 50")


@dataclass
class RoundResult:
    round: int
    champion_version: str
    served: int
    served_mean_reward: float
    candidate_version: str
    promoted: bool
    reason: str
    delta: float
    low: float
    high: float
    ess: float
    test_reward_before: float
    test_quality_before: float
    test_cost_before: float
    test_reward_candidate: float
    retrain_seconds: float


class HeldOutValue:
    """True (full-information) value of a policy's pmf on test prompts: reward, quality, cost."""

    def __init__(
        self, bundle: PolicyBundle, data: RoutingDataset, models: list[str] | None
    ) -> None:
        test = data.split("test")
        if models is not None:
            test = _restrict(test, np.isin(test.model_names, models))
        self.data = test
        self.x = bundle.featurizer.transform(test.prompts["prompt"].tolist())
        tokens = np.nanmax(test.input_tokens, axis=1)
        self.costs = bundle.catalogue.expected_cost(self.x, tokens)
        self.latencies = bundle.catalogue.expected_latency(self.x)
        self.catalogue = bundle.catalogue
        if bundle.reward.w_latency:
            raise ConfigError(
                "the loop's test-split value has no latency term: w_latency must be 0 here"
            )

    @classmethod
    def sample(cls, bundle: PolicyBundle, data: RoutingDataset, config: LoopConfig) -> HeldOutValue:
        """On ``config.n_test`` test prompts drawn with ``config.seed`` (the same every call)."""
        rng = np.random.default_rng(config.seed)
        return cls(bundle, data.subset(sample_test_rows(data, config.n_test, rng)), config.models)

    def __call__(self, policy: Policy) -> tuple[float, float, float]:
        cost, quality = expected_point(
            policy, self.data, self.x, self.catalogue, self.costs, self.latencies
        )
        spec = policy.reward
        return quality - spec.w_cost * cost / spec.cost_scale, quality, cost


def _restrict(data: RoutingDataset, allowed: np.ndarray) -> RoutingDataset:
    """The same prompts with only the ``allowed`` models available."""
    import dataclasses

    return dataclasses.replace(data, available=data.available & allowed[None, :])


def run_loop(
    config: LoopConfig,
    traffic: Traffic,
    data: RoutingDataset,
    events_dir: Path,
    tracking_uri: str,
    base_bundle: Path,
    report_dir: Path,
    on_round: Callable[[RoundResult], None] | None = None,
    value: HeldOutValue | None = None,
) -> list[RoundResult]:
    """Run ``config.rounds`` rounds; see the module docstring.

    ``value``: the test-split yardstick (default: :meth:`HeldOutValue.sample` of the base).
    """
    train = data.split("train")
    base = PolicyBundle.load(base_bundle)
    value = value or HeldOutValue.sample(base, data, config)
    results = []
    for r in range(config.rounds):
        champion = _champion(base, tracking_uri)
        before = value(champion.policy)
        served = traffic.serve_round(r, champion, train)
        retrain_start = time.perf_counter()
        outcome = retrain(
            RetrainConfig(
                events=str(events_dir),
                tracking_uri=tracking_uri,
                base_bundle=str(base_bundle),
                holdout=config.holdout,
                gate=config.gate,
                report_dir=str(report_dir),
                n_bootstrap=config.n_bootstrap,
                seed=config.seed + r,
                skip_unrated=config.skip_unrated,
            )
        )
        retrain_seconds = time.perf_counter() - retrain_start
        result = RoundResult(
            round=r,
            champion_version=outcome.champion_version,
            served=int(served["n"]),
            served_mean_reward=float(served["mean_reward"]),
            candidate_version=outcome.version,
            promoted=outcome.decision.promote,
            reason=outcome.decision.reason,
            delta=outcome.decision.delta,
            low=outcome.decision.low,
            high=outcome.decision.high,
            ess=outcome.decision.ess,
            test_reward_before=before[0],
            test_quality_before=before[1],
            test_cost_before=before[2],
            test_reward_candidate=value(outcome.candidate.policy)[0],
            retrain_seconds=retrain_seconds,
        )
        logger.info("round %d: %s", r, asdict(result))
        results.append(result)
        if on_round is not None:
            on_round(result)
    return results


def _champion(base: PolicyBundle, tracking_uri: str) -> PolicyBundle:
    version = model_registry.alias_version(model_registry.CHAMPION, tracking_uri=tracking_uri)
    return (
        base if version is None else model_registry.load_bundle(version, tracking_uri=tracking_uri)
    )


class SimulatedTraffic:
    """In-process traffic (:func:`training.traffic.simulate_events`) into a file-sink directory."""

    def __init__(
        self,
        events_dir: Path,
        models: list[str] | None = None,
        feedback_share: float = 0.9,
        requests_per_round: int = 1000,
        seed: int = 0,
    ) -> None:
        self.events_dir = Path(events_dir)
        self.models = models
        self.feedback_share = feedback_share
        self.requests_per_round = requests_per_round
        self.seed = seed

    def serve_round(
        self, round_index: int, champion: PolicyBundle, prompts: RoutingDataset
    ) -> dict[str, float]:
        from router.events import FileEventSink
        from router.events.models import OutcomeEvent
        from training.traffic import simulate_events

        start = 1.7e9 + round_index * 10.0 * self.requests_per_round
        spec = champion.reward
        rewards: list[float] = []
        pending: dict[str, float] = {}
        with FileEventSink(self.events_dir, queue_size=100_000, put_timeout_s=5.0) as sink:
            for event in simulate_events(
                champion,
                prompts,
                self.requests_per_round,
                seed=self.seed * 1000 + round_index,
                feedback_share=self.feedback_share,
                start_time=start,
                models=self.models,
                true_quality=pending,
            ):
                sink.emit(event)
                if isinstance(event, OutcomeEvent):
                    quality = pending.pop(event.event_id)
                    rewards.append(
                        quality
                        - spec.w_cost * event.cost_usd / spec.cost_scale
                        - spec.w_latency * event.latency_ms / spec.latency_scale
                    )
        return {"n": len(rewards), "mean_reward": float(np.mean(rewards))}


def sample_test_rows(data: RoutingDataset, n: int, rng: np.random.Generator) -> np.ndarray:
    rows = np.flatnonzero(data.prompts["split"].to_numpy() == "test")
    return np.sort(rng.choice(rows, size=min(n, len(rows)), replace=False))


def final_value(base: PolicyBundle, tracking_uri: str, value: HeldOutValue) -> dict[str, Any]:
    """The final champion's true test value, beside the starting policy's (``base``; the key
    ``cold`` is kept for the JSON's readers: it is the prior when the loop started from one)."""
    champion = _champion(base, tracking_uri)
    return {
        "version": champion.version,
        "final": value(champion.policy),
        "cold": value(base.policy),
    }
