import sys; sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
import numpy as np
from sklearn.model_selection import KFold
from training.datasets import load_dataset, bundled_path
from training.evaluation import Reference
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
from router.policy.direct import QualityPredictor
est = sys.argv[1] if len(sys.argv) > 1 else "logistic"
data = load_dataset(bundled_path()); train = data.split("train")
res = {}
for k, (a, b) in enumerate(KFold(5, shuffle=True, random_state=0).split(np.arange(train.n_prompts))):
    tr, va = train.subset(a), train.subset(b)
    f = RequestFeaturizer().fit(tr.prompts["prompt"].tolist())
    xtr, xva = f.transform(tr.prompts["prompt"].tolist()), f.transform(va.prompts["prompt"].tolist())
    cat = ActionCatalogue(data.models).fit(xtr, tr.output_tokens, tr.available)
    scale = Reference.of(tr).c_hi
    p = QualityPredictor(est).fit(xtr, data.model_names, np.where(tr.available, tr.quality, np.nan))
    qh = p.predict(xva); mean = p.prior_
    chat = cat.expected_cost(xva, va.input_tokens)
    rew_true = va.quality - 0.2 * va.cost / scale
    for alpha in [0, 0.25, 0.5, 0.75, 1.0, 1.25]:
        q = alpha * qh + (1 - alpha) * mean
        for cname, c in [("chat", chat), ("true_c", va.cost)]:
            s = np.where(va.available, q - 0.2 * c / scale, -np.inf)
            ch = np.argmax(s, 1)
            res.setdefault((alpha, cname), []).append(rew_true[np.arange(len(ch)), ch].mean())
    single = np.nanmean(np.where(va.available, rew_true, np.nan), 0)
    res.setdefault("best_single", []).append(single.max())
for k, v in res.items(): print(k, round(float(np.mean(v)), 4))
