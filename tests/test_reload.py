"""Hot reload of the serving policy (router.reload): swaps on a version change, the metrics and
decision events follow, and a failing load or build keeps the old policy serving."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fakes import ListSink
from fastapi.testclient import TestClient
from test_gateway import FakeUpstream, ask

from features.errors import ConfigError
from router.app import create_app
from router.bundle import PolicyBundle
from router.config import RouterConfig, load_config
from router.policy.baselines import RandomPolicy
from router.reload import BundleSource, PolicyReloader

EXAMPLE_CONFIG = "experiments/configs/router.example.yaml"


class BrokenPolicy(RandomPolicy):
    name = "random"  # a registered name, so the bundle's version can be computed

    def _predict_one(self, context: np.ndarray, actions: Any) -> np.ndarray:
        raise RuntimeError("this policy cannot decide")


class DictSource:
    """A bundle source over a dict; ``fail`` versions raise on load."""

    def __init__(self, bundles: dict[str, PolicyBundle], current: str | None) -> None:
        self.bundles = bundles
        self.current = current
        self.fail: set[str] = set()
        self.loads: list[str] = []

    def current_version(self) -> str | None:
        return self.current

    def load(self, version: str) -> PolicyBundle:
        self.loads.append(version)
        if version in self.fail:
            raise OSError(f"artifact of version {version} is unreadable")
        return self.bundles[version]


def variant(bundle: PolicyBundle, name: str, policy: Any = None) -> PolicyBundle:
    """Another bundle (another version) sharing ``bundle``'s fitted features and catalogue."""
    policy = policy or RandomPolicy(reward=bundle.reward)
    return PolicyBundle(
        bundle.featurizer, bundle.catalogue, policy, {**bundle.provenance, "variant": name}
    )


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    from pathlib import Path

    data = load_config(Path(__file__).parents[1] / EXAMPLE_CONFIG).model_dump()
    data["tenants"] = []
    data["policy"] = {"poll_s": 3600}  # polls only when a test asks (/admin/reload)
    return RouterConfig.model_validate(data)


@pytest.fixture(scope="module")
def bundles(bundle: PolicyBundle) -> dict[str, PolicyBundle]:
    return {
        "1": bundle,
        "2": variant(bundle, "uniform"),
        "3": variant(bundle, "broken", BrokenPolicy(reward=bundle.reward)),
    }


@pytest.fixture()
def source(bundles: dict[str, PolicyBundle]) -> DictSource:
    return DictSource(bundles, "1")


@pytest.fixture()
def sink() -> ListSink:
    return ListSink()


@pytest.fixture()
def client(
    config: RouterConfig, bundles: dict[str, PolicyBundle], sink: ListSink, source: DictSource
) -> Iterator[TestClient]:
    upstream = httpx.MockTransport(FakeUpstream())
    app = create_app(config, bundles["1"], sink, transport=upstream, source=source)
    with TestClient(app) as c:
        yield c


