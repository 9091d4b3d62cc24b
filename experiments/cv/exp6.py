"""Pooled (hierarchical) logistic quality model vs per-model LR-CV: full information and
one-outcome-per-prompt partial feedback (uniform logging), 5-fold CV of the train split.
usage: exp6.py DATASET {full,partial} {direct,pooled}[,..]   (env POOLED_GRID=0.001,0.003,...:
the pooled model's lam grid instead of router.policy.pooled.LAMBDA_GRID)"""
import sys, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent)); sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from harness import *
from router.policy.direct import QualityPredictor
from router.policy.pooled import PooledLogistic
import os, router.policy.pooled as pooled_module
if os.environ.get("POOLED_GRID"):
    pooled_module.LAMBDA_GRID = tuple(float(v) for v in os.environ["POOLED_GRID"].split(","))
name, mode, methods = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
def observed(tr):
    q = np.where(tr["a"], tr["q"], np.nan)
    if mode == "partial":  # one uniformly chosen available model per prompt
        rng = np.random.default_rng(7)
        keep = np.zeros_like(q, bool)
        for i in range(len(q)):
            avail = np.flatnonzero(tr["a"][i])
            keep[i, rng.choice(avail)] = True
        q = np.where(keep, q, np.nan)
    return q
def direct(xtr, tr, xva, models):
    return QualityPredictor("logistic_cv").fit(xtr, models, observed(tr)).predict(xva)
def pooled(xtr, tr, xva, models):
    p = PooledLogistic().fit(xtr, observed(tr)); print(" ", p.params(), end="")
    return p.predict(xva)
def means(xtr, tr, xva, models):
    return np.tile(np.nanmean(observed(tr), axis=0), (len(xva), 1))
for m in methods:
    t = time.time(); print(m, mode, end=" ", flush=True); cv(name, globals()[m]); print(f"{time.time()-t:.0f}s", flush=True)
