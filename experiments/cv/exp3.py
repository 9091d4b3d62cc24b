"""Warm start: a labelled share of the train fold (full info) fits the prior (direct router);
the rest streams with partial feedback under SquareCB on prior + residual."""
import sys, os, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from bandit import *
name = sys.argv[1]; share = float(sys.argv[2]); mode = sys.argv[3]
ALPHA = float(os.environ.get("ALPHA", "300")); G = float(os.environ.get("G", "50"))
class Bias:
    def __init__(self, M, kappa=20.0):
        self.s = np.zeros(M); self.n = np.zeros(M); self.k = kappa
    def predict(self, X): return np.tile(self.s / (self.n + self.k), (len(X), 1))
    def update(self, x, m, r): self.s[m] += r; self.n[m] += 1
def f(xtr, tr, xva, models):
    rng = np.random.default_rng(1); n = len(xtr); lab = rng.random(n) < share
    scale = max(tr["c"][tr["a"][:, j], j].mean() for j in range(len(models)))
    qp = np.where(tr["a"], tr["q"], np.nan)
    prior = QualityPredictor("logistic_cv").fit(xtr[lab], models, qp[lab])
    if mode == "full": return QualityPredictor("logistic_cv").fit(xtr, models, qp).predict(xva)
    if mode == "prior": return prior.predict(xva)
    st = np.flatnonzero(~lab); xs = xtr[st]; trs = sub(tr, st)
    P = prior.predict(xs)
    if mode == "bias": model = Bias(len(models))
    else:
        mu_, sd_ = xtr.mean(0), xtr.std(0) + 1e-9
        model = OnlineRidge(xtr.shape[1], len(models), alpha=ALPHA, shared=False, prior_mean=0.0)
        xs = (xs - mu_) / sd_; xva_s = (xva - mu_) / sd_
    logged, probs, rew = replay(xs, trs, model, 0.2, scale, gamma0=G, prior=P)
    if mode == "refit":
        qq = qp.copy(); qq[st] = logged
        return QualityPredictor("logistic_cv").fit(xtr, models, qq).predict(xva)
    return prior.predict(xva) + model.predict(xva if mode == "bias" else xva_s)
t = time.time(); print(f"share={share} mode={mode} alpha={ALPHA} G={G}", end=" "); cv(name, f, folds=5); print(f"  {time.time()-t:.0f}s", flush=True)
