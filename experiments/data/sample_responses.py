"""Add the models' real answer texts (the ``response`` column of the routing dataset format) to
the bundled MMLU-Pro sample, for the prompts of its test split, so that ``make run`` and the
replay backend answer with what the model really wrote (issue 9, item 6).

Source: TIGER-AI-Lab's MMLU-Pro repository (Apache-2.0),
``eval_results/model_outputs_<model>_5shots.zip``: per model, every question's answer text
(``model_outputs`` or ``generated_text``) and ``pred`` (the letter parsed from it). The
sample's scores were re-scored as ``pred == answer``; this script checks, for every text it
adds, that the same rule on the file it reads gives the score already in the sample, and
refuses to write otherwise.

Run once, offline, with a local clone of that repository (nothing is downloaded)::

    .venv/bin/python experiments/data/sample_responses.py --mmlu-pro-repo /path/to/MMLU-Pro

Only the test split gets texts: the train split's answers would add ~4x the size and nothing
serves them (`make run` and the demo's served traffic are test prompts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import pandas as pd

SAMPLE = Path(__file__).resolve().parents[2] / "training" / "data" / "mmlu_pro_sample"


def model_outputs(repo: Path, model: str) -> dict[str, dict[str, str]]:
    """question_id -> the record of ``model``'s answer, from the repository's zip at HEAD."""
    name = f"eval_results/model_outputs_{model}_5shots.zip"
    if (repo / name).is_file():
        raw = (repo / name).read_bytes()
    else:  # a bare mirror: read the blob from git
        raw = subprocess.run(
            ["git", "-C", str(repo), "show", f"HEAD:{name}"], check=True, capture_output=True
        ).stdout
    with zipfile.ZipFile(BytesIO(raw)) as z:
        (member,) = [n for n in z.namelist() if n.endswith(".json")]
        records = json.loads(z.read(member))
    # DeepSeek-Coder-V2's file holds 43 stray strings among its records: skipped
    return {str(r["question_id"]): r for r in records if isinstance(r, dict)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmlu-pro-repo", type=Path, required=True,
                        help="a local clone (or bare mirror) of TIGER-AI-Lab/MMLU-Pro")  # fmt: skip
    parser.add_argument("--sample", type=Path, default=SAMPLE,
                        help="the sample directory to update (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    prompts = pd.read_parquet(args.sample / "prompts.parquet")
    outcomes = pd.read_parquet(args.sample / "outcomes.parquet")
    test = set(prompts.loc[prompts["split"] == "test", "prompt_id"])
    responses = pd.Series(pd.NA, index=outcomes.index, dtype="string")
    mismatches: list[str] = []
    for model, rows in outcomes.groupby("model").groups.items():
        records = model_outputs(args.mmlu_pro_repo, str(model))
        for i in rows:
            pid = str(outcomes.at[i, "prompt_id"])
            if pid not in test:
                continue
            record = records.get(pid.removeprefix("mmlupro:"))
            if record is None:
                mismatches.append(f"{model} {pid}: no record")
                continue
            score = float(record["pred"] == record["answer"])
            if score != float(outcomes.at[i, "score"]):
                mismatches.append(f"{model} {pid}: score {outcomes.at[i, 'score']} vs {score}")
                continue
            # the answer text is ``model_outputs`` (API models) or ``generated_text`` (the rest)
            text = record.get("model_outputs", record.get("generated_text"))
            responses.at[i] = str(text).strip()
    if mismatches:
        print(f"{len(mismatches)} outcomes do not match the source:", *mismatches[:20], sep="\n")
        return 1
    outcomes["response"] = responses
    outcomes.to_parquet(args.sample / "outcomes.parquet", index=False, compression="zstd")
    n = outcomes["response"].notna().sum()
    print(f"{n} answer texts added ({len(test)} test prompts x models that answered them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
