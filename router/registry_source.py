"""The serving side of the MLflow model registry: where the gateway finds the policy to serve.

:class:`MlflowBundleSource` is the :class:`router.reload.BundleSource` of a registry alias
(``models:/<model_name>@<alias>``): the gateway polls the version the alias points at and loads
its bundle when it moves. Writing to the registry (logging bundles, moving aliases, rolling
back) is training's job: ``training.model_registry`` builds on the read-only functions here.

``tracking_uri`` resolution: explicit argument, else ``MLFLOW_TRACKING_URI`` (read when called,
never at import), else ``sqlite:///<home>/mlflow.db``, where home is ``POLYROUTE_HOME`` or
``./.polyroute``. MLflow itself is imported only when a function needs it (its import is slow).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from features.errors import PolicyError
from router.bundle import PolicyBundle

MODEL_NAME = "polyroute-policy"
CHAMPION = "champion"
CHALLENGER = "challenger"


def default_home() -> Path:
    """polyroute's local state directory: ``POLYROUTE_HOME`` or ``./.polyroute``."""
    return Path(os.environ.get("POLYROUTE_HOME", ".polyroute")).resolve()


def resolve_tracking_uri(uri: str | None = None) -> str:
    if uri:
        return uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def quiet_mlflow() -> None:
    """No artifact progress bars or pyfunc signature chatter in the loop's output."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow.pyfunc", "mlflow.models.model", "mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)


def mlflow_client(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def is_missing(exc: Exception) -> bool:
    """True when MLflow says the model or the alias does not exist, as opposed to failing
    (``TEMPORARILY_UNAVAILABLE``, a lost database connection: those must not read as "none")."""
    return str(getattr(exc, "error_code", "")) in (
        "RESOURCE_DOES_NOT_EXIST",  # no such registered model
        "INVALID_PARAMETER_VALUE",  # no such alias (MLflow 3.x)
    )


def alias_version(
    alias: str, model_name: str = MODEL_NAME, tracking_uri: str | None = None
) -> str | None:
    """The version ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(
            mlflow_client(tracking_uri).get_model_version_by_alias(model_name, alias).version
        )
    except MlflowException as exc:
        if is_missing(exc):
            return None
        raise  # an unreachable or broken registry is an error, not "no alias"


def load_bundle(
    version: str, model_name: str = MODEL_NAME, tracking_uri: str | None = None
) -> PolicyBundle:
    """Download registered ``version`` and load its bundle (checks the bundle's own version)."""
    import mlflow

    quiet_mlflow()
    client = mlflow_client(tracking_uri)
    source = client.get_model_version_download_uri(model_name, version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source))
    found = sorted(local.rglob("bundle.json"))
    if not found:
        raise PolicyError(f"{model_name} version {version}: no bundle.json in {source}")
    bundle = PolicyBundle.load(found[0].parent)
    expected = client.get_model_version(model_name, version).tags.get("bundle_version")
    if expected and expected != bundle.version:
        raise PolicyError(
            f"{model_name} version {version}: bundle is {bundle.version}, registry says {expected}"
        )
    return bundle


class MlflowBundleSource:
    """Where the service's reloader finds its policy: ``models:/<model_name>@<alias>``."""

    def __init__(
        self, tracking_uri: str | None = None, model_name: str = MODEL_NAME, alias: str = CHAMPION
    ) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.model_name = model_name
        self.alias = alias

    def current_version(self) -> str | None:
        return alias_version(self.alias, self.model_name, self.tracking_uri)

    def load(self, version: str) -> PolicyBundle:
        return load_bundle(version, self.model_name, self.tracking_uri)

    def __repr__(self) -> str:
        return f"MlflowBundleSource({self.model_name}@{self.alias} at {self.tracking_uri})"
