import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent)); sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from harness import *
from router.policy.direct import QualityPredictor
import time
def direct(xtr, tr, xva, models):
    p = QualityPredictor("logistic_cv").fit(xtr, models, np.where(tr["a"], tr["q"], np.nan))
    return p.predict(xva)
def prior(xtr, tr, xva, models):
    m = np.nanmean(np.where(tr["a"], tr["q"], np.nan), axis=0)
    return np.tile(m, (len(xva), 1))
for name in ["routerbench", "mmlu_pro"]:
    for f in [prior, direct]:
        t=time.time(); print(f.__name__, end=" "); cv(name, f); print(time.time()-t)
