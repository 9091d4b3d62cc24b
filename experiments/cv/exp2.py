import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from bandit import *
import time, os
ALPHA=float(os.environ.get('ALPHA', '1'))
name = sys.argv[1]
for gamma0 in [float(g) for g in sys.argv[2].split(",")]:
    for shared in [True, False]:
        def f(xtr, tr, xva, models):
            mu_, sd_ = xtr.mean(0), xtr.std(0) + 1e-9; xtr = (xtr - mu_) / sd_; xva = (xva - mu_) / sd_
            scale = max(tr["c"][tr["a"][:, j], j].mean() for j in range(len(models)))
            m = OnlineRidge(xtr.shape[1], len(models), alpha=ALPHA, shared=shared, prior_mean=float(np.nanmean(tr["q"])))
            logged, probs, rew = replay(xtr, tr, m, 0.2, scale, gamma0=gamma0)
            f.mean_rew = rew.mean()
            return m.predict(xva)
        def g(xtr, tr, xva, models):  # batch refit on the logs
            scale = max(tr["c"][tr["a"][:, j], j].mean() for j in range(len(models)))
            m = OnlineRidge(xtr.shape[1], len(models), alpha=ALPHA, shared=shared, prior_mean=float(np.nanmean(tr["q"])))
            logged, probs, rew = replay(xtr, tr, m, 0.2, scale, gamma0=gamma0)
            return QualityPredictor("logistic_cv").fit(xtr, models, logged).predict(xva)
        t = time.time()
        print(f"online gamma0={gamma0} shared={shared}", end=" "); cv(name, f, folds=3); print(f"  {time.time()-t:.0f}s")
        if shared and gamma0 == 50.0 and len(sys.argv) > 3:
            print(f"batch-refit gamma0={gamma0}", end=" "); cv(name, g, folds=3)
