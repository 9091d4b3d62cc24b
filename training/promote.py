"""The promotion gate: a candidate becomes ``@champion`` only on sufficient evidence.

Rule (checked in this order; the first that fails is the recorded reason):

1. the evaluation has the candidate and the champion on the same held-out logged decisions;
2. the effective sample size of the candidate's importance weights, ``(Σw)² / Σw²``, is at
   least ``min_ess`` (with fewer, the interval below is not to be trusted: Owen 2013, §9.4);
3. candidate and champion are valued under the same reward spec (the retraining evaluates the
   champion under the candidate's weights);
4. the lower bound of the ``1 - alpha`` interval of the improvement ``V(candidate) -
   V(champion)``, estimated by ``estimator`` (default doubly robust) with a paired bootstrap over
   the same resampled decisions, is above ``margin``;
5. the candidate is not worse than the best fixed model valued on the same logs: when the
   evaluation has ``fixed:<model>`` baselines, the one of highest estimated value is the
   reference, and a candidate whose interval of ``V(candidate) - V(best fixed)`` lies wholly
   below 0 is refused (a router that loses to "always model X" has no reason to serve).

Passing all of them moves ``@champion`` to the candidate (and removes ``@challenger``, so no
stale candidate stays canaried); otherwise it becomes ``@challenger``.
Either way the decision, its reason and its numbers are written to the active MLflow run
(params ``gate.*``, metrics ``gate.*``, tag ``gate.decision``) and to the model version's tags.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from features.errors import ConfigError
from training import model_registry

# estimators the evaluation computes by default (training.ope_logged.DEFAULT_ESTIMATORS)
GATE_ESTIMATORS = ("dr", "snipw", "ipw", "switch_dr", "dm")


@dataclass(frozen=True)
class GateConfig:
    """Parameters of the promotion gate (see the module docstring)."""

    margin: float = 0.0
    min_ess: float = 200.0
    estimator: str = "dr"
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if not math.isfinite(self.margin):
            raise ConfigError(f"--margin: must be a finite number, got {self.margin}")
        if not self.min_ess >= 1:
            raise ConfigError(f"--min-ess: must be >= 1, got {self.min_ess}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha: must be in (0, 1), got {self.alpha}")
        if self.estimator not in GATE_ESTIMATORS:
            raise ConfigError(
                f"--estimator: must be one of {GATE_ESTIMATORS}, got {self.estimator!r}"
            )


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    delta: float
    low: float
    high: float
    ess: float
    estimator: str
    margin: float

    def overruled(self, why: str) -> GateDecision:
        """The same evidence, not promoted, with ``why`` ahead of the gate's own reason."""
        return replace(self, promote=False, reason=f"{why}; the gate said: {self.reason}")

    def as_metrics(self) -> dict[str, float]:
        return {
            f"gate.{k}": float(v)
            for k, v in asdict(self).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        } | {"gate.promote": float(self.promote)}


def gate(
    evaluation: Any,
    candidate: str = "candidate",
    champion: str = "champion",
    config: GateConfig | None = None,
) -> GateDecision:
    """Apply the gate to a :class:`training.ope_logged.PolicyEvaluation`."""
    config = config or GateConfig()
    nan = float("nan")
    if candidate not in evaluation.diagnostics or champion not in evaluation.diagnostics:
        return GateDecision(
            False,
            f"the evaluation lacks {candidate!r} or {champion!r}",
            nan,
            nan,
            nan,
            nan,
            config.estimator,
            config.margin,
        )
    ess = float(evaluation.diagnostics[candidate]["ess"])
    imp = evaluation.improvement(candidate, champion, estimator=config.estimator)
    delta, low, high = float(imp["delta"]), float(imp["low"]), float(imp["high"])
    level = f"{100 * (1 - float(imp['alpha'])):.0f}%"
    if not imp.get("same_reward_spec", True):
        reason = (
            "candidate and champion were valued under different reward specs: their values "
            "are not comparable (evaluate the champion under the candidate's reward)"
        )
        return GateDecision(False, reason, delta, low, high, ess, config.estimator, config.margin)
    if ess < config.min_ess:
        reason = (
            f"effective sample size {ess:.0f} < {config.min_ess:.0f}: too little overlap with the "
            f"logging policy to trust the estimate (delta {delta:+.4f}, {level} [{low:+.4f}, "
            f"{high:+.4f}])"
        )
        return GateDecision(False, reason, delta, low, high, ess, config.estimator, config.margin)
    if not low > config.margin:
        reason = (
            f"{config.estimator} improvement {delta:+.4f} has {level} lower bound {low:+.4f} "
            f"<= margin {config.margin:+.4f} (ESS {ess:.0f})"
        )
        return GateDecision(False, reason, delta, low, high, ess, config.estimator, config.margin)
    reason = (
        f"{config.estimator} improvement {delta:+.4f}, {level} [{low:+.4f}, {high:+.4f}] above "
        f"margin {config.margin:+.4f}; ESS {ess:.0f} >= {config.min_ess:.0f}"
    )
    fixed = best_fixed(evaluation, config.estimator)
    if fixed is not None:
        vs = evaluation.improvement(candidate, fixed, estimator=config.estimator)
        if float(vs["high"]) < 0:
            reason = (
                f"worse than {fixed!r} on the same logs: {config.estimator} difference "
                f"{float(vs['delta']):+.4f}, {level} [{float(vs['low']):+.4f}, "
                f"{float(vs['high']):+.4f}] (vs the champion: {reason})"
            )
            return GateDecision(
                False, reason, delta, low, high, ess, config.estimator, config.margin
            )
        reason += f"; not worse than {fixed!r} ({float(vs['delta']):+.4f})"
    return GateDecision(True, reason, delta, low, high, ess, config.estimator, config.margin)


def best_fixed(evaluation: Any, estimator: str = "dr") -> str | None:
    """The ``fixed:<model>`` baseline of highest estimated reward (None without any)."""
    names: list[str] = [p for p in evaluation.diagnostics if str(p).startswith("fixed:")]
    if not names:
        return None
    table = evaluation.table("reward")
    values = {p: float(table.loc[(p, estimator), "value"]) for p in names}
    return max(values, key=values.__getitem__)


def apply_decision(
    decision: GateDecision,
    version: str,
    model_name: str = model_registry.MODEL_NAME,
    tracking_uri: str | None = None,
) -> str:
    """Move the alias the decision calls for and record it in MLflow; returns the alias set."""
    import mlflow

    alias = model_registry.CHAMPION if decision.promote else model_registry.CHALLENGER
    model_registry.set_alias(alias, version, decision.reason, model_name, tracking_uri)
    if decision.promote:
        # an older rejected candidate must not stay canaried against the new champion
        model_registry.delete_alias(model_registry.CHALLENGER, model_name, tracking_uri)
    if mlflow.active_run() is not None:
        mlflow.log_metrics(decision.as_metrics())
        mlflow.set_tags(
            {
                "gate.decision": "promoted" if decision.promote else "not promoted",
                "gate.reason": decision.reason[:4000],
                "gate.alias": alias,
                "gate.version": version,
            }
        )
    return alias
