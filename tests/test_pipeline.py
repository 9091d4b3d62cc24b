"""The decision path: a bundle trained on real data, the config's rules, sampled choices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from features.errors import ConfigError, NoEligibleModelError, PolicyError, RequestError
from features.featurizer import FeaturizerConfig
from router.bundle import PolicyBundle
from router.config import RouterConfig, load_config
from router.eligibility import RequestHints, eligible_models
from router.pipeline import DecisionEngine
from router.policy.vw import VWSquareCBPolicy
from training.bundle_train import train_bundle
from training.datasets import RoutingDataset

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    return load_config(EXAMPLE)


def test_bundle_round_trip_gives_the_same_pmf(
    small: RoutingDataset, bundle: PolicyBundle, tmp_path: Path
) -> None:
    bundle.save(tmp_path / "again")
    again = PolicyBundle.load(tmp_path / "again")
    text = small.prompts["prompt"].iloc[-1]
    x = bundle.featurizer.transform_one(text)
    actions = bundle.catalogue.actions(x, 200.0)
    np.testing.assert_allclose(
        again.policy.predict_one(x, actions), bundle.policy.predict_one(x, actions), atol=1e-6
    )


def test_bundle_with_mixed_parts_is_refused(bundle: PolicyBundle, tmp_path: Path) -> None:
    bundle.save(tmp_path / "b")
    meta = (tmp_path / "b" / "bundle.json").read_text()
    n_train = f'"n_train": {bundle.provenance["n_train"]}'
    assert n_train in meta
    (tmp_path / "b" / "bundle.json").write_text(meta.replace(n_train, '"n_train": 1'))
    with pytest.raises(PolicyError, match="does not match"):
        PolicyBundle.load(tmp_path / "b")
    with pytest.raises(PolicyError, match="not a policy bundle"):
        PolicyBundle.load(tmp_path)


def test_decisions_are_sampled_from_the_pmf(
    config: RouterConfig, bundle: PolicyBundle, small: RoutingDataset
) -> None:
    engine = DecisionEngine(config, bundle, seed=1)
    text = small.prompts["prompt"].iloc[0]
    seen: dict[str, int] = {}
    for _ in range(300):
        d = engine.decide(text, 1, 300, 512, RequestHints())
        assert d.pmf.sum() == pytest.approx(1.0)
        assert d.probability == pytest.approx(d.pmf[d.chosen_index]) and d.probability > 0
        assert d.eligible[d.chosen_index] == d.chosen
        seen[d.chosen] = seen.get(d.chosen, 0) + 1
    top = d.eligible[int(np.argmax(d.pmf))]
    assert max(seen, key=seen.__getitem__) == top
    assert len(seen) > 1  # exploration: other models are tried too


def test_rules_restrict_the_choice(
    config: RouterConfig, bundle: PolicyBundle, small: RoutingDataset
) -> None:
    engine = DecisionEngine(config, bundle)
    text = small.prompts["prompt"].iloc[0]
    d = engine.decide(text, 1, 300, 512, RequestHints(data_class="phi"), {"phi"})
    assert set(d.eligible) == {"gemini-1.5-flash-002", "gemini-1.5-pro-002"}
    d = engine.decide(text, 1, 300, 512, RequestHints(profile="open-weights-only"))
    assert set(d.eligible) == set(config.profiles["open-weights-only"].models)
    d = engine.decide(text, 1, 7000, 1000, RequestHints())
    assert all(config.model(m).context_tokens >= 8000 for m in d.eligible)
    d = engine.decide(text, 1, 300, 512, RequestHints(), unhealthy={"gemini-1.5-pro-002"})
    assert "gemini-1.5-pro-002" not in d.eligible


def test_no_eligible_model_names_every_rule(config: RouterConfig) -> None:
    with pytest.raises(NoEligibleModelError, match=r"data class 'phi'.*context window"):
        eligible_models(config, RequestHints(data_class="phi"), 3_000_000, 10)
    with pytest.raises(RequestError, match="unknown profile 'vip'"):
        eligible_models(config, RequestHints(profile="vip"), 10, 10)
    with pytest.raises(RequestError, match="unknown data class 'pci'"):
        eligible_models(config, RequestHints(data_class="pci"), 10, 10)
    with pytest.raises(RequestError, match="may not send 'phi'"):
        eligible_models(config, RequestHints(data_class="phi"), 10, 10, tenant_data_classes=set())


def test_max_cost_hint(config: RouterConfig, bundle: PolicyBundle, small: RoutingDataset) -> None:
    engine = DecisionEngine(config, bundle)
    text = small.prompts["prompt"].iloc[0]
    d = engine.decide(text, 1, 300, 512, RequestHints(max_cost_usd=2e-4))
    assert d.expected_cost_usd <= 2e-4
    assert "expected cost > 0.0002 USD" in d.removed


def test_config_models_unknown_to_the_bundle_are_refused(
    config: RouterConfig, bundle: PolicyBundle
) -> None:
    data = config.model_dump()
    data["models"][0]["name"] = "gpt-9"
    with pytest.raises(ConfigError, match="gpt-9"):
        DecisionEngine(RouterConfig.model_validate(data), bundle)


def _reference_decide(
    engine: DecisionEngine, rng: np.random.Generator, *args: Any, **kwargs: Any
) -> tuple[list[str], np.ndarray, int, float, float, dict[str, list[str]]]:
    """The decision path as it was before the latency work (VW's text-format predict, cost
    dictionaries, the per-call eligibility rules): the fast path must decide exactly as it."""
    text, n_turns, input_tokens, max_output_tokens, hints = args
    bundle, config = engine.bundle, engine.config
    catalogue = bundle.catalogue
    context = bundle.featurizer.transform_one(text, n_turns)
    out_tokens = catalogue.expected_output_tokens(context)
    latency_all = catalogue.expected_latency(context, out_tokens)
    cost = {
        m.name: input_tokens * (m.usd_per_mtok_in / 1e6)
        + out_tokens[catalogue.index[m.name]] * (m.usd_per_mtok_out / 1e6)
        for m in config.models
    }
    latency = {m.name: float(latency_all[catalogue.index[m.name]]) for m in config.models}
    eligibility = eligible_models(
        config, hints, input_tokens, max_output_tokens, None, kwargs["unhealthy"], cost, latency
    )
    names = eligibility.models
    actions = catalogue.actions_with_costs(
        np.array([cost.get(m, 0.0) for m in catalogue.names]), latency_all, names
    )
    if isinstance(bundle.policy, VWSquareCBPolicy):
        pmf = bundle.policy._vw_pmf(context, actions)  # VW's own text-format predict
        pmf = pmf / pmf.sum()  # as predict_one normalises it
    else:
        pmf = bundle.policy.predict_one(context, actions)  # the policy contract's checked path
    u = rng.random() * pmf.sum()
    k = min(int(np.searchsorted(np.cumsum(pmf), u, side="right")), len(pmf) - 1)
    return names, pmf, k, cost[names[k]], latency[names[k]], eligibility.removed


@pytest.fixture(scope="module")
def vw_bundle(tiny: RoutingDataset) -> PolicyBundle:
    return train_bundle(
        tiny, w_cost=0.2, policy_name="vw_squarecb",
        featurizer_config=FeaturizerConfig(n_components=16),
    )  # fmt: skip


@pytest.mark.parametrize("policy", ["default", "vw_squarecb"])
def test_decisions_equal_the_reference_path(
    config: RouterConfig,
    bundle: PolicyBundle,
    vw_bundle: PolicyBundle,
    small: RoutingDataset,
    policy: str,
) -> None:
    """Same pmfs (bit for bit), same sampled choices, costs and removals as the reference path
    (for VW: its text-format predict, which the exact fast path must reproduce)."""
    if policy == "vw_squarecb":  # VW learned its weights: profiles may not set others
        bundle = vw_bundle
        profiles = {
            name: p.model_copy(update={"w_cost": None, "w_latency": None})
            for name, p in config.profiles.items()
        }
        config = config.model_copy(update={"profiles": profiles})
    engine = DecisionEngine(config, bundle, seed=3)
    rng = np.random.default_rng(3)
    hint_sets = [
        RequestHints(),
        RequestHints(max_cost_usd=2e-4),
        RequestHints(max_latency_ms=3000.0),
        RequestHints(profile="open-weights-only"),
        RequestHints(data_class="eu-personal", max_cost_usd=1e-3),
    ]
    texts = small.prompts["prompt"].tolist()[:120]
    for _ in range(20):  # predictions without learning: the fast path serves from here on
        engine.decide(texts[0], 1, 100, 512, RequestHints())
        _reference_decide(engine, rng, texts[0], 1, 100, 512, RequestHints(), unhealthy=())
    for i, text in enumerate(texts):
        hints = hint_sets[i % len(hint_sets)]
        unhealthy = ("gemini-1.5-pro-002",) if i % 4 == 0 else ()
        args = (text, 1 + i % 3, len(text) // 4, 512 if i % 9 else 9000, hints)
        try:
            d = engine.decide(*args, None, unhealthy)
        except NoEligibleModelError:
            with pytest.raises(NoEligibleModelError):
                _reference_decide(engine, rng, *args, unhealthy=unhealthy)
            continue
        names, pmf, k, cost, latency, removed = _reference_decide(
            engine, rng, *args, unhealthy=unhealthy
        )
        assert d.eligible == names and d.removed == removed
        np.testing.assert_array_equal(d.pmf, pmf)
        assert (d.chosen_index, d.expected_cost_usd, d.expected_latency_ms) == (k, cost, latency)
    if isinstance(bundle.policy, VWSquareCBPolicy):
        assert bundle.policy._scorer is not None  # the fast path served


def _stage_owner(stage: str, engine: DecisionEngine) -> tuple[object, str]:
    """The object and attribute whose call is the work of ``stage``."""
    import router.pipeline

    return {
        "features": (engine.bundle.featurizer, "transform_one"),
        "cost_model": (engine.bundle.catalogue, "expected_output_tokens"),
        "eligibility": (engine._rules, "apply"),
        "policy": (engine.bundle.policy, "predict_one"),
        "sampling": (router.pipeline, "sample_index"),
    }[stage]


@pytest.mark.parametrize("stage", ["features", "cost_model", "eligibility", "policy", "sampling"])
def test_decision_records_its_stage_timings(
    stage: str,
    config: RouterConfig,
    bundle: PolicyBundle,
    small: RoutingDataset,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work done in one stage is timed in that stage, and the decision's time is its wall time:
    the stage whose call is slowed by 100 ms takes the 100 ms; the others stay well under it."""
    import time

    from router.pipeline import STAGES

    assert stage in STAGES
    engine = DecisionEngine(config, bundle)
    owner, attribute = _stage_owner(stage, engine)
    original = getattr(owner, attribute)
    delay_ns = 100_000_000

    def slowed(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_ns / 1e9)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, slowed)
    text = small.prompts["prompt"].iloc[0]
    engine.decide(text, 1, 300, 512, RequestHints())  # warm: first-call costs are not timed
    before = time.perf_counter_ns()
    d = engine.decide(text, 1, 300, 512, RequestHints(max_cost_usd=1.0))
    wall_ns = time.perf_counter_ns() - before
    timings = dict(zip(STAGES, d.stages_ns, strict=True))
    assert timings[stage] >= delay_ns, timings
    assert all(0 <= t < timings[stage] for s, t in timings.items() if s != stage), timings
    assert delay_ns <= d.decide_ns <= wall_ns
