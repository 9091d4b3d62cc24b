"""A stand-in for the held-out routing datasets we never see (issue 8: "math/code and open-ended
chat, 27-55 models"): the bundled sample's 3,000 prompts with 55 models and judge-like
continuous scores, written in the routing dataset format to a directory (not committed).

- models: the sample's 29, plus 26 "-v2" variants of its first 26, each with 15% of its
  outcomes flipped (a noisier sibling) at 0.8x the price: many near-equivalent models, as in a
  large catalogue;
- scores: ``clip(0.15 + 0.7 * correct + N(0, 0.12), 0, 1)``, rounded to 0.001 (a graded answer,
  not 0/1), and 1% of them null (unknown);
- costs and latencies null: derived from tokens and prices by the loader, as for MMLU-Pro.

    .venv/bin/python experiments/data/heldout_like.py /tmp/heldout_like
    .venv/bin/polyroute benchmark --dataset /tmp/heldout_like --json /tmp/hl.json --no-mlflow
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from training.datasets import bundled_path


def main(out: Path, seed: int = 0) -> None:
    src = bundled_path()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    prompts = pd.read_parquet(src / "prompts.parquet")
    outcomes = pd.read_parquet(src / "outcomes.parquet").drop(columns=["response"])
    models = pd.read_csv(src / "models.csv")
    all_outcomes, all_models = [outcomes], [models]
    for name in models["model"].tolist()[:26]:
        sibling = outcomes[outcomes["model"] == name].copy()
        sibling["model"] = f"{name}-v2"
        flip = rng.random(len(sibling)) < 0.15
        sibling.loc[flip, "score"] = 1 - sibling.loc[flip, "score"]
        all_outcomes.append(sibling)
        row = models[models["model"] == name].copy()
        row["model"] = f"{name}-v2"
        row["usd_per_mtok_in"] *= 0.8
        row["usd_per_mtok_out"] *= 0.8
        all_models.append(row)
    joined = pd.concat(all_outcomes, ignore_index=True)
    correct = joined["score"].to_numpy(float)
    joined["score"] = np.clip(0.15 + 0.7 * correct + rng.normal(0, 0.12, len(correct)), 0, 1)
    joined["score"] = joined["score"].round(3)
    joined.loc[rng.random(len(joined)) < 0.01, "score"] = np.nan
    prompts.to_parquet(out / "prompts.parquet")
    joined.to_parquet(out / "outcomes.parquet")
    pd.concat(all_models, ignore_index=True).to_csv(out / "models.csv", index=False)
    print(f"{joined['model'].nunique()} models, {len(joined)} outcomes in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
