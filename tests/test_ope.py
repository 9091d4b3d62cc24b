"""OPE estimators (training/ope.py, ope_intervals.py) against published reference values.

The reference values were computed by Open Bandit Pipeline 0.5.7 and vw-estimators 0.2.2 on
three cases (../shared/fixtures/OPE_REFERENCE.md); every one is checked to 1e-9.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from training import ope
from training import ope_intervals as oi

# the shared copy when checked out beside shared/, else the copy vendored with the tests (same
# bytes, so the reference-value tests run on any clean clone)
SHARED_FIXTURE = Path(__file__).parents[2] / "shared" / "fixtures" / "ope_reference.npz"
VENDORED_FIXTURE = Path(__file__).parent / "fixtures" / "ope_reference.npz"
FIXTURE = SHARED_FIXTURE if SHARED_FIXTURE.is_file() else VENDORED_FIXTURE
TOL = 1e-9
CASES = ("A", "B", "C")


@pytest.fixture(scope="module")
def ref() -> Any:
    if not FIXTURE.is_file():
        pytest.skip(f"OPE reference fixture not present at {FIXTURE}")
    return np.load(FIXTURE)


def cell(table: pd.DataFrame, row: str | tuple[str, ...], column: str) -> float:
    """``table.loc[row, column]``, a number (pandas-stubs type a cell as any scalar)."""
    return cast(float, table.loc[row, column])


class Case:
    def __init__(self, ref: Any, name: str) -> None:
        self.name, self.ref = name, ref
        self.action = ref[f"{name}__action"]
        self.reward = ref[f"{name}__reward"]
        self.pscore = ref[f"{name}__pscore"]
        self.pi = ref[f"{name}__action_dist"]
        self.q = ref[f"{name}__estimated_rewards_by_reg_model"]
        self.w = ref[f"{name}__vw_p_pred"] / ref[f"{name}__vw_p_log"]
        self.rmin, self.rmax = float(self["vw_rmin"]), float(self["vw_rmax"])

    def __getitem__(self, key: str) -> Any:
        return self.ref[f"{self.name}__{key}"]

    def expect(self, key: str) -> Any:
        return pytest.approx(float(self[key]), abs=TOL, rel=TOL)

    @property
    def args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.action, self.reward, self.pscore, self.pi


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest, ref: Any) -> Case:
    return Case(ref, request.param)


def test_point_estimates_match_obp(case: Case) -> None:
    q = case.q
    assert ope.dm(case.pi, q) == case.expect("dm")
    assert ope.ipw(*case.args) == case.expect("ipw")
    assert ope.snipw(*case.args) == case.expect("snipw")
    assert ope.dr(*case.args, q) == case.expect("dr")
    assert ope.sndr(*case.args, q) == case.expect("sndr")
    assert ope.switch_dr(*case.args, q, lambda_=5.0) == case.expect("switch_dr_5")
    assert ope.dros(*case.args, q, lambda_=10.0) == case.expect("dros_10")
    assert ope.dr(*case.args, np.zeros_like(q)) == case.expect("dr_zero_qhat")


def test_point_estimates_match_vw_estimators(case: Case) -> None:
    w, r = case.w, case.reward
    np.testing.assert_allclose(w, ope.importance_weights(case.action, case.pscore, case.pi))
    assert oi.ips_estimate(w, r) == case.expect("vw_ips")
    assert oi.snips_estimate(w, r) == case.expect("vw_snips")
    assert oi.empirical_likelihood_estimate(w, r) == case.expect("vw_mle")
    assert oi.cressie_read_estimate(w, r) == case.expect("vw_cressieread")


def test_intervals_match_vw_estimators(case: Case) -> None:
    w, r, bounds = case.w, case.reward, {"rmin": case.rmin, "rmax": case.rmax}
    for name, (low, high) in {
        "gaussian": oi.gaussian_interval(w * r, alpha=0.05),
        "clopper_pearson": oi.clopper_pearson_interval(w, r, alpha=0.05, **bounds),
        "cressieread": oi.cressie_read_interval(w, r, alpha=0.05, **bounds),
    }.items():
        assert low == case.expect(f"vw_{name}_ci_low"), name
        assert high == case.expect(f"vw_{name}_ci_high"), name


def test_table_matches_obp_and_its_bootstrap(case: Case) -> None:
    table = ope.estimate_policy_value(*case.args, case.q, alpha=0.05, n_bootstrap=1000, seed=12345)
    assert list(table.index) == ["ipw", "snipw", "dm", "dr", "sndr", "switch_dr", "dros"]
    assert list(table.columns) == list(ope.COLUMNS)
    for row, key in {
        "dm": "dm",
        "ipw": "ipw",
        "snipw": "snipw",
        "dr": "dr",
        "sndr": "sndr",
        "switch_dr": "switch_dr_5",
        "dros": "dros_10",
    }.items():
        assert table.loc[row, "value"] == case.expect(key), row
    for est in ("ipw", "dr", "snipw"):
        assert table.loc[est, "boot_low"] == case.expect(f"{est}_ci_low"), est
        assert table.loc[est, "boot_high"] == case.expect(f"{est}_ci_high"), est
        assert table.loc[est, "boot_mean"] == case.expect(f"{est}_ci_boot_mean"), est
    # the Gaussian interval of IPW is vw-estimators' gaussian.Interval
    assert table.loc["ipw", "gauss_low"] == case.expect("vw_gaussian_ci_low")
    assert table.loc["ipw", "gauss_high"] == case.expect("vw_gaussian_ci_high")


def test_bootstrap_means_and_indices(case: Case) -> None:
    data = ope.check_ope_inputs(*case.args, case.q)
    for est in ("ipw", "dr", "snipw"):
        boot = oi.bootstrap_interval(ope.round_terms(est, data), n_bootstrap=1000, seed=12345)
        np.testing.assert_allclose(boot.means, case[f"{est}_boot_means"], rtol=TOL, atol=TOL)
    if case.name == "C":
        idx = oi.bootstrap_indices(8, 1000, 12345)
        np.testing.assert_array_equal(idx, case["boot_indices"])


def test_diagnostics(case: Case) -> None:
    diag = ope.diagnostics(case.action, case.pscore, case.pi, switch_lambda=5.0)
    if case.name == "C":
        np.testing.assert_allclose(
            ope.importance_weights(case.action, case.pscore, case.pi), case["iw"]
        )
        assert diag["max_weight"] == pytest.approx(8.0)
        assert diag["n_weight_above_lambda"] == 1  # w = 5.0 exactly is not above λ = 5
        assert diag["action_counts"] == {0: 3, 1: 2, 2: 3}
        assert diag["ess"] == pytest.approx((101 / 6) ** 2 / float(np.sum(case["iw"] ** 2)))
    else:
        assert diag["max_weight"] == case.expect("iw_max")
        assert diag["n_weight_above_lambda"] == int(case["n_iw_gt_switch_lambda"])
    assert diag["n"] == len(case.action) == sum(diag["action_counts"].values())
    assert 0 < diag["ess"] <= diag["n"]
    assert diag["ess_ratio"] == pytest.approx(diag["ess"] / diag["n"])


def test_case_c_by_hand(ref: Any) -> None:
    c = Case(ref, "C")
    q = c.q
    assert ope.dm(c.pi, q) == pytest.approx(4.27 / 8)
    assert ope.ipw(*c.args) == pytest.approx(14.5 / 8)
    assert ope.snipw(*c.args) == pytest.approx(87 / 101)
    assert ope.dr(*c.args, q) == pytest.approx(8.56 / 8)
    assert ope.switch_dr(*c.args, q, lambda_=5.0) == pytest.approx(4.56 / 8)
    # clipping IPW at the largest weight changes nothing; at 5 it clips row 3 (w = 8, r = 1)
    assert ope.ipw(*c.args, lambda_=8.0) == pytest.approx(14.5 / 8)
    assert ope.ipw(*c.args, lambda_=5.0) == pytest.approx((14.5 - 3) / 8)


def test_reward_range_adds_the_cressie_read_row(case: Case) -> None:
    table = ope.estimate_policy_value(*case.args, reward_range=(case.rmin, case.rmax))
    assert list(table.index) == ["ipw", "snipw", "cressieread"]
    assert table.loc["cressieread", "value"] == case.expect("vw_cressieread")
    assert table.loc["cressieread", "lr_low"] == case.expect("vw_cressieread_ci_low")
    assert table.loc["cressieread", "lr_high"] == case.expect("vw_cressieread_ci_high")


# ---- invariants ---------------------------------------------------------------------------------
def _random_log(seed: int, n: int = 400, k: int = 6) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    eligible = rng.random((n, k)) < 0.7
    eligible[np.arange(n), rng.integers(0, k, n)] = True  # at least one eligible per row
    pi_b = eligible * rng.random((n, k))
    pi_b /= pi_b.sum(axis=1, keepdims=True)
    pi_e = eligible * rng.random((n, k)) ** 4
    pi_e /= pi_e.sum(axis=1, keepdims=True)
    action = np.array([rng.choice(k, p=row) for row in pi_b])
    reward = rng.random(n)
    q_hat = np.where(eligible, rng.random((n, k)), np.nan)  # unknown where ineligible
    return action, reward, pi_b[np.arange(n), action], pi_e, q_hat


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariants_on_random_logs(seed: int) -> None:
    action, reward, pscore, pi_e, q_hat = _random_log(seed)
    zero = np.where(np.isnan(q_hat), np.nan, 0.0)
    assert ope.dr(action, reward, pscore, pi_e, zero) == pytest.approx(
        ope.ipw(action, reward, pscore, pi_e), abs=1e-12
    )
    sn = ope.snipw(action, reward, pscore, pi_e)
    assert reward.min() <= sn <= reward.max()
    # (n, K) and OBP's (n, K, 1) layouts give the same table
    flat = ope.estimate_policy_value(action, reward, pscore, pi_e, q_hat, n_bootstrap=50)
    deep = ope.estimate_policy_value(
        action, reward, pscore, pi_e[:, :, None], q_hat[:, :, None], n_bootstrap=50
    )
    np.testing.assert_allclose(flat.to_numpy(), deep.to_numpy())
    assert (flat["boot_low"] <= flat["value"]).all() and (flat["value"] <= flat["boot_high"]).all()
    assert (flat["gauss_low"] < flat["gauss_high"]).all()
    # Switch-DR with an infinite threshold and DRos with an infinite λ are DR
    data = ope.check_ope_inputs(action, reward, pscore, pi_e, q_hat)
    dr_terms = ope.round_terms("dr", data)
    np.testing.assert_allclose(ope.round_terms("switch_dr", data, np.inf), dr_terms)
    np.testing.assert_allclose(ope.round_terms("dros", data, np.inf), dr_terms)


def test_on_policy_logs_make_ipw_the_sample_mean() -> None:
    action, reward, _, pi_e, _ = _random_log(3)
    pscore = pi_e[np.arange(len(action)), action]
    pscore = np.where(pscore > 0, pscore, 1.0)  # actions drawn from π_b; only the weights matter
    w = ope.importance_weights(action, pscore, pi_e)
    keep = w == 1.0
    assert ope.ipw(action[keep], reward[keep], pscore[keep], pi_e[keep]) == pytest.approx(
        reward[keep].mean()
    )
    diag = ope.diagnostics(action[keep], pscore[keep], pi_e[keep])
    assert diag["ess"] == pytest.approx(keep.sum())
    assert diag["max_weight"] == 1.0


def _bad(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "action": np.array([0, 1, 2, 1]),
        "reward": np.array([1.0, 0.0, 1.0, 0.5]),
        "pscore": np.array([0.5, 0.25, 0.25, 0.25]),
        "action_dist": np.full((4, 3), 1 / 3),
        "estimated_rewards": np.full((4, 3), 0.5),
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (_bad(pscore=np.array([0.5, 0.25, 0.25, 0.0])), r"pscore: every entry must be > 0; row 3"),
        (_bad(pscore=np.array([0.5, 1.5, 0.25, 0.2])), r"pscore: .*<= 1; row 1 is 1.5"),
        (_bad(pscore=np.array([0.5, 0.25])), r"pscore: expected shape \(4,\)"),
        (_bad(action=np.array([0, 1, 3, 1])), r"action: .*\[0, 3\); row 2 is 3"),
        (_bad(action=np.array([0, -1, 2, 1])), r"action: .*row 1 is -1"),
        (_bad(action=np.array([0.0, 1.0, 2.0, 1.0])), r"action: expected integer dtype"),
        (_bad(reward=np.array([1.0, np.nan, 0.0, 0.0])), r"reward: every entry must be finite"),
        (_bad(action_dist=np.full((4, 3), 0.3)), r"action_dist: every row must sum to 1"),
        (_bad(action_dist=np.full((4, 3, 2), 1 / 6)), r"action_dist: expected shape \(n, K\)"),
        (_bad(action_dist=np.full(4, 1.0)), r"action_dist: expected shape"),
        (
            _bad(action_dist=np.tile([[1.5, -0.5, 0.0]], (4, 1))),
            r"action_dist: entries must be finite and >= 0",
        ),
        (_bad(estimated_rewards=np.zeros((4, 2))), r"estimated_rewards: expected shape \(4, 3\)"),
        (
            _bad(estimated_rewards=np.where(np.eye(4, 3) > 0, np.nan, 0.5)),
            r"estimated_rewards: must be finite wherever action_dist > 0; row 0",
        ),
        (_bad(alpha=1.5), r"alpha: expected a level in \(0, 1\)"),
        (_bad(reward_range=(0.0, 0.8)), r"reward: every entry must lie in reward_range.*row 0"),
        (_bad(reward_range=(1.0, 0.0)), r"reward_range: expected \(rmin, rmax\)"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ope.estimate_policy_value(**kwargs)


def test_other_bad_inputs() -> None:
    with pytest.raises(ValueError, match="estimator: expected one of"):
        ope.round_terms("bogus", ope.check_ope_inputs(**_bad()))
    with pytest.raises(ValueError, match="estimated_rewards: required"):
        ope.round_terms("dr", ope.check_ope_inputs(**_bad(estimated_rewards=None)))
    with pytest.raises(ValueError, match=r"reward: every entry must lie in \[rmin, rmax\]"):
        oi.cressie_read_interval(np.ones(3), np.array([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"reward: every entry must lie in \[rmin, rmax\]"):
        oi.clopper_pearson_interval(np.ones(3), np.array([0.0, -1.0, 1.0]))


# ---- the coverage experiment (training/ope_coverage*.py) on a small slice of the bundled sample
@pytest.mark.slow  # fits a candidate and runs nine coverage experiments: ~60 s of CPU
def test_coverage_runs_on_a_small_slice(small: Any) -> None:
    from training.ope_coverage import COMPARISON, run_coverage, scenario_meta, summarise
    from training.ope_coverage_report import markdown_report
    from training.ope_coverage_scenarios import CoverageConfig, build_problem, fit_candidate
    from training.ope_support import VERDICTS

    candidate = fit_candidate(small, w_cost=0.2, seed=0)
    for logging_policy, target in (
        ("uniform", "greedy"),
        ("epsilon_greedy", "softmax"),
        ("near_greedy", "greedy"),
    ):
        config = CoverageConfig(
            n_runs=3, n_logged=80, n_bootstrap=50, logging=logging_policy, target=target
        )
        problem = build_problem(candidate, config)
        eligible = small.split("test").available
        for pmf in (problem.target, problem.logging):
            np.testing.assert_allclose(pmf.sum(axis=1), 1.0)
            assert np.all(pmf[~eligible] == 0)
        runs = run_coverage(candidate, config)
        assert len(runs) == 3 * 9  # 7 estimators, the CR(-2) row and the comparison row
        values = runs[runs["estimator"] != COMPARISON]  # its truth is a difference
        assert values.groupby("run")["v_cond"].nunique().eq(1).all()
        summary = summarise(runs)
        assert {"bias", "rmse", "cover_boot", "cover_gauss", "width_boot"} <= set(summary.columns)
        assert {"cover_supp", "width_supp", "verdict_wrong"} <= set(summary.columns)
        shares = summary.loc[COMPARISON, [f"verdict_{w}" for w in VERDICTS]]
        assert shares.sum() == pytest.approx(1.0)  # every run has one verdict
        for name in ("dr", "ipw", COMPARISON):  # support-aware: never narrower than the bootstrap
            assert cell(summary, name, "width_supp") >= cell(summary, name, "width_boot") - 1e-12
        assert 0 <= cell(summary, "cressieread", "cover_lr") <= 1  # a coverage rate (not NaN)
        report = markdown_report([(scenario_meta(config, runs), summary)], "cmd", "date", "m", 1.0)
        assert f"## logging: {logging_policy}, target: {target}" in report
    with pytest.raises(ValueError, match="target must be one of"):
        CoverageConfig(target="bogus")


def test_cli_parses_ope_coverage() -> None:
    from router.cli import build_parser, main

    args = build_parser().parse_args(["ope-coverage", "--runs", "2", "--reward-model", "lgbm"])
    assert args.runs == 2 and args.reward_model == "lgbm" and args.func.__name__ == "_ope_coverage"
    assert main(["ope-coverage", "--scenarios", "uniform/bogus", "--quiet"]) == 2
