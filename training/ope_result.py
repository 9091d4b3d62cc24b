"""What :func:`training.ope_logged.evaluate_policies` returns: the estimates, diagnostics and
per-round terms of each evaluated policy, and their paired comparison
(:meth:`PolicyEvaluation.improvement`, support-aware: :mod:`training.ope_support`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pandas as pd

from features.errors import UnknownKeyError
from training import ope_support
from training.ope_intervals import gaussian_interval

#: the outcome columns every policy is valued on
TARGETS = ("reward", "quality", "cost_usd")


@dataclass
class PolicyEvaluation:
    """What :func:`evaluate_policies` found.

    Attributes
    ----------
    estimates : DataFrame indexed by (policy, estimator, target)
        Columns ``value``, ``low, high`` (the support-aware interval, :mod:`training.ope_support`),
        ``support_se``, ``boot_low, boot_high, boot_mean, gauss_low, gauss_high``.
    diagnostics : dict policy -> dict
        ``n, ess, ess_ratio, max_weight, n_weight_above_lambda, action_counts`` (logged
        chosen-model counts), ``target_share`` (mean pmf per model), ``support_deficit`` (mean
        mass on models the logger gave probability 0), ``ess_expected`` and ``departure``
        (:func:`training.ope_support.summary`: support measured on the logger's whole pmf, not
        on the actions drawn), ``reward_spec``, ``kind``, ``warnings``.
    traffic : DataFrame, time bucket (UTC) x model
        Share of logged decisions per model (all decisions, overrides included).
    n : int
        Decisions evaluated.
    n_excluded : dict reason -> count
    notes : list of str
        Exclusions and reward-spec caveats, in words.
    models : the model list of the action index; ``event_ids`` the evaluated decisions (rows).
    action_dist : dict policy -> ndarray, shape (n, len(models))
        Each policy's pmf on each evaluated decision (0 on models not eligible there).
    terms : dict (policy, target) -> DataFrame, shape (n, n_estimators)
        Per-round terms (:func:`round_terms`); their column means are the estimates.
    logging_pmf : ndarray (n, len(models)), the logger's pmf on each evaluated decision;
        ``q_hat`` and ``sigma2`` per (policy, target): the cross-fitted reward model on every
        model and its squared error on the logged actions (the support s.e.'s inputs);
        ``equivalence``: the margin of :func:`training.ope_support.verdict`.
    """

    estimates: pd.DataFrame
    diagnostics: dict[str, dict[str, Any]]
    traffic: pd.DataFrame
    n: int
    n_excluded: dict[str, int]
    notes: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list, repr=False)
    action_dist: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    terms: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict, repr=False)
    alpha: float = 0.05
    n_bootstrap: int = 1000
    seed: int = 0
    logging_pmf: np.ndarray | None = field(default=None, repr=False)
    q_hat: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)
    sigma2: dict[tuple[str, str], float] = field(default_factory=dict, repr=False)
    equivalence: float = ope_support.DEFAULT_EQUIVALENCE

    @property
    def policies(self) -> list[str]:
        return list(self.diagnostics)

    def table(self, target: str = "reward") -> pd.DataFrame:
        """Estimates of one target, indexed by (policy, estimator)."""
        return cast(pd.DataFrame, self.estimates.xs(target, level="target"))

    def round_terms(self, policy: str, estimator: str = "dr", target: str = "reward") -> np.ndarray:
        """The per-round terms of ``policy`` whose mean is its ``estimator`` value, shape (n,)
        (:func:`training.ope.round_terms`: e.g. ``w r`` for IPW, ``q̂(x, π) + w (r - q̂_a)``
        for DR), aligned with :attr:`event_ids`."""
        if (policy, target) not in self.terms:
            raise UnknownKeyError(f"no evaluated policy {policy!r} / target {target!r}")
        return self.terms[(policy, target)][estimator].to_numpy()

    def improvement(
        self, candidate: str, baseline: str, estimator: str = "dr", target: str = "reward"
    ) -> dict[str, Any]:
        """``V(candidate) - V(baseline)`` with a paired bootstrap interval.

        The per-round differences ``d_i = term_i(candidate) - term_i(baseline)`` are resampled
        with the same indices for both policies (:func:`training.ope_intervals.bootstrap_means`
        with this evaluation's ``n_bootstrap`` and ``seed``: the resamples of the marginal
        intervals), so what the two policies share cancels; the Gaussian interval uses
        ``se = std(d) / sqrt(n)``.

        The reported ``low, high`` are support-aware (:mod:`training.ope_support`): at least
        ``delta ± z · support_se``, where ``support_se`` comes from the logger's pmf and the
        weight ``π_candidate - π_baseline`` on each model, so where the two policies differ on
        models the logger rarely chose the interval stays wide; ``verdict`` is
        :func:`training.ope_support.verdict` of that interval.

        Returns
        -------
        dict with ``delta, low, high`` (support-aware), ``boot_low, boot_high`` (bootstrap
        percentiles), ``support_se``, ``se, gauss_low, gauss_high``, ``verdict``,
        ``estimator, target, n, alpha, same_reward_spec``.
        """
        d = self.round_terms(candidate, estimator, target) - self.round_terms(
            baseline, estimator, target
        )
        n = len(d)
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        gauss_low, gauss_high = gaussian_interval(d, alpha=self.alpha)
        specs = [self.diagnostics[p].get("reward_spec") for p in (candidate, baseline)]
        q = self.q_hat.get((candidate, target))
        return {
            **ope_support.paired_interval(
                d,
                self.action_dist[candidate] - self.action_dist[baseline],
                self.logging_pmf,
                q,
                self.sigma2.get((candidate, target), float("nan")),
                estimator=estimator,
                alpha=self.alpha,
                n_bootstrap=self.n_bootstrap,
                seed=self.seed,
                equivalence=self.equivalence,
            ),
            "se": se,
            "gauss_low": gauss_low,
            "gauss_high": gauss_high,
            "estimator": estimator,
            "target": target,
            "n": n,
            "alpha": self.alpha,
            "same_reward_spec": specs[0] == specs[1],
        }
