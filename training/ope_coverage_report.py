"""The Markdown report of the OPE coverage study (:mod:`training.ope_coverage`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from training import ope_support
from training.ope_coverage import COMPARISON


def machine_description() -> str:
    """CPU model, cores, memory, OS and Python of this machine."""
    import os
    import platform
    from pathlib import Path

    cpu, mem = platform.processor() or platform.machine(), ""
    cpuinfo, meminfo = Path("/proc/cpuinfo"), Path("/proc/meminfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    if meminfo.is_file():
        kib = int(meminfo.read_text().split()[1])
        mem = f", {kib / 2**20:.0f} GiB"
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float) and np.isinf(value):
        return "inf"
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return ""
    return f"{value:.{digits}f}"


def markdown_table(summary: pd.DataFrame) -> str:
    """One scenario's summary as a Markdown table, a row per (estimator, interval)."""
    lines = [
        "| estimator | bias | sd | RMSE | interval | cover | cover (pop) | median width |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "supp": "support-aware",
        "boot": "bootstrap",
        "gauss": "Gaussian",
        "lr": "CR(-2) likelihood ratio",
    }
    for name, r in summary.iterrows():
        point = [str(name), _fmt(r["bias"]), _fmt(r["sd"]), _fmt(r["rmse"])]
        for kind, label in names.items():
            cover = r.get(f"cover_{kind}")
            if cover is None or not np.isfinite(cover):
                continue
            cells = [
                label,
                _fmt(cover, 2),
                _fmt(r[f"cover_{kind}_pop"], 2),
                _fmt(r[f"width_{kind}"]),
            ]
            lines.append("| " + " | ".join(point + cells) + " |")
            point = ["", "", "", ""]
    return "\n".join(lines)


def verdict_line(summary: pd.DataFrame, equivalence: float) -> str:
    """The comparison row's verdicts in words."""
    if COMPARISON not in summary.index:
        return ""
    r = {str(k): v for k, v in summary.loc[COMPARISON].to_dict().items()}
    shares = ", ".join(
        f"{w} {100 * float(r.get(f'verdict_{w}', 0.0)):.0f}%" for w in ope_support.VERDICTS
    )
    return (
        f"Verdicts of `{COMPARISON}` (mean true difference {float(r['truth_mean']):+.4f}): "
        f'{shares}; wrong (the wrong sign, or "no clear difference" where the truth is '
        f"{equivalence:g} or more away): {100 * float(r['verdict_wrong']):.1f}%."
    )


def markdown_report(
    scenarios: list[tuple[dict[str, Any], pd.DataFrame]], command: str, date: str, machine: str,
    seconds: float,
) -> str:  # fmt: skip
    """The whole report: setup, then one table per scenario (``(meta, summary)`` pairs)."""
    out = [
        "# Coverage of the OPE intervals on the bundled sample (full information)",
        "",
        f"Command: `{command}`  ",
        f"Date: {date}  ",
        f"Machine: {machine}  ",
        f"Wall time: {seconds:.0f} s",
        "",
        "Setup (`training/ope_coverage.py`): the bundled MMLU-Pro sample (3,000 prompts x 29"
        " models, recorded scores). The candidate is the direct per-model quality predictor"
        " fitted on the train split, scoring `q̂ - w_cost · ĉ / cost_scale`. Each run draws"
        " `n_logged` test prompts with replacement, logs one decision per prompt with the"
        " logging policy (pscore recorded), rewards = recorded score - cost penalty, fits the"
        " reward model cross-fitted over prompt folds, and estimates the candidate with"
        " `training.ope.estimate_policy_value`. Truths: `cover` = against the candidate's true"
        " value on the drawn prompts, `cover (pop)` = against its value on the whole test split."
        " bias/sd/RMSE are against the former. Nominal coverage 0.95. The support-aware interval"
        " (`training/ope_support.py`) is the bootstrap interval widened to at least"
        " `value ± z · support_se`, the standard error the logger's whole pmf implies. The last"
        " row compares the candidate with always the best single model (paired DR difference)"
        " against the true difference on the drawn prompts.",
    ]
    for meta, summary in scenarios:
        c = meta["config"]
        target = (
            f"softmax(score / {c['tau']})" if c["target"] == "softmax"
            else f"greedy with a {c['target_epsilon']} floor (DirectPolicy's pmf)"
        )  # fmt: skip
        logging = {
            "uniform": "uniform over the eligible models",
            "epsilon_greedy": "epsilon-greedy around the best single model, epsilon = "
            f"{c['logging_epsilon']}",
            "near_greedy": "near-greedy around the best single model, epsilon = "
            f"{c.get('near_greedy_epsilon')}",
        }[c["logging"]]
        out += [
            "",
            f"## logging: {c['logging']}, target: {c['target']}",
            "",
            f"Target {target}; logging {logging}; reward model {c['reward_model']},"
            f" {c['n_folds']} folds; w_cost {c['w_cost']}; {c['n_runs']} runs x"
            f" {c['n_logged']} logged decisions; {c['n_bootstrap']} bootstrap resamples."
            f" True value on the test split {meta['v_pop']:.4f}; mean ESS"
            f" {meta['ess_mean']:.1f} of {c['n_logged']} (expected under the logger's pmf"
            f" {meta.get('ess_expected_mean', float('nan')):.1f}); mean max weight"
            f" {meta['max_weight_mean']:.1f}. Monte Carlo s.e. of a 0.95 coverage:"
            f" {summary.attrs.get('mc_se', float('nan')):.3f}.",
            "",
            markdown_table(summary),
            "",
            verdict_line(summary, float(c.get("equivalence", ope_support.DEFAULT_EQUIVALENCE))),
        ]
    return "\n".join(out) + "\n"