def metric(client: TestClient, line_start: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return None


def info(version: str) -> str:
    return f'polyroute_policy_info{{arm="champion",version="{version}"}}'


def test_source_protocol_is_satisfied_by_the_fake(source: DictSource) -> None:
    checked: BundleSource = source  # mypy checks the structural type
    assert checked.current_version() == "1"


def test_reload_swaps_policy_metrics_and_event_versions(
    client: TestClient, sink: ListSink, source: DictSource, bundles: dict[str, PolicyBundle]
) -> None:
    v1, v2 = bundles["1"].version, bundles["2"].version
    ask(client)
    # the source pointed at the bundle already serving: loaded once, nothing swapped
    report = client.post("/admin/reload").json()["champion"]
    assert report["changed"] is False and report["serving_policy_version"] == v1
    source.current = "2"
    report = client.post("/admin/reload").json()["champion"]
    assert report == {
        "source_version": "2",
        "changed": True,
        "error": None,
        "serving_source_version": "2",
        "serving_policy_version": v2,
    }
    ask(client)
    assert [d["policy_version"] for d in sink.of("decision")] == [v1, v2]
    assert client.get("/readyz").json()["policy_version"] == v2
    assert metric(client, info(v2)) == 1.0 and metric(client, info(v1)) == 0.0
    assert metric(client, 'polyroute_policy_reloads_total{arm="champion"}') == 1.0
    # polling again without a change loads nothing
    loads = len(source.loads)
    assert client.post("/admin/reload").json()["champion"]["changed"] is False
    assert len(source.loads) == loads


def test_failed_load_keeps_the_old_policy(
    client: TestClient,
    sink: ListSink,
    source: DictSource,
    bundles: dict[str, PolicyBundle],
    caplog: pytest.LogCaptureFixture,
) -> None:
    source.current, source.fail = "2", {"2"}
    with caplog.at_level(logging.ERROR, logger="router.reload"):
        report = client.post("/admin/reload").json()["champion"]
    assert report["changed"] is False and "unreadable" in report["error"]
    assert report["serving_policy_version"] == bundles["1"].version
    assert ask(client).status_code == 200  # still serving, with the old policy
    assert sink.of("decision")[-1]["policy_version"] == bundles["1"].version
    failures = 'polyroute_policy_reload_failures_total{arm="champion",stage="load"}'
    assert metric(client, failures) == 1.0
    (record,) = [r for r in caplog.records if "reload failed" in r.getMessage()]
    assert "version 2" in record.getMessage() and "unreadable" in record.getMessage()
    # the next poll tries again: the source recovered
    source.fail = set()
    assert client.post("/admin/reload").json()["champion"]["changed"] is True
    assert sink.of("decision")[-1]["policy_version"] == bundles["1"].version
    ask(client)
    assert sink.of("decision")[-1]["policy_version"] == bundles["2"].version


def test_a_bundle_that_cannot_decide_is_not_installed(
    client: TestClient, source: DictSource, bundles: dict[str, PolicyBundle]
) -> None:
    source.current = "3"
    report = client.post("/admin/reload").json()["champion"]
    assert "cannot decide" in report["error"]
    assert report["serving_policy_version"] == bundles["1"].version
    assert ask(client).status_code == 200
    stage = 'polyroute_policy_reload_failures_total{arm="champion",stage="build"}'
    assert metric(client, stage) == 1.0


def test_a_failing_registry_is_counted(client: TestClient, source: DictSource) -> None:
    def unreachable() -> str:
        raise ConnectionError("registry unreachable")

    source.current_version = unreachable  # type: ignore[method-assign]
    assert "unreachable" in client.post("/admin/reload").json()["champion"]["error"]
    assert ask(client).status_code == 200
    stage = 'polyroute_policy_reload_failures_total{arm="champion",stage="poll"}'
    assert metric(client, stage) == 1.0


def test_background_polling_swaps_off_the_request_path(
    config: RouterConfig, bundles: dict[str, PolicyBundle], sink: ListSink
) -> None:
    source = DictSource(bundles, "1")
    fast = config.model_copy(update={"policy": config.policy.model_copy(update={"poll_s": 0.05})})  # type: ignore[union-attr]
    app = create_app(
        fast, bundles["1"], sink, transport=httpx.MockTransport(FakeUpstream()), source=source
    )
    with TestClient(app) as c:
        source.current = "2"
        deadline = time.monotonic() + 10
        while app.state.gateway.engine.bundle.version != bundles["2"].version:
            assert time.monotonic() < deadline, "the reloader did not swap"
            time.sleep(0.02)
        ask(c)
        assert sink.of("decision")[-1]["policy_version"] == bundles["2"].version
    assert not any(r._thread for r in app.state.gateway.reloaders.values())  # stopped


def test_reload_requires_a_source_and_the_admin_key(
    config: RouterConfig, bundles: dict[str, PolicyBundle], sink: ListSink
) -> None:
    import hashlib

    upstream = httpx.MockTransport(FakeUpstream())
    no_source = create_app(config, bundles["1"], sink, transport=upstream, source=None)
    with TestClient(no_source) as c:
        assert c.post("/admin/reload").status_code == 404
    locked = config.model_copy(
        update={"admin_api_key_sha256": hashlib.sha256(b"admin-secret").hexdigest()}
    )
    app = create_app(
        locked, bundles["1"], sink, transport=upstream, source=DictSource(bundles, "1")
    )
    with TestClient(app) as c:
        assert c.post("/admin/reload").status_code == 401
        ok = c.post("/admin/reload", headers={"authorization": "Bearer admin-secret"})
        assert ok.status_code == 200


def test_reloader_validates_poll_interval(bundles: dict[str, PolicyBundle]) -> None:
    from router.prometheus import GatewayMetrics

    with pytest.raises(ValueError, match="poll_s must be > 0"):
        PolicyReloader(DictSource(bundles, "1"), None, None, None, GatewayMetrics(), 0)  # type: ignore[arg-type]


def test_serve_without_a_bundle_starts_from_the_registry_alias(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    config: RouterConfig,
    bundles: dict[str, PolicyBundle],
) -> None:
    """``polyroute serve`` with a ``policy`` section and no --bundle: the alias's version serves
    from the start (the registry source is faked; the MLflow one is the lead's)."""
    import yaml

    import router.app as gateway_app

    source = DictSource(bundles, "2")
    monkeypatch.setattr(
        gateway_app, "registry_source", lambda cfg, challenger=False: None if challenger else source
    )
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    monkeypatch.setenv(gateway_app.ENV_CONFIG, str(path))
    monkeypatch.delenv(gateway_app.ENV_BUNDLE, raising=False)
    monkeypatch.setenv(gateway_app.ENV_EVENTS_DIR, str(tmp_path / "events"))
    with TestClient(gateway_app.app_from_env()) as c:
        assert c.get("/readyz").json()["policy_version"] == bundles["2"].version
        c.post("/admin/reload")  # a poll of the version already serving loads nothing again
    assert source.loads == ["2"]
    source.current = None
    with pytest.raises(ConfigError, match="no version to serve"):
        gateway_app.app_from_env()


def test_follows_the_mlflow_registry_alias(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    config: RouterConfig,
    bundles: dict[str, PolicyBundle],
) -> None:
    """With the real registry source (training.model_registry, embedded SQLite store): moving
    ``@champion`` swaps the serving policy at the next poll, and a rollback swaps it back."""
    model_registry = pytest.importorskip("training.model_registry")
    monkeypatch.setenv("POLYROUTE_HOME", str(tmp_path))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with model_registry.start_training_run(uri, "reload-test"):
        first = model_registry.log_bundle(bundles["1"])
        second = model_registry.log_bundle(bundles["2"])
    model_registry.set_alias("champion", first, "test", tracking_uri=uri)
    policy = {"registry": {"tracking_uri": uri}, "poll_s": 3600}
    cfg = RouterConfig.model_validate({**config.model_dump(), "policy": policy})
    sink = ListSink()
    app = create_app(cfg, bundles["1"], sink, transport=httpx.MockTransport(FakeUpstream()))
    with TestClient(app) as c:
        report = c.post("/admin/reload").json()["champion"]
        assert report["serving_source_version"] == first and report["changed"] is False
        model_registry.set_alias("champion", second, "test", tracking_uri=uri)
        report = c.post("/admin/reload").json()["champion"]
        assert report["changed"] is True and report["serving_source_version"] == second
        ask(c)
        assert sink.of("decision")[-1]["policy_version"] == bundles["2"].version
        # polyroute rollback: @champion goes back, the running service follows, no restart
        assert model_registry.rollback(tracking_uri=uri) == (second, first)
        report = c.post("/admin/reload").json()["champion"]
        assert report["changed"] is True and report["serving_source_version"] == first
        ask(c)
    assert sink.of("decision")[-1]["policy_version"] == bundles["1"].version


def test_a_vanished_source_version_retires_the_arm(bundles: dict[str, PolicyBundle]) -> None:
    from router.prometheus import GatewayMetrics

    source = DictSource(bundles, "1")
    installed: list[str] = []
    retired: list[bool] = []
    reloader = PolicyReloader(
        source,
        lambda bundle: PolicyReloaderProbe(bundle),  # type: ignore[arg-type,return-value]
        lambda engine, version: installed.append(version),
        lambda: None,
        GatewayMetrics(),
        poll_s=3600,
        arm="challenger",
        retire=lambda: retired.append(True),
    )
    assert reloader.check_now().changed and installed == ["1"]
    source.current = None  # the alias was deleted
    result = reloader.check_now()
    assert result.changed and retired == [True] and reloader.source_version is None
    assert not reloader.check_now().changed and retired == [True]  # once


class PolicyReloaderProbe:
    """An engine stand-in: decides nothing, so the warm-up passes."""

    def __init__(self, bundle: PolicyBundle) -> None:
        self.bundle = bundle

    def decide(self, *args: object) -> None:
        return None


def test_admin_routes_are_closed_with_tenants_and_no_admin_key(
    bundles: dict[str, PolicyBundle],
) -> None:
    from pathlib import Path

    data = load_config(Path(__file__).parents[1] / EXAMPLE_CONFIG).model_dump()
    data["policy"] = {"poll_s": 3600}
    assert data["tenants"] and data.get("admin_api_key_sha256") is None
    cfg = RouterConfig.model_validate(data)
    app = create_app(cfg, bundles["1"], ListSink(), source=DictSource(bundles, "1"))
    with TestClient(app) as c:
        response = c.post("/admin/reload")
        assert response.status_code == 401
        assert "admin_api_key_sha256" in response.json()["error"]["message"]
