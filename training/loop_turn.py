"""One turn of the learning loop, tracked in MLflow: ``polyroute train``.

champion (registry) ─▶ train from logs ─▶ off-policy evaluation on the held-out latest logs ─▶
HTML report ─▶ register the candidate ─▶ gate ─▶ ``@champion`` or ``@challenger``

Data window: from ``--since`` (default: the beginning of the log), and never before the end of
what the champion already learned (its bundle's ``trained_through``) when warm-starting from it.

Everything lands in one MLflow run of the ``polyroute-training`` experiment: parameters (data
window, join window, default quality, reward weights, warm start, gate settings), counts,
the estimates of candidate and champion, the gate's decision and reason, the report, and the
candidate bundle as a registered pyfunc model.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from features.errors import ConfigError, PolicyError
from router.bundle import PolicyBundle
from router.events.join import unrated_horizon
from router.policy.base import RewardSpec
from training import model_registry
from training.promote import GateConfig, GateDecision, apply_decision, gate
from training.train import (
    DEFAULT_JOIN_WINDOW_S,
    DEFAULT_QUALITY,
    TrainResult,
    copy_policy,
    load_events,
    parse_since,
    train_from_logs,
)

logger = logging.getLogger(__name__)
FIXED_TOP = 5  # "always model X" baselines the gate compares a candidate with


@dataclass
class RetrainConfig:
    """Everything one retraining needs; the CLI, the demo and the notebooks build one."""

    events: str
    since: str | float | None = None
    tracking_uri: str | None = None
    model_name: str = model_registry.MODEL_NAME
    base_bundle: str | None = None  # registered as the first champion when there is none
    warm_start: bool = True
    holdout: float = 0.3
    join_window_s: float = DEFAULT_JOIN_WINDOW_S
    default_quality: float = DEFAULT_QUALITY
    skip_unrated: bool = False  # leave out every decision without feedback (see train_from_logs)
    w_cost: float | None = None  # None: the champion's reward weights
    w_latency: float | None = None
    gate: GateConfig = field(default_factory=GateConfig)
    report_dir: str = ".polyroute/reports"
    n_bootstrap: int = 1000
    seed: int = 0
    promote: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(
                f"--holdout: the share of the latest decisions kept for evaluation must be in "
                f"(0, 1), got {self.holdout}"
            )
        if self.join_window_s < 0:
            raise ConfigError(f"--join-window-s: must be >= 0, got {self.join_window_s}")
        if self.n_bootstrap < 1:
            raise ConfigError(f"--n-bootstrap: must be >= 1, got {self.n_bootstrap}")
        for name in ("w_cost", "w_latency"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ConfigError(f"--{name.replace('_', '-')}: must be >= 0, got {value}")


@dataclass
class RetrainOutcome:
    run_id: str
    version: str
    alias: str
    decision: GateDecision
    report: Path
    stats: dict[str, Any]
    champion_version: str
    candidate: PolicyBundle


def fixed_baselines(frame: Any, top: int = FIXED_TOP, min_chosen: int = 20) -> list[str]:
    """``fixed:<model>`` for the ``top`` models the log chose most (each at least
    ``min_chosen`` times: a model the logger rarely chose has no support to value "always it")."""
    from training.ope_logged import FIXED

    counts = frame["chosen_model"].value_counts()
    return [f"{FIXED}{m}" for m, c in counts.head(top).items() if c >= min_chosen]


def _ensure_champion(config: RetrainConfig) -> tuple[str, PolicyBundle]:
    version = model_registry.alias_version(
        model_registry.CHAMPION, config.model_name, config.tracking_uri
    )
    if version is not None:
        return version, model_registry.load_bundle(version, config.model_name, config.tracking_uri)
    if config.base_bundle is None:
        raise PolicyError(
            f"{config.model_name} has no @{model_registry.CHAMPION}: pass --base BUNDLE_DIR to "
            "register the bundle that produced the logs as the first champion"
        )
    bundle = PolicyBundle.load(config.base_bundle)
    version = model_registry.register_champion(
        bundle,
        "initial champion: the bundle that served the logs (no champion was registered)",
        config.model_name,
        config.tracking_uri,
        {"origin": "base bundle", "base_bundle": str(config.base_bundle)},
    )
    return version, bundle


def _reward_spec(config: RetrainConfig, base: PolicyBundle) -> RewardSpec:
    """The champion's reward with the weights the config overrides."""
    overrides = {"w_cost": config.w_cost, "w_latency": config.w_latency}
    return replace(base.reward, **{k: v for k, v in overrides.items() if v is not None})


