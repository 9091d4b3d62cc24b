"""The canary (router.canary): seeded assignment, per-arm statistics, and the always-valid
sequential test that stops a worse challenger, driven by simulated outcomes; then end to end
through the gateway."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fakes import ListSink
from fastapi.testclient import TestClient
from test_gateway import FakeUpstream, ask
from test_reload import DictSource, variant

from features.errors import ConfigError
from router.app import create_app
from router.bundle import PolicyBundle
from router.canary import CanaryController, RunningMean, cs_radius
from router.config import CanaryConfig, RouterConfig, load_config
from router.policy.base import RewardSpec
from router.prometheus import GatewayMetrics


def fake_engine(version: str) -> Any:
    return SimpleNamespace(bundle=SimpleNamespace(version=version))


def simulate(
    canary: CanaryController,
    n: int,
    seed: int,
    quality: dict[str, float],
    error: dict[str, float] | None = None,
    cost: dict[str, float] | None = None,
) -> int | None:
    """Route ``n`` requests; outcomes and Bernoulli quality feedback drawn per arm. Returns the
    request index at which the canary stopped (None: still running)."""
    rng = np.random.default_rng(seed)
    error, cost = error or {}, cost or {}
    for i in range(n):
        arm = canary.choose()
        canary.on_decision(str(i), arm)
        failed = rng.random() < error.get(arm, 0.0)
        canary.on_outcome(str(i), "http_500" if failed else None, cost.get(arm, 0.0), 100.0)
        canary.on_feedback(str(i), float(rng.random() < quality[arm]))
        if canary.state == "stopped":
            return i
    return None


def state_of(canary: CanaryController) -> str:
    """The canary's state, read afresh (mypy keeps ``canary.state`` narrowed by an earlier
    assert across the method calls that change it)."""
    return canary.state


def running(share: float = 0.5, seed: int = 0, **extra: Any) -> CanaryController:
    config = CanaryConfig(
        share=share, seed=seed, min_requests=extra.pop("min_requests", 100), **extra
    )
    canary = CanaryController(config, GatewayMetrics())
    canary.set_challenger(fake_engine("bundle-challenger"), "7")
    return canary


def test_cs_radius_shrinks_and_matches_the_formula() -> None:
    alpha, n_star = 0.05, 100.0
    rho2 = (-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / n_star
    n = 100
    expected = math.sqrt(
        2 * (n * rho2 + 1) / (n**2 * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )
    assert cs_radius(n, 1.0, alpha, n_star) == pytest.approx(expected)
    radii = [cs_radius(n, 1.0, alpha, n_star) for n in (10, 100, 1_000, 10_000)]
    assert radii == sorted(radii, reverse=True) and radii[-1] < 0.05
    assert cs_radius(0, 1.0, alpha, n_star) == math.inf


def test_cs_covers_the_mean_uniformly_over_time() -> None:
    """Monte Carlo: the sequence misses the true mean at ANY of the looks from n* = 100 (the
    canary's min_requests) to 2,000 in about alpha of the runs, even on skewed data (the
    sequence is asymptotic: it undercovers a little before n*)."""
    alpha, misses = 0.1, 0
    for seed in range(200):
        x = np.random.default_rng(seed).exponential(1.0, 2_000)  # skewed, mean 1
        n = np.arange(1, 2_001)
        mean = np.cumsum(x) / n
        sd = np.sqrt(np.maximum(np.cumsum(x**2) / n - mean**2, 0) * n / np.maximum(n - 1, 1))
        radius = np.array([cs_radius(int(k), s, alpha, 100) for k, s in zip(n, sd, strict=True)])
        misses += bool(np.any(np.abs(mean[99:] - 1.0) > radius[99:]))
    assert misses / 200 <= alpha + 0.03


def test_assignment_is_seeded_and_follows_the_share() -> None:
    a, b = running(0.2, seed=3), running(0.2, seed=3)
    arms = [a.choose() for _ in range(5_000)]
    assert arms == [b.choose() for _ in range(5_000)]
    assert arms.count("challenger") / 5_000 == pytest.approx(0.2, abs=0.02)
    idle = CanaryController(CanaryConfig(share=0.5), GatewayMetrics())
    assert {idle.choose() for _ in range(100)} == {"champion"}  # no challenger yet
    assert idle.status()["state"] == "waiting"


def test_running_mean() -> None:
    stats, x = RunningMean(), np.random.default_rng(0).normal(3, 2, 500)
    for v in x:
        stats.add(float(v))
    assert stats.mean == pytest.approx(x.mean()) and stats.sd == pytest.approx(x.std(ddof=1))


def test_a_clearly_worse_challenger_is_stopped() -> None:
    canary = running(share=0.1, min_requests=100)
    stopped_at = simulate(canary, 20_000, seed=0, quality={"champion": 0.7, "challenger": 0.4})
    assert stopped_at is not None and stopped_at < 5_000
    status = canary.status()
    assert status["state"] == "stopped" and status["share"] == 0.0
    assert status["reason"].startswith("reward: challenger mean reward")
    assert status["arms"]["challenger"]["rewards"] >= 100
    assert {canary.choose() for _ in range(1_000)} == {"champion"}  # share is 0 now
    text = canary.metrics.registry.get_sample_value  # type: ignore[union-attr]
    assert text("polyroute_canary_stops_total", {"reason": "reward"}) == 1.0
    assert text("polyroute_canary_share") == 0.0


def test_a_challenger_with_more_errors_is_stopped() -> None:
    canary = running(share=0.5, min_requests=100)
    stopped_at = simulate(
        canary,
        5_000,
        seed=1,
        quality={"champion": 0.6, "challenger": 0.6},
        error={"champion": 0.01, "challenger": 0.15},
    )
    assert stopped_at is not None
    assert canary.status()["reason"].startswith("error_rate: challenger error rate")


def test_cost_counts_in_the_reward() -> None:
    """Same quality, but the challenger's answers cost a whole quality point more."""
    config = CanaryConfig(share=0.5, min_requests=100)
    canary = CanaryController(config, None, lambda: RewardSpec(w_cost=1.0, cost_scale=0.01))
    canary.set_challenger(fake_engine("b"), "2")
    stopped_at = simulate(
        canary,
        5_000,
        seed=2,
        quality={"champion": 0.6, "challenger": 0.6},
        cost={"champion": 0.0, "challenger": 0.005},
    )
    assert stopped_at is not None and canary.reason and canary.reason.startswith("reward")


