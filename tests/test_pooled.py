"""The pooled (hierarchical) quality model and the serving policy's optimism bonus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.errors import PolicyError
from router.policy.base import Action, Policy, RewardSpec
from router.policy.direct import BLEND_WEIGHTS, QualityPredictor
from router.policy.pooled import PooledLogistic
from router.policy.quality import QualitySquareCBPolicy


def _shared_world(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes that share one direction (prompt difficulty) across k models, each model
    with its own level: quality ~ Bernoulli(sigmoid(2 x0 + b_m))."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    levels = np.linspace(-1.0, 1.0, k)
    p = 1.0 / (1.0 + np.exp(-(2.0 * x[:, [0]] + levels[None, :])))
    return x, (rng.random((n, k)) < p).astype(float)


def _one_per_row(quality: np.ndarray, seed: int = 1) -> np.ndarray:
    """Bandit logs: one model's outcome known per row, the rest NaN."""
    rng = np.random.default_rng(seed)
    out = np.full(quality.shape, np.nan)
    cols = rng.integers(0, quality.shape[1], len(quality))
    out[np.arange(len(quality)), cols] = quality[np.arange(len(quality)), cols]
    return out


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def test_pooled_borrows_the_shared_direction_from_sparse_logs() -> None:
    x, q = _shared_world(900, 12)
    logged = _one_per_row(q[:600])  # ~50 outcomes per model
    pooled = PooledLogistic(seed=0).fit(x[:600], logged)
    per_model = QualityPredictor("logistic_cv").fit(x[:600], [str(j) for j in range(12)], logged)
    held_out = q[600:]
    loss_pooled = _log_loss(pooled.predict(x[600:]), held_out)
    loss_per_model = _log_loss(per_model.predict(x[600:]), held_out)
    assert loss_pooled < loss_per_model - 0.01, (loss_pooled, loss_per_model)
    # the shared direction is the one the outcomes share
    assert abs(pooled.shared_[0]) > 3 * np.abs(pooled.shared_[1:]).max()


def test_pooled_linear_form_and_a_model_without_outcomes() -> None:
    x, q = _shared_world(300, 4)
    q[:, 3] = np.nan  # never observed
    model = PooledLogistic(lam=0.1, lam0=0.01).fit(x, q)
    w, b = model.linear_form()
    np.testing.assert_allclose(1 / (1 + np.exp(-(x @ w + b))), model.predict(x), atol=1e-12)
    # no outcomes: its departure is 0 (the shared direction only) at the overall mean level
    np.testing.assert_allclose(model.departures_[:, 3], 0.0, atol=1e-8)
    overall = np.nanmean(q)
    assert model.bias_[3] == pytest.approx(np.log(overall / (1 - overall)), abs=1e-6)


@pytest.mark.parametrize("estimator", ["pooled", "blend"])
def test_pooled_prior_round_trips_through_a_bundle(tmp_path: Path, estimator: str) -> None:
    x, q = _shared_world(200, 3)
    actions = [Action(str(j), np.zeros(1), expected_cost=0.001 * j) for j in range(3)]
    policy = QualitySquareCBPolicy(RewardSpec(), estimator=estimator).fit(x, actions, q)
    before = policy.predict_one(x[0], actions)
    policy.save(tmp_path / "p")
    loaded = Policy.load(tmp_path / "p")
    assert isinstance(loaded, QualitySquareCBPolicy)
    np.testing.assert_allclose(loaded.predict_one(x[0], actions), before)
    assert loaded.predictor is not None and loaded.predictor.estimator == estimator


def test_blend_mixes_the_logits_of_its_two_models() -> None:
    """The blend is sigmoid(a * per-model logit + (1 - a) * pooled logit), served through one
    linear form; a model too sparse for its own regression contributes the logit of its
    prior on the per-model side."""
    x, q = _shared_world(600, 5)
    q[10:, 4] = np.nan  # model 4: 10 outcomes, below MIN_SAMPLES
    names = [str(j) for j in range(5)]
    blend = QualityPredictor("blend").fit(x, names, q)
    per_model = QualityPredictor("logistic_cv").fit(x, names, q)
    pooled = PooledLogistic(seed=0).fit(x, q)
    a = blend.blend_weight_
    assert a in BLEND_WEIGHTS and set(blend.blend_scores_) == set(BLEND_WEIGHTS)

    def logit(p: np.ndarray) -> np.ndarray:
        return np.asarray(np.log(p / (1 - p)))

    z = a * logit(per_model.predict(x)) + (1 - a) * logit(pooled.predict(x))
    np.testing.assert_allclose(blend.predict(x), 1 / (1 + np.exp(-z)), atol=1e-9)
    form = blend.linear_form()
    assert form is not None
    np.testing.assert_allclose(1 / (1 + np.exp(-(x @ form[0] + form[1]))), blend.predict(x))


def test_the_blend_weight_follows_the_data() -> None:
    """Sparse logs of models that share one direction: the weight leans to the pooled model.
    Plenty of outcomes of models that each follow a different feature (nothing shared): it
    leans to the per-model regressions."""
    x, q = _shared_world(900, 12)
    names = [str(j) for j in range(12)]
    shared = QualityPredictor("blend").fit(x, names, _one_per_row(q))
    assert shared.blend_weight_ <= 0.25, shared.blend_scores_
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1500, 6))
    p = 1 / (1 + np.exp(-3 * np.column_stack([x[:, 0], -x[:, 0], x[:, 1], -x[:, 1]])))
    own = (rng.random(p.shape) < p).astype(float)
    separate = QualityPredictor("blend").fit(x, names[:4], own)
    assert separate.blend_weight_ >= 0.75, separate.blend_scores_


def _policy(optimism: float) -> tuple[QualitySquareCBPolicy, list[Action]]:
    actions = [Action(m, np.zeros(1)) for m in ("a", "b", "c")]
    x = np.zeros((40, 2))
    q = np.full((40, 3), 0.6)
    q[5:, 2] = np.nan  # model c: 5 known outcomes, a and b: 40
    policy = QualitySquareCBPolicy(RewardSpec(), optimism=optimism).fit(x, actions, q)
    return policy, actions


def test_optimism_favours_the_model_with_few_outcomes() -> None:
    plain, actions = _policy(0.0)
    hopeful, _ = _policy(1.0)
    np.testing.assert_allclose(plain.bonus(["a", "b", "c"]), 0.0)
    bonus = hopeful.bonus(["a", "b", "c"])
    assert bonus[0] == bonus[1] == pytest.approx(0.5 / np.sqrt(41))
    assert bonus[2] == pytest.approx(0.5 / np.sqrt(6))
    context = np.zeros(2)
    assert hopeful.predict_one(context, actions)[2] > plain.predict_one(context, actions)[2]
    # learning outcomes of c shrinks its bonus
    for _ in range(30):
        hopeful.learn_one(context, actions, 2, 0.5, 0.6)
    assert hopeful.bonus(["c"])[0] == pytest.approx(0.5 / np.sqrt(36))


def test_optimism_is_validated() -> None:
    with pytest.raises(PolicyError, match="optimism"):
        QualitySquareCBPolicy(optimism=-1.0)


def test_pooled_penalties_are_validated() -> None:
    with pytest.raises(PolicyError, match="lam0"):
        PooledLogistic(lam=1.0, lam0=0.0)
