"""The YAML router config: the example validates; every bad key is named in the error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from features.errors import ConfigError
from router.config import RouterConfig, load_config

EXAMPLE = Path(__file__).parents[1] / "experiments" / "configs" / "router.example.yaml"


def minimal() -> dict[str, Any]:
    return {
        "models": [
            {
                "name": "small",
                "provider": {"base_url": "http://127.0.0.1:8100/v1"},
                "usd_per_mtok_in": 0.2,
                "usd_per_mtok_out": 0.2,
            },
            {
                "name": "big",
                "provider": {"base_url": "http://127.0.0.1:8100/v1", "api_key_env": "BIG_KEY"},
                "usd_per_mtok_in": 5,
                "usd_per_mtok_out": 15,
                "tags": ["hipaa"],
            },
        ],
        "data_classes": {"phi": {"required_tags": ["hipaa"]}},
    }


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert len(config.models) == 29
    assert {"default", "budget"} <= set(config.profiles)
    assert config.tenants[0].data_classes == {"phi"}
    # limits, budgets and priorities (router/traffic/) are shown in the example
    demo, batch = config.tenants
    assert demo.tokens_per_minute == 200_000 and demo.budget_usd_per_day == 5.0
    assert batch.priority < demo.priority and config.admission.queue_wait_ms == 20
    assert config.admission.limiter == "gradient2"
    assert config.traffic.store == "memory"


def test_providers_example_is_valid_and_names_bundled_models() -> None:
    """The README's real-provider example: keys by environment variable, models the bundled
    sample's (so the bundle `make run` trains can route them)."""
    from training.datasets import load_dataset

    config = load_config(EXAMPLE.with_name("router.providers.example.yaml"))
    assert {m.name for m in config.models} <= set(load_dataset("bundled").model_names)
    keys = {m.provider.api_key_env for m in config.models}
    assert {"GEMINI_API_KEY", "VLLM_API_KEY", None} == keys
    assert all(m.provider.base_url.startswith(("http://", "https://")) for m in config.models)


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, minimal()))
    assert isinstance(config, RouterConfig)
    assert list(config.profiles) == ["default"]
    assert config.model("small").endpoints()[0].base_url == "http://127.0.0.1:8100/v1"
    assert config.events.sink == "file" and config.events.log_prompts is False


def test_api_key_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(write(tmp_path, minimal()))
    monkeypatch.delenv("BIG_KEY", raising=False)
    with pytest.raises(ConfigError, match="BIG_KEY"):
        config.model("big").provider.api_key()
    monkeypatch.setenv("BIG_KEY", "sk-test")
    assert config.model("big").provider.api_key() == "sk-test"
    assert config.model("small").provider.api_key() is None


def _set(path: str, value: Any) -> dict[str, Any]:
    data = minimal()
    node: Any = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            _set("models.0.usd_per_mtok_in", -1),
            r"models\.0\.usd_per_mtok_in: .*greater than or equal",
        ),
        (_set("models.1.provider.base_url", "ftp://x"), r"models\.1\.provider\.base_url: .*http"),
        (_set("models.0.colour", "red"), r"models\.0\.colour: Extra inputs"),
        (_set("models.1.name", "small"), r"duplicate model name\(s\) \['small'\]"),
        (
            _set("profiles", {"default": {"models": ["gpt-9"]}}),
            r"profiles\.default\.models: unknown",
        ),
        (_set("profiles", {"cheap": {}}), r"'default' profile is required"),
        (_set("fallback", ["nope"]), r"fallback: unknown model"),
        (_set("tenants", [{"name": "t", "api_key_sha256": "abc"}]), r"tenants\.0\.api_key_sha256"),
        (
            _set("tenants", [{"name": "t", "api_key_sha256": "a" * 64, "data_classes": ["pci"]}]),
            r"tenants\.0\.data_classes: undeclared",
        ),
        (_set("timeouts.read_s", 0), r"timeouts\.read_s: .*greater than 0"),
        (_set("events.sink", "kafka"), r"events\.sink: .*'file' or 'postgres'"),
        ({"models": []}, r"models: .*at least 1"),
        (_set("policy.poll_s", 0), r"policy\.poll_s: .*greater than 0"),
        (_set("policy.registry.stage", "Production"), r"policy\.registry\.stage: Extra inputs"),
        (_set("policy.canary.share", 0.9), r"policy\.canary\.share: .*less than or equal"),
        (_set("policy.canary.alpha", 0), r"policy\.canary\.alpha: .*greater than 0"),
        (_set("admin_api_key_sha256", "secret"), r"admin_api_key_sha256: .*pattern"),
        (
            _set("tenants", [{"name": "t", "api_key_sha256": "a" * 64, "tokens_per_minute": 0}]),
            r"tenants\.0\.tokens_per_minute: .*greater than 0",
        ),
        (_set("traffic.store", "memcached"), r"traffic\.store: .*'memory' or 'redis'"),
        (_set("traffic.timeout_ms", 0), r"traffic\.timeout_ms: .*greater than 0"),
        (_set("admission.lowest_priority_share", 0), r"admission\.lowest_priority_share"),
        (_set("admission.queue_min_priority", 10), r"admission\.queue_min_priority"),
        (_set("admission.limiter", "vegas"), r"admission\.limiter: .*'gradient2' or 'fixed'"),
        (_set("admission.min_limit", 0), r"admission\.min_limit: .*greater than or equal to 1"),
        (_set("admission.latency_tolerance", 0.9), r"admission\.latency_tolerance"),
        ("- just\n- a list\n", r"expected a mapping"),
        ("models: [unclosed\n", r"not valid YAML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, data: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, data))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "absent.yaml")


def test_policy_section_defaults_and_the_documented_example(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, minimal())).policy is None  # no reloading by default
    config = load_config(write(tmp_path, _set("policy", {})))
    assert config.policy is not None and config.policy.poll_s == 10
    assert config.policy.registry.model_name == "polyroute-policy"
    assert config.policy.registry.alias == "champion" and config.policy.canary is None
    # the example documents the section commented out: uncommented, it is valid
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index(
        "# --- policy section (tests/test_config.py uncomments and validates it) ---"
    )
    end = lines.index("# --- end of policy section ---")
    block = "\n".join(line.removeprefix("# ") for line in lines[start + 1 : end])
    data = {**minimal(), **yaml.safe_load(block)}
    policy = load_config(write(tmp_path, data)).policy
    assert policy is not None and policy.canary is not None
    assert policy.canary.alias == "challenger" and policy.canary.share == 0.1


def test_decision_key_is_kept_beside_the_events(tmp_path: Path) -> None:
    """Feedback for decisions served before a restart must still verify: the key persists."""
    import stat

    from router.cli import _decision_key

    first = _decision_key(None, tmp_path / "events")
    assert _decision_key(None, tmp_path / "events") == first
    key_file = tmp_path / "events" / ".decision-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert _decision_key("00ff", tmp_path / "events") == "00ff"  # the environment wins
    with pytest.raises(ConfigError, match="POLYROUTE_DECISION_KEY: expected a hex"):
        _decision_key("not-hex", tmp_path / "events")
    key_file.write_text("zz")
    with pytest.raises(ConfigError, match="expected a hex key"):
        _decision_key(None, tmp_path / "events")
