import sys, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent)); sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from harness import *
from router.policy.direct import QualityPredictor
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors
from sklearn.model_selection import KFold as KF
name = sys.argv[1]; which = sys.argv[2].split(",")
def qp(tr): return np.where(tr["a"], tr["q"], np.nan)
def direct(xtr, tr, xva, models, est="logistic_cv"):
    return QualityPredictor(est).fit(xtr, models, qp(tr)).predict(xva)
def lgbm(xtr, tr, xva, models): return direct(xtr, tr, xva, models, "lgbm")
def ens(xtr, tr, xva, models): return 0.5 * direct(xtr, tr, xva, models) + 0.5 * lgbm(xtr, tr, xva, models)
def knn_feats(xfit, qfit, xq, k=20, skip_self=False):
    nn = NearestNeighbors(n_neighbors=k + int(skip_self)).fit(xfit[:, :-16] if False else xfit)
    _, idx = nn.kneighbors(xq)
    if skip_self: idx = idx[:, 1:]
    return np.nanmean(qfit[idx], axis=1)  # (n, M)
def knnstack(xtr, tr, xva, models):
    q = qp(tr)
    ftr = np.nan_to_num(knn_feats(xtr, q, xtr, skip_self=True), nan=0.5)
    fva = np.nan_to_num(knn_feats(xtr, q, xva), nan=0.5)
    return direct(np.hstack([xtr, ftr]), tr, np.hstack([xva, fva]), models)
def clusters(xtr, tr, xva, models, k=24):
    km = KMeans(k, n_init=4, random_state=0).fit(xtr)
    oh = lambda x: np.eye(k)[km.predict(x)]
    return direct(np.hstack([xtr, oh(xtr)]), tr, np.hstack([xva, oh(xva)]), models)
def difficulty(xtr, tr, xva, models):
    # out-of-fold mean quality across models as a shared feature
    from sklearn.linear_model import RidgeCV
    y = np.nanmean(qp(tr), axis=1)
    oof = np.zeros(len(xtr))
    for a, b in KF(5, shuffle=True, random_state=0).split(xtr):
        oof[b] = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(xtr[a], y[a]).predict(xtr[b])
    dva = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(xtr, y).predict(xva)
    return direct(np.hstack([xtr, oof[:, None]]), tr, np.hstack([xva, dva[:, None]]), models)
for w in which:
    t = time.time(); print(w, end=" "); cv(name, globals()[w]); print(f"  {time.time()-t:.0f}s", flush=True)
