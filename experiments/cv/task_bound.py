"""How much routing value is in the prompt's category alone (issue 8: is +0.04 reachable?).

For a dataset's test split (the prompts where every model's outcome is known, as in the
benchmark), the AIQ of:

- ``zero``: the zero router (the hull of the single models), as in the benchmark;
- ``task_train``: a router told each prompt's true category (the dataset's ``task`` column,
  which no request carries) that routes by each model's mean quality and cost *on that
  category in the train split*: what a perfect category classifier learned from the train
  split could reach (a learned router also sees within-category signal; this one sees none);
- ``task_test``: the same with the means taken on the test split itself: an upper bound of any
  category-level router, not a result (it selects on the data it is scored on).

Also, at the demo's trade-off (``--w-cost``, cost scale = the train split's dearest model's mean
cost, the bundle's default), the mean reward on test of the best single model, of
``task_train`` and of ``task_test`` among ``--models`` (default: the demo's six), with the
standard error of the best single model's mean over the test prompts.

    .venv/bin/python experiments/cv/task_bound.py ../shared/data/routerbench \
        ../shared/data/mmlu_pro bundled

``--search K`` instead lists the ``K``-model sets of each dataset whose category routing gains
most over their best single model *on the train split itself* (no test prompt is read): model
sets where routing has value, chosen without the test split.

    .venv/bin/python experiments/cv/task_bound.py bundled --search 3 --w-cost 0
"""

from __future__ import annotations

import argparse
import itertools
import json

import numpy as np

from training.datasets import RoutingDataset, load_dataset
from training.demo import DEMO_MODELS
from training.evaluation import Reference, choose, lambda_grid, sweep
from training.metrics import aiq


def task_means(source: RoutingDataset, target: RoutingDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per target prompt, each model's mean quality and cost over ``source``'s prompts of the
    same task (the model's overall mean where the task has no known outcome of it)."""
    q_all = np.nanmean(np.where(source.available, source.quality, np.nan), axis=0)
    c_all = np.nanmean(np.where(source.available, source.cost, np.nan), axis=0)
    q_hat = np.tile(q_all, (target.n_prompts, 1))
    c_hat = np.tile(c_all, (target.n_prompts, 1))
    src_task = source.prompts["task"].to_numpy()
    tgt_task = target.prompts["task"].to_numpy()
    for task in np.unique(tgt_task):
        rows = src_task == task
        if not rows.any():
            continue
        known = source.available[rows]
        with np.errstate(invalid="ignore"):
            q = np.nanmean(np.where(known, source.quality[rows], np.nan), axis=0)
            c = np.nanmean(np.where(known, source.cost[rows], np.nan), axis=0)
        sel = tgt_task == task
        q_hat[sel] = np.where(np.isfinite(q), q, q_all)
        c_hat[sel] = np.where(np.isfinite(c), c, c_all)
    return q_hat, c_hat


def rewards_at(
    data: RoutingDataset, q_hat: np.ndarray, c_hat: np.ndarray, w: float, scale: float
) -> float:
    """Mean true reward on ``data`` of routing by ``q_hat - w * c_hat / scale`` (available
    models only; the benchmark's ``choose``)."""
    j = choose(q_hat, c_hat / scale, w, data.available)
    rows = np.arange(data.n_prompts)
    return float((data.quality[rows, j] - w * data.cost[rows, j] / scale).mean())


def single_rewards(data: RoutingDataset, w: float, scale: float) -> np.ndarray:
    """Each (prompt, model)'s true reward at cost weight ``w``; NaN where unknown."""
    return np.where(data.available, data.quality - w * data.cost / scale, np.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--w-cost", type=float, default=0.2)
    parser.add_argument("--models", default=",".join(DEMO_MODELS))
    parser.add_argument("--search", type=int, default=0, help="list K-model sets (train only)")
    args = parser.parse_args()
    for name in args.datasets:
        data = load_dataset(name)
        if args.search:
            search(data, args.search, args.w_cost)
            continue
        train, test = data.split("train"), data.split("test")
        test = test.subset(test.available.all(axis=1))  # as the benchmark: test_prompts=complete
        ref = Reference.of(test)
        scale = Reference.of(train).c_hi
        grid = lambda_grid()
        zero = aiq(list(ref.single.values()), ref.c_lo, ref.c_hi)
        out: dict[str, object] = {"dataset": name, "zero_aiq": round(zero, 4)}
        for label, source in (("task_train", train), ("task_test", test)):
            q_hat, c_hat = task_means(source, test)
            curve = sweep(test, q_hat, c_hat, scale, grid)
            out[f"{label}_aiq"] = round(aiq(curve, ref.c_lo, ref.c_hi), 4)
        models = [m for m in args.models.split(",") if m in data.model_names]
        if len(models) >= 2:
            sub_train, sub_test = train.with_models(models), test.with_models(models)
            reward = single_rewards(sub_test, args.w_cost, scale)
            means = np.nanmean(reward, axis=0)
            best = int(np.nanargmax(means))
            column = reward[:, best][np.isfinite(reward[:, best])]
            out["models"] = models
            out["best_single"] = {models[best]: round(float(means[best]), 4)}
            out["best_single_se"] = round(float(column.std(ddof=1) / np.sqrt(column.size)), 4)
            for label, source in (("task_train", sub_train), ("task_test", sub_test)):
                q_hat, c_hat = task_means(source, sub_test)
                out[f"{label}_reward"] = round(
                    rewards_at(sub_test, q_hat, c_hat, args.w_cost, scale), 4
                )
        print(json.dumps(out))


def search(data: RoutingDataset, k: int, w_cost: float, top: int = 5) -> None:
    """Print the ``top`` ``k``-model sets by the train-split gain of category routing over
    their best single model (in-sample on the train split; the test split is not read)."""
    train = data.split("train")
    scale = Reference.of(train).c_hi
    found = []
    for cols in itertools.combinations(range(len(data.model_names)), k):
        sub = train.with_models([data.model_names[j] for j in cols])
        best = float(np.nanmax(np.nanmean(single_rewards(sub, w_cost, scale), axis=0)))
        q_hat, c_hat = task_means(sub, sub)
        gain = rewards_at(sub, q_hat, c_hat, w_cost, scale) - best
        found.append((gain, [data.model_names[j] for j in cols], best))
    found.sort(key=lambda f: -f[0])
    for gain, models, best in found[:top]:
        print(json.dumps({"dataset": data.name, "w_cost": w_cost, "models": models,
                          "train_best_single": round(best, 4), "train_gain": round(gain, 4)}))  # fmt: skip


if __name__ == "__main__":
    main()
