"""Why a cold start loses: after the real cold replay_rounds on one train-split fold, each model's
known outcomes, true vs predicted mean quality, and the curve. usage: diag3.py DATASET ESTIMATOR FOLD"""
import sys, os, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import numpy as np
from sklearn.model_selection import KFold
from training.datasets import load_dataset
from training.evaluation import Reference, lambda_grid
from training.metrics import aiq
from training.simulate import replay_rounds, quality_policy_curve
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.base import RewardSpec
from router.policy.quality import QualitySquareCBPolicy
name, est, fold_want = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = load_dataset(f"../shared/data/{name}"); train = data.split("train")
for k, (a, b) in enumerate(KFold(3, shuffle=True, random_state=0).split(np.arange(train.n_prompts))):
    if k != fold_want: continue
    tr, va = train.subset(a), train.subset(b); va = va.subset(va.available.all(axis=1))
    f = RequestFeaturizer().fit(tr.prompts["prompt"].tolist())
    xtr, xva = f.transform(tr.prompts["prompt"].tolist()), f.transform(va.prompts["prompt"].tolist())
    cat = ActionCatalogue(data.models).fit(xtr, tr.output_tokens, tr.available)
    ref = Reference.of(tr); scale = ref.c_hi
    spec = RewardSpec(w_cost=0.2, cost_scale=scale)
    out = replay_rounds(lambda: QualitySquareCBPolicy(reward=spec, gamma_scale=100, estimator=est), tr, xtr, cat,
                        cat.expected_cost(xtr, tr.input_tokens), cat.expected_latency(xtr), labelled=None, rounds=4)
    curve = quality_policy_curve(out.policy, va, xva, cat.expected_cost(xva, va.input_tokens), scale, lambda_grid(40))
    rv = Reference.of(va)
    print(est, "aiq", aiq(curve, rv.c_lo, rv.c_hi) - aiq(list(rv.single.values()), rv.c_lo, rv.c_hi))
    names = va.model_names
    qh = out.policy.quality(xva, names); res = out.policy.residuals(names)
    counts = np.isfinite(out.logged_quality).sum(0)
    print("pred params", getattr(out.policy.predictor, "pooled_", None) and out.policy.predictor.pooled_.params())
    for j, m in enumerate(names):
        print(f"{m[:28]:28s} n={counts[j]:4d} true={va.quality[:, j].mean():.3f} pred={qh[:, j].mean():.3f} sd={qh[:, j].std():.3f} res={res[j]:+.3f}")
    print("curve", [(round(c,4), round(q,3)) for c, q in curve[::8]])
