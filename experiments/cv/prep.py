"""Cache features for prototyping: x, quality, cost, c_hat per dataset (train+test)."""
import sys, pickle, numpy as np
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from training.datasets import load_dataset
from features.featurizer import RequestFeaturizer
from router.policy.actions import ActionCatalogue
for name in ["routerbench", "mmlu_pro"]:
    data = load_dataset(f"../shared/data/{name}")
    train, test = data.split("train"), data.split("test")
    complete = test.available.all(axis=1)
    test = test.subset(complete)
    f = RequestFeaturizer().fit(train.prompts["prompt"].tolist())
    xtr = f.transform(train.prompts["prompt"].tolist()); xte = f.transform(test.prompts["prompt"].tolist())
    cat = ActionCatalogue(data.models).fit(xtr, train.output_tokens, train.available)
    out = dict(models=data.model_names, xtr=xtr, xte=xte,
        tr=dict(q=train.quality, c=train.cost, a=train.available, chat=cat.expected_cost(xtr, train.input_tokens), task=train.prompts["task"].to_numpy(), text=train.prompts["prompt"].tolist()),
        te=dict(q=test.quality, c=test.cost, a=test.available, chat=cat.expected_cost(xte, test.input_tokens), task=test.prompts["task"].to_numpy(), text=test.prompts["prompt"].tolist()))
    pickle.dump(out, open(f"/tmp/polyroute-cv/{name}.pkl", "wb"))
    print(name, xtr.shape, xte.shape, len(data.model_names))
