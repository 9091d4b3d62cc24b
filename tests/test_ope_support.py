"""Support-aware OPE (training/ope_support.py): what the logs cannot show is said, not guessed.

The failure this guards against (issue 8): a 98%-greedy logger, a candidate that prefers a model
the logger gave a floor probability, and a reward model that is wrong about that model. The
bootstrap interval of DR is then a narrow band around the reward model's guess.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import pytest

from training import ope, ope_support
from training.ope_support import BETTER, CANNOT_TELL, SAME, WORSE, verdict


def cell(table: pd.DataFrame, row: str | tuple[str, ...], column: str) -> float:
    """``table.loc[row, column]``, a number (pandas-stubs type a cell as any scalar)."""
    return float(cast(float, table.loc[row, column]))


def test_second_moment_and_expected_ess_follow_the_logger_pmf() -> None:
    k, n = 4, 10
    uniform = np.full((n, k), 1 / k)
    greedy = np.zeros((n, k))
    greedy[:, 2] = 1.0
    np.testing.assert_allclose(ope_support.weight_second_moment(uniform, uniform), 1.0)
    np.testing.assert_allclose(ope_support.weight_second_moment(greedy, uniform), k)
    assert ope_support.expected_ess(uniform, uniform) == pytest.approx(n)
    assert ope_support.expected_ess(greedy, uniform) == pytest.approx(n / k)
    floor = np.full((n, k), 0.01)
    floor[:, 0] = 1 - 0.01 * (k - 1)
    assert ope_support.expected_ess(greedy, floor) == pytest.approx(n / 100)
    never = np.zeros((n, k))
    never[:, 0] = 1.0  # the target's model has logging probability 0
    assert np.isinf(ope_support.weight_second_moment(greedy, never)).all()
    assert ope_support.expected_ess(greedy, never) == 0.0
    summary = ope_support.summary(greedy, uniform)
    assert summary["departure"] == pytest.approx(0.75)


def test_verdict_says_no_clear_difference_only_inside_the_margin() -> None:
    assert verdict(0.01, 0.2) == BETTER
    assert verdict(-0.2, -0.01) == WORSE
    assert verdict(-0.03, 0.04, equivalence=0.05) == SAME
    assert verdict(-0.06, 0.04, equivalence=0.05) == CANNOT_TELL
    assert verdict(-np.inf, np.inf) == CANNOT_TELL
    assert "Cannot tell" in ope_support.describe(CANNOT_TELL, "v1", "v3", 0.05)


def _near_greedy_run(seed: int, n: int = 100, k: int = 5) -> dict[str, float]:
    """One logged sample: logger 98% on model 0; the candidate always model 1, which is better
    (0.8 vs 0.5) than a reward model fitted mostly on model 0 believes (it says 0.5)."""
    rng = np.random.default_rng(seed)
    mu = np.full((n, k), 0.02 / (k - 1))
    mu[:, 0] = 0.98
    mean = np.array([0.5, 0.8, 0.4, 0.4, 0.4])
    action = np.array([rng.choice(k, p=row) for row in mu])
    reward = (rng.random(n) < mean[action]).astype(float)
    target = np.zeros((n, k))
    target[:, 1] = 1.0
    q_hat = np.tile([0.5, 0.5, 0.4, 0.4, 0.4], (n, 1))
    table = ope.estimate_policy_value(
        action, reward, mu[np.arange(n), action], target, q_hat, n_bootstrap=200, seed=seed,
        logging_pmf=mu,
    )  # fmt: skip
    boot_low, boot_high = cell(table, "dr", "boot_low"), cell(table, "dr", "boot_high")
    low, high = cell(table, "dr", "low"), cell(table, "dr", "high")
    return {
        "truth": 0.8,
        "boot_cover": float(boot_low <= 0.8 <= boot_high),
        "cover": float(low <= 0.8 <= high),
        "width": high - low,
    }


def test_near_greedy_logs_give_a_wide_interval_where_the_bootstrap_misses() -> None:
    runs = [_near_greedy_run(seed) for seed in range(60)]
    boot = np.mean([r["boot_cover"] for r in runs])
    cover = np.mean([r["cover"] for r in runs])
    assert boot < 0.6  # the failure: the bootstrap interval sits on the reward model's guess
    assert cover >= 0.95
    assert np.median([r["width"] for r in runs]) > 0.5  # and it says so by its width


def test_uniform_logs_keep_the_bootstrap_interval() -> None:
    rng = np.random.default_rng(0)
    n, k = 2000, 4
    mu = np.full((n, k), 1 / k)
    action = rng.integers(0, k, n)
    mean = np.array([0.3, 0.5, 0.6, 0.7])
    reward = (rng.random(n) < mean[action]).astype(float)
    target = np.tile([0.1, 0.2, 0.3, 0.4], (n, 1))
    q_hat = np.tile(mean, (n, 1))
    table = ope.estimate_policy_value(
        action, reward, mu[np.arange(n), action], target, q_hat, n_bootstrap=300, logging_pmf=mu
    )
    dr = table.loc["dr"]
    # with support everywhere, the model-based s.e. is no wider than the sample shows (~10%)
    assert dr["high"] - dr["low"] <= 1.1 * (dr["boot_high"] - dr["boot_low"])
    assert dr["low"] <= dr["boot_low"] and dr["high"] >= dr["boot_high"]


def test_logging_pmf_must_match_the_logged_pscore() -> None:
    n, k = 5, 3
    mu = np.full((n, k), 1 / k)
    with pytest.raises(ValueError, match="logging_pmf: its probability of the logged action"):
        ope.estimate_policy_value(
            np.zeros(n, int), np.zeros(n), np.full(n, 0.5), mu, np.zeros((n, k)), logging_pmf=mu
        )
    with pytest.raises(ValueError, match=r"logging_pmf: expected shape \(5, 3\)"):
        ope.estimate_policy_value(
            np.zeros(n, int), np.zeros(n), np.full(n, 1 / k), mu, np.zeros((n, k)),
            logging_pmf=np.full((n, 2), 0.5),
        )  # fmt: skip
