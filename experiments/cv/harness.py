import sys, pickle, numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from training.metrics import aiq
from sklearn.model_selection import KFold

def grid(n=60):
    return np.concatenate([[0.0], np.geomspace(1e-3, 1e3, n), [np.inf]])

def curve(qhat, chat, q, c, a, scale):
    pts = []
    s = chat / scale
    for lam in grid():
        score = -s if np.isinf(lam) else qhat - lam * s - 1e-9 * s / s.max()
        ch = np.argmax(np.where(a, score, -np.inf), axis=1)
        r = np.arange(len(ch))
        pts.append((float(c[r, ch].mean()), float(q[r, ch].mean())))
    return pts

def ref(q, c, a):
    costs = [c[a[:, j], j].mean() for j in range(q.shape[1])]
    quals = [q[a[:, j], j].mean() for j in range(q.shape[1])]
    return costs, quals

def score(qhat, part):
    q, c, a, chat = part["q"], part["c"], part["a"], part["chat"]
    costs, quals = ref(q, c, a)
    scale = max(costs)
    pts = curve(qhat, chat, q, c, a, scale)
    zero = aiq(list(zip(costs, quals)), min(costs), max(costs))
    return aiq(pts, min(costs), max(costs)), zero

def load(name):
    return pickle.load(open(f"/tmp/polyroute-cv/{name}.pkl", "rb"))

def sub(part, idx):
    return {k: (v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]) for k, v in part.items()}

def cv(name, fit_predict, folds=5, seed=0, verbose=True):
    """fit_predict(xtr, trpart, xva, models) -> qhat (nva, M). Returns mean AIQ and mean zero."""
    d = load(name)
    x, tr = d["xtr"], d["tr"]
    res = []
    for k, (i_tr, i_va) in enumerate(KFold(folds, shuffle=True, random_state=seed).split(x)):
        va = sub(tr, i_va)
        complete = va["a"].all(axis=1)
        qhat = fit_predict(x[i_tr], sub(tr, i_tr), x[i_va], d["models"])
        va_c = sub(va, np.flatnonzero(complete))
        res.append(score(qhat[complete], va_c))
    res = np.array(res)
    if verbose:
        print(f"{name}: cv aiq {res[:,0].mean():.4f} (zero {res[:,1].mean():.4f}, +{res[:,0].mean()-res[:,1].mean():.4f}) folds {np.round(res[:,0]-res[:,1],3)}")
    return res

def test(name, fit_predict):
    d = load(name)
    qhat = fit_predict(d["xtr"], d["tr"], d["xte"], d["models"])
    a, z = score(qhat, d["te"])
    print(f"{name}: TEST aiq {a:.4f} (zero {z:.4f}, +{a-z:.4f})")
    return a, z