def _log_run(
    config: RetrainConfig, result: TrainResult, champion_version: str, since: float | None
) -> None:
    import mlflow

    params = {
        "events": config.events if "://" not in config.events else config.events.split("@")[-1],
        "since": "" if since is None else since,
        "join_window_s": config.join_window_s,
        "default_quality": config.default_quality,
        "skip_unrated": config.skip_unrated,
        "holdout": config.holdout,
        "warm_start": config.warm_start,
        "champion_version": champion_version,
        "base_bundle_version": result.base.version,
        "reward": json.dumps(result.candidate.reward.__dict__),
        "n_bootstrap": config.n_bootstrap,
        "seed": config.seed,
    }
    params.update({f"gate.{k}": v for k, v in asdict(config.gate).items()})
    params["reward_model"] = json.dumps(result.reward_model.params())
    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
    mlflow.log_metrics(
        {
            k: float(v)
            for k, v in result.stats.items()
            if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
        }
    )


def retrain(config: RetrainConfig) -> RetrainOutcome:
    """Train a candidate from the logs, evaluate it against the champion, register it, gate it."""
    import mlflow

    from training.ope_logged import BASELINES, evaluate_policies
    from training.report import log_report_to_mlflow, write_report

    champion_version, champion = _ensure_champion(config)
    since = parse_since(config.since)
    learned = champion.provenance.get("trained_through")
    if config.warm_start and learned is not None:
        # the warm start already learned everything up to here: learning it again would
        # count those decisions twice (and evaluate the candidate on what it saw)
        since = max(since or 0.0, float(learned) + 1e-6)
    events = load_events(config.events, since)
    result = train_from_logs(
        events,
        champion,
        reward=_reward_spec(config, champion),
        warm_start=config.warm_start,
        holdout=config.holdout,
        join_window_s=config.join_window_s,
        default_quality=config.default_quality,
        seed=config.seed,
        skip_unrated=config.skip_unrated,
    )
    # the champion is judged under the candidate's reward (its pmf does not depend on it), so
    # a change of weights cannot pass for an improvement
    judged = PolicyBundle(
        champion.featurizer,
        champion.catalogue,
        copy_policy(champion.policy, result.candidate.reward),
        champion.provenance,
    )
    with model_registry.start_training_run(config.tracking_uri, "retrain") as run:
        _log_run(config, result, champion_version, since)
        evaluation = evaluate_policies(
            result.holdout_rows.frame,
            {"candidate": result.candidate, "champion": judged},
            baselines=(*BASELINES, *fixed_baselines(result.holdout_rows.frame)),
            n_bootstrap=config.n_bootstrap,
            seed=config.seed,
            alpha=config.gate.alpha,
            min_ess=config.gate.min_ess,
            # the holdout is a slice of the log: pending feedback is judged on the whole log
            feedback_horizon=unrated_horizon(
                result.joined, config.join_window_s, config.skip_unrated
            ),
        )
        decision = gate(evaluation, "candidate", "champion", config.gate)
        report_dir = Path(config.report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        report = write_report(
            evaluation,
            report_dir / f"evaluation-{run.info.run_id[:12]}.html",
            title=f"Candidate vs champion v{champion_version}",
            champion="champion",
            candidate="candidate",
            extra={"gate": decision.reason, **result.stats},
            estimator=config.gate.estimator,
            min_ess=config.gate.min_ess,
        )
        log_report_to_mlflow(report)
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "estimates.csv"
            evaluation.estimates.to_csv(table)
            mlflow.log_artifact(str(table))
        for name, diag in evaluation.diagnostics.items():
            mlflow.log_metrics(
                {
                    f"{name}.ess": float(diag["ess"]),
                    f"{name}.ess_expected": float(diag["ess_expected"]),
                    f"{name}.max_weight": float(diag["max_weight"]),
                }
            )
        version = model_registry.log_bundle(
            result.candidate,
            config.model_name,
            {"champion_at_training": champion_version, "run": run.info.run_id},
        )
        now = model_registry.alias_version(
            model_registry.CHAMPION, config.model_name, config.tracking_uri
        )
        if decision.promote and now != champion_version:
            # e.g. an operator rolled back while this ran: never undo that silently
            decision = decision.overruled(
                f"@champion moved from v{champion_version} to v{now} during training: not promoted"
            )
        if not config.promote:
            decision = decision.overruled("promotion disabled (--no-promote)")
        alias = apply_decision(decision, version, config.model_name, config.tracking_uri)
        return RetrainOutcome(
            run_id=run.info.run_id,
            version=version,
            alias=alias,
            decision=decision,
            report=report,
            stats=dict(result.stats),
            champion_version=champion_version,
            candidate=result.candidate,
        )