def test_an_equal_challenger_is_not_stopped() -> None:
    canary = running(share=0.5, min_requests=100)
    quality = {"champion": 0.6, "challenger": 0.6}
    assert (
        simulate(
            canary, 10_000, seed=0, quality=quality, error={"champion": 0.02, "challenger": 0.02}
        )
        is None
    )
    assert canary.status()["arms"]["challenger"]["rewards"] > 4_000


def test_false_stop_rate_over_seeds_is_within_alpha() -> None:
    alpha, runs, stops = 0.1, 60, 0
    for seed in range(runs):
        canary = running(share=0.5, seed=seed, min_requests=50, alpha=alpha)
        stops += (
            simulate(
                canary,
                2_000,
                seed=1_000 + seed,
                quality={"champion": 0.5, "challenger": 0.5},
                error={"champion": 0.05, "challenger": 0.05},
            )
            is not None
        )
    assert stops / runs <= alpha  # loosely: the union bound makes it conservative


def test_tolerances_allow_a_slightly_worse_challenger() -> None:
    strict = running(share=0.5, min_requests=100)
    tolerant = running(share=0.5, min_requests=100, max_reward_drop=0.2)
    quality = {"champion": 0.7, "challenger": 0.6}
    assert simulate(strict, 20_000, seed=4, quality=quality) is not None
    assert simulate(tolerant, 20_000, seed=4, quality=quality) is None


def test_a_stopped_bundle_stays_stopped_and_a_new_one_restarts() -> None:
    canary = running(share=0.5, min_requests=50)
    assert simulate(canary, 5_000, 0, {"champion": 0.8, "challenger": 0.2}) is not None
    canary.set_challenger(fake_engine("bundle-challenger"), "7")
    assert canary.state == "stopped"
    canary.set_challenger(fake_engine("bundle-next"), "8")
    assert state_of(canary) == "running" and canary.share == 0.5
    assert canary.status()["arms"]["challenger"]["requests"] == 0


