import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent)); sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from harness import *
from router.policy.direct import QualityPredictor

class OnlineRidge:
    """per-model ridge on [x,1]; optional shared ridge (difficulty) learned from every observation."""
    def __init__(self, d, M, alpha=1.0, shared=True, prior_mean=0.5):
        D = d + 1
        reg = np.full(D, alpha); reg[-1] = 1e-2  # the intercept (model mean) is barely shrunk
        self.Ainv = np.tile(np.diag(1.0 / reg), (M, 1, 1))
        self.b = np.zeros((M, D)); self.W = np.zeros((M, D))
        self.shared = shared
        self.S_inv = np.diag(1.0 / reg); self.sb = np.zeros(D); self.sw = np.zeros(D)
        self.mu = prior_mean
    def _phi(self, x): return np.append(x, 1.0)
    def predict(self, X):
        P = np.hstack([X, np.ones((len(X), 1))])
        base = self.mu + (P @ self.sw if self.shared else np.zeros(len(X)))
        return base[:, None] + P @ self.W.T
    def update(self, x, m, q):
        p = self._phi(x)
        base = self.mu
        if self.shared:
            Sp = self.S_inv @ p; self.S_inv -= np.outer(Sp, Sp) / (1 + p @ Sp)
            self.sb += p * (q - self.mu); self.sw = self.S_inv @ self.sb
            base += p @ self.sw
        A = self.Ainv[m]; Ap = A @ p; A -= np.outer(Ap, Ap) / (1 + p @ Ap)
        self.b[m] += p * (q - base)
        self.W[m] = A @ self.b[m]

def squarecb(r, gamma, eps):
    K = len(r); best = np.argmax(r)
    p = 1.0 / (K + gamma * (r[best] - r))
    p[best] = 0; p[best] = 1 - p.sum()
    return (1 - eps) * p + eps / K

def replay(x, tr, model, lam, scale, gamma0=50.0, eps=0.02, seed=0, prior=None):
    rng = np.random.default_rng(seed)
    n = len(x); order = rng.permutation(n)
    logged = np.full(tr["q"].shape, np.nan); probs = np.full(n, np.nan)
    rew = []
    for t, i in enumerate(order):
        elig = np.flatnonzero(tr["a"][i])
        qh = model.predict(x[i:i+1])[0]
        if prior is not None: qh = qh + prior[i]
        r = qh[elig] - lam * tr["chat"][i, elig] / scale
        p = squarecb(r, gamma0 * np.sqrt(t + 1), eps)
        k = rng.choice(len(elig), p=p / p.sum()); m = elig[k]
        q = tr["q"][i, m]
        model.update(x[i], m, q - (prior[i, m] if prior is not None else 0))
        logged[i, m] = q; probs[i] = p[k]
        rew.append(q - lam * tr["c"][i, m] / scale)
    return logged, probs, np.array(rew)
