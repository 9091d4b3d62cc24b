"""Blends of per-model LR-CV and the pooled model: each fold fits QualityPredictor("blend")
once and scores its parts: LR, pooled, their logit average, their probability average and the
blend with its weight chosen by its own inner CV (blend_cv: what `estimator: blend` serves);
also the held-out log-loss of each over the fold's known outcomes.
5-fold CV of the train split (env FOLDS), full information or one uniformly chosen outcome per
prompt. usage: exp7.py DATASET {full,partial}"""
import sys, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent)); sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import os
from harness import *
from router.policy.direct import QualityPredictor
from router.policy.pooled import PooledLogistic
name, mode = sys.argv[1], sys.argv[2]
folds = int(os.environ.get("FOLDS", 5))
def observed(tr):
    q = np.where(tr["a"], tr["q"], np.nan)
    if mode == "partial":
        rng = np.random.default_rng(7)
        keep = np.zeros_like(q, bool)
        for i in range(len(q)):
            keep[i, rng.choice(np.flatnonzero(tr["a"][i]))] = True
        q = np.where(keep, q, np.nan)
    return q
def logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6); return np.log(p / (1 - p))
def logloss(p, va):
    m = va["a"]; y = va["q"][m]; p = np.clip(p[m], 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
d = load(name); x, tr = d["xtr"], d["tr"]
rows = {k: [] for k in ("lr", "pooled", "logit_avg", "prob_avg", "blend_cv")}
t0 = time.time()
for k, (i_tr, i_va) in enumerate(KFold(folds, shuffle=True, random_state=0).split(x)):
    part, va = sub(tr, i_tr), sub(tr, i_va)
    q = observed(part)
    blend = QualityPredictor("blend").fit(x[i_tr], d["models"], q)
    w, b = blend._per_model_form(len(d["models"]), x.shape[1])
    lr = 1 / (1 + np.exp(-(x[i_va] @ w + b)))
    po = blend.pooled_
    pp = po.predict(x[i_va])
    preds = {"lr": lr, "pooled": pp, "logit_avg": 1 / (1 + np.exp(-(logit(lr) + logit(pp)) / 2)),
             "prob_avg": (lr + pp) / 2, "blend_cv": blend.predict(x[i_va])}
    complete = np.flatnonzero(va["a"].all(axis=1))
    for m, p in preds.items():
        a, z = score(p[complete], sub(va, complete))
        rows[m].append((a - z, logloss(p, va)))
    print(f"fold {k} {time.time()-t0:.0f}s pooled {po.params()} blend weight {blend.blend_weight_} " + " ".join(f"{m} {rows[m][-1][0]:+.4f}/{rows[m][-1][1]:.4f}" for m in rows), flush=True)
for m, r in rows.items():
    r = np.array(r)
    print(f"{name} {mode} {m}: over zero {r[:,0].mean():+.4f} (folds {np.round(r[:,0],3)}) logloss {r[:,1].mean():.4f}")
print(f"{time.time()-t0:.0f}s")
