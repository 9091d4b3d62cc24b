"""The offline benchmark: every router and baseline on a routing dataset's test split.

``polyroute benchmark --dataset DIR`` runs :func:`run_benchmark`: it fits the featurizer and the
cost model on the train split, then

- full-information routers (direct quality predictor, kNN, per-task static) and the oracle,
  each swept over lambda (DESIGN.md §5), and the single-model baselines and the zero router;
- bandit replay: each bandit learns from one partial-feedback pass over the train split, once
  per reward trade-off in a small lambda set; its test curve is the expected outcome of its pmf;
- APGR / CPT for a strong/weak pair.

The result is a JSON-ready dict (see README) plus per-step replay traces for the plots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from features.errors import ConfigError, DatasetError
from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import Policy, RewardSpec
from router.policy.baselines import KNNPolicy
from router.policy.direct import QualityPredictor
from router.policy.quality import QualitySquareCBPolicy
from router.policy.registry import get_policy_class
from training.datasets import RoutingDataset
from training.evaluation import (
    Reference,
    choose,
    lambda_grid,
    operating_point,
    pair_metrics,
    summarise,
    sweep,
)
from training.metrics import Curve, aiq
from training.simulate import (
    ReplayTrace,
    expected_point,
    quality_policy_curve,
    replay,
    replay_rounds,
)

BANDITS = ("vw_squarecb",)  # replayed once per trade-off; also: "epsilon_greedy", "linucb"


@dataclass(frozen=True)
class BenchmarkConfig:
    """Parameters of one benchmark run.

    strong, weak : the APGR pair (default: best single and cheapest model on train).
    n_lambdas : size of the geometric lambda grid of the full-information sweep.
    bandit_lambdas : number of reward trade-offs each of ``bandits`` is replayed with (their
        reward has the trade-off built in, so each point of their curve is a separate replay).
    bandits : those bandit policies (registry names).
    quality_bandit : replay the serving policy (``squarecb_quality``) in the learning loop:
        partial feedback in ``rounds`` rounds of traffic, retrained after each; cold, and warm
        from ``warm_share`` of the train split given with full information. One replay gives the
        whole curve (the trade-off applies at decision time), at every lambda of the grid.
    estimator, C : the direct router's quality estimator.
    knn_k : neighbours of the kNN baseline.
    test_prompts : "complete" evaluates on the test prompts where every model's outcome is known
        (the convention of the published reference figures); "all" keeps every test prompt and
        makes a model ineligible where its outcome is unknown.
    n_jobs : processes for the bandit replays (one per trade-off).
    """

    strong: str | None = None
    weak: str | None = None
    n_lambdas: int = 60
    bandit_lambdas: int = 20
    bandits: tuple[str, ...] = BANDITS
    quality_bandit: bool = True
    warm_share: float = 0.25
    rounds: int = 4
    estimator: str = "logistic_cv"
    C: float = 0.1
    knn_k: int = 10
    test_prompts: str = "complete"
    seed: int = 0
    n_jobs: int = 2
    featurizer: FeaturizerConfig = field(default_factory=FeaturizerConfig)

    def __post_init__(self) -> None:
        if self.n_lambdas < 2:
            raise ConfigError(f"n_lambdas must be >= 2, got {self.n_lambdas}")
        if self.bandit_lambdas < 1:
            raise ConfigError(f"bandit_lambdas must be >= 1, got {self.bandit_lambdas}")
        if not 0.0 < self.warm_share < 1.0:
            raise ConfigError(f"warm_share must be in (0, 1), got {self.warm_share}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        for name in self.bandits:
            get_policy_class(name)
        if self.test_prompts not in ("complete", "all"):
            raise ConfigError(
                f"test_prompts must be 'complete' or 'all', got {self.test_prompts!r}"
            )


@dataclass
class BenchmarkResult:
    summary: dict[str, Any]
    traces: dict[str, ReplayTrace]
    single_points: dict[str, tuple[float, float]]


Progress = Callable[[str, int], Callable[[], None]]


def _no_progress(label: str, total: int) -> Callable[[], None]:
    return lambda: None


def spread_lambdas(
    q_hat: np.ndarray, c_hat: np.ndarray, available: np.ndarray, k: int
) -> list[float]:
    """``k`` trade-offs whose (predicted) operating points spread evenly over log cost.

    Chosen on the train split's predictions, so the test split is not looked at.
    """
    grid = lambda_grid(200)[:-1]
    costs = []
    for lam in grid:
        chosen = choose(q_hat, c_hat, lam, available)
        costs.append(c_hat[np.arange(len(chosen)), chosen].mean())
    log_costs = np.log(np.array(costs))
    targets = np.linspace(log_costs.max(), log_costs.min(), k)
    picked = sorted({float(grid[int(np.argmin(np.abs(log_costs - t)))]) for t in targets})
    return picked


def run_benchmark(
    data: RoutingDataset, config: BenchmarkConfig, progress: Progress = _no_progress
) -> BenchmarkResult:
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    train, test = data.split("train"), data.split("test")
    notes = list(data.notes)
    if config.test_prompts == "complete":
        complete = np.asarray(test.available.all(axis=1))
        if not complete.all():
            notes.append(
                f"evaluated on the {int(complete.sum())} of {test.n_prompts} test prompts where "
                "every model's outcome is known (test_prompts='complete')"
            )
        test = test.subset(complete)
    if train.n_prompts < 10 or test.n_prompts < 10:
        raise DatasetError(
            f"{data.name}: need >= 10 train and test prompts, "
            f"got {train.n_prompts}/{test.n_prompts}"
        )
    featurizer = RequestFeaturizer(config.featurizer).fit(train.prompts["prompt"].tolist())
    x_train = featurizer.transform(train.prompts["prompt"].tolist())
    x_test = featurizer.transform(test.prompts["prompt"].tolist())
    catalogue = ActionCatalogue(data.models).fit(x_train, train.output_tokens, train.available)
    c_hat = {
        "train": catalogue.expected_cost(x_train, train.input_tokens),
        "test": catalogue.expected_cost(x_test, test.input_tokens),
    }
    l_hat = {
        "train": catalogue.expected_latency(x_train),
        "test": catalogue.expected_latency(x_test),
    }
    timings["features_s"] = time.perf_counter() - clock

    ref = Reference.of(test)
    train_ref = Reference.of(train)
    strong = config.strong or train_ref.best_model
    weak = config.weak or train_ref.cheapest_model
    for role, model in (("strong", strong), ("weak", weak)):
        if model not in data.model_names:
            raise ConfigError(
                f"--{role} {model!r} is not a model of {data.name}: {data.model_names}"
            )
    cost_scale = train_ref.c_hi
    grid = lambda_grid(config.n_lambdas)
    routers: dict[str, dict[str, Any]] = {}

    def record(name: str, curve: Curve, q_hat: np.ndarray | None = None) -> None:
        entry: dict[str, Any] = {**summarise(curve, ref), "curve": [list(p) for p in curve]}
        if q_hat is not None:
            entry.update(pair_metrics(test, q_hat, strong, weak))
        routers[name] = entry

    # ---- full-information routers ----------------------------------------------------
    clock = time.perf_counter()
    tick = progress("full-information routers", 5)
    predictor = QualityPredictor(config.estimator, config.C, config.seed)
    predictor.fit(x_train, data.model_names, train.quality)
    q_direct = predictor.predict(x_test)
    q_direct_train = predictor.predict(x_train)
    record("direct", sweep(test, q_direct, c_hat["test"], cost_scale, grid), q_direct)
    tick()
    if config.estimator != "blend":  # the full-information router with the serving prior's model
        blend = QualityPredictor("blend", config.C, config.seed)
        q_blend = blend.fit(x_train, data.model_names, train.quality).predict(x_test)
        record("direct_blend", sweep(test, q_blend, c_hat["test"], cost_scale, grid), q_blend)
        routers["direct_blend"]["blend_weight"] = blend.blend_weight_
    tick()
    knn = KNNPolicy(k=config.knn_k).fit(x_train, catalogue.actions(x_train[0], 0.0), train.quality)
    q_knn = knn.predict_quality(x_test)
    record(f"knn{config.knn_k}", sweep(test, q_knn, c_hat["test"], cost_scale, grid), q_knn)
    tick()
    q_task = _per_task_quality(train, test)
    record("per_task_static", sweep(test, q_task, c_hat["test"], cost_scale, grid), q_task)
    tick()
    q_true = np.where(test.available, test.quality, -np.inf)
    oracle_curve = sweep(test, q_true, test.cost, cost_scale, grid)
    tick()
    timings["full_information_s"] = time.perf_counter() - clock

    # ---- single-model baselines -------------------------------------------------------
    for label, model in (("best_single", ref.best_model), ("cheapest", ref.cheapest_model)):
        record(label, [ref.single[model]])
    n_avail = test.available.sum(axis=1)
    random_point = (
        float((np.where(test.available, test.cost, 0).sum(axis=1) / n_avail).mean()),
        float((np.where(test.available, test.quality, 0).sum(axis=1) / n_avail).mean()),
    )
    record("random", [random_point])
    zero_curve = list(ref.single.values())
    record("zero_router", zero_curve)

    # ---- bandit replay ------------------------------------------------------------------
    lambdas = spread_lambdas(
        q_direct_train, c_hat["train"] / cost_scale, train.available, config.bandit_lambdas
    )
    traces: dict[str, ReplayTrace] = {}
    bandit_info: dict[str, Any] = {}
    middle = lambdas[len(lambdas) // 2]
    for name in config.bandits:
        clock = time.perf_counter()
        tick = progress(f"bandit replay: {name} (one pass per trade-off)", len(lambdas))
        # the trade-offs are independent replays: run them on all cores (joblib, processes)
        jobs = (
            delayed(_replay_one)(
                name,
                lam,
                cost_scale,
                config.seed,
                data.model_names,
                train,
                test,
                x_train,
                x_test,
                catalogue,
                c_hat,
                l_hat,
            )
            for lam in lambdas
        )
        curve: Curve = []
        for lam, (trace, point) in zip(
            lambdas, Parallel(n_jobs=config.n_jobs, return_as="generator")(jobs), strict=True
        ):
            curve.append(point)
            if lam == middle:
                traces[name] = trace
            tick()
        record(f"bandit:{name}", curve)
        elapsed = time.perf_counter() - clock
        timings[f"bandit_{name}_s"] = elapsed
        bandit_info[name] = {
            "final_cumulative_regret": float(traces[name].cumulative_regret[-1]),
            "mean_reward": float(traces[name].reward.mean()),
            "aiq_ratio_to_direct": routers[f"bandit:{name}"]["aiq"] / routers["direct"]["aiq"],
            "seconds": elapsed,
        }

    if config.quality_bandit:
        spec = RewardSpec(w_cost=middle, cost_scale=cost_scale)
        labelled = (
            np.random.default_rng(config.seed + 1).random(train.n_prompts) < config.warm_share
        )
        variants = {
            "squarecb_quality": None,
            f"squarecb_quality_warm{round(config.warm_share * 100)}": labelled,
        }
        for label, mask in variants.items():
            clock = time.perf_counter()
            n_stream = train.n_prompts - (0 if mask is None else int(mask.sum()))
            tick = progress(f"learning loop replay: {label}", n_stream)
            result = replay_rounds(
                lambda: QualitySquareCBPolicy(reward=spec, seed=config.seed),
                train,
                x_train,
                catalogue,
                c_hat["train"],
                l_hat["train"],
                labelled=mask,
                rounds=config.rounds,
                seed=config.seed,
                on_step=tick,
            )
            policy = result.policy
            assert isinstance(policy, QualitySquareCBPolicy)
            curve = quality_policy_curve(policy, test, x_test, c_hat["test"], cost_scale, grid)
            record(f"bandit:{label}", curve)
            traces[label] = result.trace
            elapsed = time.perf_counter() - clock
            timings[f"bandit_{label}_s"] = elapsed
            bandit_info[label] = {
                "final_cumulative_regret": float(result.trace.cumulative_regret[-1]),
                "mean_reward": float(result.trace.reward.mean()),
                "aiq_ratio_to_direct": routers[f"bandit:{label}"]["aiq"] / routers["direct"]["aiq"],
                "n_labelled": result.n_labelled,
                "n_partial_feedback": n_stream,
                "rounds": config.rounds,
                "w_cost": middle,
                "seconds": elapsed,
            }

    summary: dict[str, Any] = {
        "dataset": data.name,
        "n_train": train.n_prompts,
        "n_test": test.n_prompts,
        "models": data.model_names,
        "c_lo": ref.c_lo,
        "c_hi": ref.c_hi,
        "best_single": {
            "model": ref.best_model,
            "quality": ref.best_quality,
            "cost": ref.best_cost,
        },
        "cheapest": {
            "model": ref.cheapest_model,
            "quality": ref.single[ref.cheapest_model][1],
            "cost": ref.single[ref.cheapest_model][0],
        },
        "oracle": {**summarise(oracle_curve, ref), "curve": [list(p) for p in oracle_curve]},
        "zero_router_aiq": aiq(zero_curve, ref.c_lo, ref.c_hi),
        "pair": {"strong": strong, "weak": weak},
        "routers": routers,
        "bandit_replay": {
            "lambdas": lambdas,
            "trace_lambda": middle,
            "cost_scale": cost_scale,
            "policies": bandit_info,
        },
        "featurizer_version": featurizer.version_,
        "config": {k: v for k, v in asdict(config).items()},
        "dataset_notes": notes,
        "timings_s": timings,
    }
    return BenchmarkResult(summary=summary, traces=traces, single_points=ref.single)


def _replay_one(
    name: str,
    lam: float,
    cost_scale: float,
    seed: int,
    models: list[str],
    train: RoutingDataset,
    test: RoutingDataset,
    x_train: np.ndarray,
    x_test: np.ndarray,
    catalogue: ActionCatalogue,
    c_hat: dict[str, np.ndarray],
    l_hat: dict[str, np.ndarray],
) -> tuple[ReplayTrace, tuple[float, float]]:
    policy = _make_bandit(name, RewardSpec(w_cost=lam, cost_scale=cost_scale), seed, models)
    trace = replay(policy, train, x_train, catalogue, c_hat["train"], l_hat["train"], seed)
    point = expected_point(policy, test, x_test, catalogue, c_hat["test"], l_hat["test"])
    return trace, point


def _make_bandit(name: str, spec: RewardSpec, seed: int, models: list[str]) -> Policy:
    cls = get_policy_class(name)
    if name in ("linucb", "epsilon_greedy"):
        return cls(reward=spec, seed=seed, models=models)  # type: ignore[call-arg]
    return cls(reward=spec, seed=seed)


def _per_task_quality(train: RoutingDataset, test: RoutingDataset) -> np.ndarray:
    """Per-task static router's predicted quality: each model's mean quality on the prompt's
    task in train (it cheats by knowing the task label); overall mean for unseen tasks."""
    overall = np.nanmean(train.quality, axis=0)
    out = np.tile(overall, (test.n_prompts, 1))
    train_tasks = train.prompts["task"].to_numpy()
    for task in np.unique(test.prompts["task"]):
        rows = train_tasks == task
        if rows.any():
            means = np.nanmean(np.where(train.available[rows], train.quality[rows], np.nan), axis=0)
            out[(test.prompts["task"] == task).to_numpy()] = np.where(
                np.isnan(means), overall, means
            )
    return out


__all__ = ["BenchmarkConfig", "BenchmarkResult", "operating_point", "run_benchmark"]
