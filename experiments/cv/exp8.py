"""Text representations for the full-information quality model (issue 8, item 2): per-model
logistic regression with C by inner 3-fold log-loss (the reference router) over
  base      the serving featurizer's 113 features (96-dim TF-IDF + SVD of the first and last
            512 characters, 17 hand-made signals)
  svd192    the same featurizer with 192 SVD components
  sparse    base + the sparse TF-IDF itself (word 1-2 grams of the whole prompt, fitted on the
            fold's train prompts; no SVD), so a model's weight can sit on one word
5-fold CV of the train split (env FOLDS), AIQ of the fold minus its zero router.
usage: exp8.py DATASET [VARIANT ...]"""
import sys, time; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent)); sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import os
import scipy.sparse as sp
from harness import *
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from features.featurizer import FeaturizerConfig, RequestFeaturizer
from router.policy.direct import CV_GRID, shrunk_means


def _soft_labels(x, q):
    """router.policy.direct._soft_labels for dense or sparse rows."""
    xx = sp.vstack([x, x]).tocsr() if sp.issparse(x) else np.vstack([x, x])
    yy = np.concatenate([np.ones(len(q)), np.zeros(len(q))])
    ww = np.concatenate([q, 1.0 - q])
    keep = np.flatnonzero(ww > 0)
    return xx[keep], yy[keep], ww[keep]

name = sys.argv[1]
variants = sys.argv[2:] or ["base", "svd192", "sparse"]
folds = int(os.environ.get("FOLDS", 5))
d = load(name); x, tr = d["xtr"], d["tr"]
texts = np.array(tr["text"], dtype=object)


def fit_lr(xa, q, xb, inner=3):
    """Per-model LR, C chosen by inner-CV log-loss on the known outcomes; predictions on xb."""
    out = np.zeros((xb.shape[0], q.shape[1]))
    prior = shrunk_means(q)
    for j in range(q.shape[1]):
        known = np.isfinite(q[:, j]); y = q[known, j]
        if y.size < 20 or min(y.sum(), (1 - y).sum()) < 3:
            out[:, j] = prior[j]; continue
        xa_j = xa[known]
        best, best_c = np.inf, CV_GRID[0]
        for c in CV_GRID:
            loss = 0.0
            for a, b in KFold(inner, shuffle=True, random_state=0).split(np.arange(y.size)):
                xs, ys, ws = _soft_labels(xa_j[a], y[a])
                m = LogisticRegression(C=c, max_iter=2000).fit(xs, ys, sample_weight=ws)
                p = np.clip(m.predict_proba(xa_j[b])[:, 1], 1e-6, 1 - 1e-6)
                loss -= float((y[b] * np.log(p) + (1 - y[b]) * np.log(1 - p)).sum())
            if loss < best: best, best_c = loss, c
        xs, ys, ws = _soft_labels(xa_j, y)
        out[:, j] = LogisticRegression(C=best_c, max_iter=2000).fit(xs, ys, sample_weight=ws).predict_proba(xb)[:, 1]
    return out


def features(variant, i_tr, i_va):
    if variant == "base":
        s = StandardScaler().fit(x[i_tr]); return s.transform(x[i_tr]), s.transform(x[i_va])
    if variant.startswith("svd"):
        f = RequestFeaturizer(FeaturizerConfig(n_components=int(variant[3:]))).fit(list(texts[i_tr]))
        a, b = f.transform(list(texts[i_tr])), f.transform(list(texts[i_va]))
        s = StandardScaler().fit(a); return s.transform(a), s.transform(b)
    if variant == "sparse":
        s = StandardScaler().fit(x[i_tr])
        v = TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=40000, sublinear_tf=True).fit(texts[i_tr])
        a = sp.hstack([sp.csr_matrix(s.transform(x[i_tr])), v.transform(texts[i_tr])]).tocsr()
        b = sp.hstack([sp.csr_matrix(s.transform(x[i_va])), v.transform(texts[i_va])]).tocsr()
        return a, b
    raise SystemExit(f"unknown variant {variant}")


t0 = time.time()
for variant in variants:
    res = []
    for k, (i_tr, i_va) in enumerate(KFold(folds, shuffle=True, random_state=0).split(x)):
        a, b = features(variant, i_tr, i_va)
        q = np.where(tr["a"][i_tr], tr["q"][i_tr], np.nan)
        qhat = fit_lr(a, q, b)
        va = sub(tr, i_va); complete = np.flatnonzero(va["a"].all(axis=1))
        s, z = score(qhat[complete], sub(va, complete))
        res.append(s - z)
        print(f"{variant} fold {k} {s - z:+.4f} ({time.time()-t0:.0f}s)", flush=True)
    print(f"{name} {variant}: over zero {np.mean(res):+.4f} (folds {np.round(res, 3)})", flush=True)