# ---- through the gateway ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def config() -> RouterConfig:
    from pathlib import Path

    data = load_config(Path(__file__).parents[1] / "experiments/configs/router.example.yaml")
    raw = data.model_dump()
    raw["tenants"] = []
    raw["policy"] = {"poll_s": 3600, "canary": {"share": 0.5, "min_requests": 15, "seed": 1}}
    return RouterConfig.model_validate(raw)


@pytest.fixture(scope="module")
def bundles(bundle: PolicyBundle) -> dict[str, Any]:
    return {"1": bundle, "2": variant(bundle, "uniform")}


def test_canary_end_to_end(config: RouterConfig, bundles: dict[str, Any]) -> None:
    sink = ListSink()
    champion, challenger = DictSource(bundles, "1"), DictSource(bundles, "2")
    app = create_app(
        config,
        bundles["1"],
        sink,
        transport=httpx.MockTransport(FakeUpstream()),
        source=champion,
        challenger_source=challenger,
    )
    v1, v2 = bundles["1"].version, bundles["2"].version
    with TestClient(app) as client:
        client.post("/admin/reload")  # make sure the challenger is loaded
        status = client.get("/admin/canary").json()
        assert status["state"] == "running" and status["challenger_policy_version"] == v2
        # the challenger's answers get bad feedback, the champion's good feedback
        for _ in range(400):
            response = ask(client)
            decision = sink.of("decision")[-1]
            quality = 1.0 if decision["policy_version"] == v1 else 0.0
            client.post(
                "/v1/feedback", json={"decision_id": decision["event_id"], "quality": quality}
            )
            assert response.status_code == 200
            if client.get("/admin/canary").json()["state"] == "stopped":
                break
        status = client.get("/admin/canary").json()
        assert status["state"] == "stopped" and status["reason"].startswith("reward")
        versions = [d["policy_version"] for d in sink.of("decision")]
        assert {v1, v2} == set(versions)
        # each decision carries its own engine's pmf: the uniform challenger's is flat
        for d in sink.of("decision"):
            if d["policy_version"] == v2:
                assert np.allclose(d["probabilities"], 1 / len(d["probabilities"]))
        n = len(versions)
        for _ in range(30):
            ask(client)
        assert all(d["policy_version"] == v1 for d in sink.of("decision")[n:])
        metrics = client.get("/metrics").text
        assert 'polyroute_canary_stops_total{reason="reward"} 1.0' in metrics
        assert "polyroute_canary_share 0.0" in metrics
        assert f'polyroute_policy_info{{arm="challenger",version="{v2}"}} 0.0' in metrics


def test_canary_needs_its_config(config: RouterConfig, bundles: dict[str, Any]) -> None:
    plain = config.model_copy(update={"policy": None})
    transport = httpx.MockTransport(FakeUpstream())
    with pytest.raises(ConfigError, match=r"policy\.canary"):
        create_app(
            plain,
            bundles["1"],
            ListSink(),
            transport=transport,
            challenger_source=DictSource(bundles, "2"),
        )
    with TestClient(create_app(plain, bundles["1"], ListSink(), transport=transport)) as c:
        assert c.get("/admin/canary").status_code == 404


def test_a_challenger_that_is_the_champion_gets_no_traffic() -> None:
    canary = running(share=0.5)
    assert canary.state == "running"
    # @challenger was promoted: the champion's bundle is now the challenger's
    canary.set_champion_version("bundle-challenger")
    assert state_of(canary) == "waiting" and canary.share == 0.0
    assert {canary.choose() for _ in range(100)} == {"champion"}
    assert "is the champion" in (canary.reason or "")
    # and a challenger installed while it already is the champion never starts
    canary.set_challenger(fake_engine("bundle-challenger"), "8")
    assert state_of(canary) == "waiting" and canary.share == 0.0


def test_a_challenger_gone_from_the_registry_is_cleared() -> None:
    canary = running(share=0.5)
    canary.clear()
    assert canary.engine is None and canary.share == 0.0 and canary.state == "waiting"
    assert {canary.choose() for _ in range(100)} == {"champion"}
