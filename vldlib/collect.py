"""Results → pandas tables: selection by training-domain validation, means, paired differences.

Reads only run folders (config.json + results.jsonl), never models.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from vldlib.runs import CONFIG, RunDir


def finished_runs(root: str | Path) -> Iterator[tuple[dict[str, Any], RunDir]]:
    """(config dict, run folder) of every finished run directly under ``root``, sorted by name."""
    for cfg_path in sorted(Path(root).glob(f"*/{CONFIG}")):
        run = RunDir(cfg_path.parent)
        if run.is_done():
            yield json.loads(cfg_path.read_text())["config"], run


def load_runs(root: str | Path) -> pd.DataFrame:
    """One row per finished run and method: its config and its final (i.i.d.-selected) record."""
    rows = []
    for config, run in finished_runs(root):
        for method, final in run.final_records().items():
            rows.append(
                {
                    **{k: config[k] for k in ("dataset", "test_env", "dropout", "seed", "lr")},
                    "method": method,
                    "test_domain": final["test_domain"],
                    "selected_step": final["selected_step"],
                    "steps": final["steps"],
                    "iid_acc": final["iid_acc"],
                    "ood_acc": final["ood_acc"],
                    "run": run.path.name,
                }
            )
    return pd.DataFrame(rows)


def load_curves(root: str | Path) -> pd.DataFrame:
    """Every evaluation record of every finished run (step, train loss, accuracies)."""
    rows = []
    for config, run in finished_runs(root):
        for r in run.records():
            if not r.get("final") and r["method"] == "model":
                rows.append(
                    {
                        "dropout": config["dropout"],
                        "seed": config["seed"],
                        "test_env": config["test_env"],
                        **{k: r[k] for k in ("step", "train_loss", "iid_acc", "ood_acc")},
                    }
                )
    return pd.DataFrame(rows)


def mean_ci(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(half)


def dropout_table(runs: pd.DataFrame, baseline: float = 0.0, method: float = 0.9) -> pd.DataFrame:
    """Per held-out domain: o.o.d. and i.i.d. accuracy (mean ± std over seeds) of the baseline
    and the method, and their paired o.o.d. difference (same seed) with a 95% CI."""
    runs = runs[runs.method == "model"]
    rows = []
    domains = runs.sort_values("test_env")["test_domain"].unique()
    for domain in [*domains, "average"]:
        sub = runs if domain == "average" else runs[runs.test_domain == domain]
        # the average over domains is taken per seed, so it pairs like the domains do
        per_seed = sub.groupby(["dropout", "seed"])[["ood_acc", "iid_acc"]].mean().reset_index()
        a = per_seed[per_seed.dropout == baseline].set_index("seed")
        b = per_seed[per_seed.dropout == method].set_index("seed")
        seeds = a.index.intersection(b.index)
        diff, half = mean_ci((b.loc[seeds, "ood_acc"] - a.loc[seeds, "ood_acc"]).to_numpy())
        rows.append(
            {
                "held-out domain": domain,
                "seeds": len(seeds),
                f"ood λ={baseline:g}": f"{a.ood_acc.mean():.3f} ± {a.ood_acc.std():.3f}",
                f"ood λ={method:g}": f"{b.ood_acc.mean():.3f} ± {b.ood_acc.std():.3f}",
                "ood diff [95% CI]": f"{diff:+.3f} [{diff - half:+.3f}, {diff + half:+.3f}]",
                f"iid λ={baseline:g}": f"{a.iid_acc.mean():.3f}",
                f"iid λ={method:g}": f"{b.iid_acc.mean():.3f}",
            }
        )
    return pd.DataFrame(rows)


def methods_table(runs: pd.DataFrame, combined: pd.DataFrame) -> pd.DataFrame:
    """O.o.d. accuracy of every method and dropout rate, per held-out domain and averaged.

    Per-run methods (``model``, ``traj_avg``, ``traj_ens``) show mean ± std over seeds (the average
    column is taken per seed first); the 1× combinations, one per domain and dropout, show their
    single value. ``iid`` is the domain-averaged training-domain validation accuracy.
    """
    names = dict(runs.drop_duplicates("test_env").set_index("test_env").test_domain)
    rows = []
    for (dropout, method), sub in runs.groupby(["dropout", "method"]):
        row = {"dropout": dropout, "method": method}
        for env, domain in sorted(names.items()):
            acc = sub[sub.test_env == env].ood_acc
            row[domain] = f"{acc.mean():.3f} ± {acc.std():.3f}"
        per_seed = sub.groupby("seed")[["ood_acc", "iid_acc"]].mean()
        row["average"] = f"{per_seed.ood_acc.mean():.3f} ± {per_seed.ood_acc.std():.3f}"
        row["iid"] = f"{per_seed.iid_acc.mean():.3f}"
        rows.append(row)
    groups = combined.groupby(["dropout", "method"]) if len(combined) else []
    for (dropout, method), sub in groups:
        row = {"dropout": dropout, "method": method}
        for env, domain in sorted(names.items()):
            row[domain] = f"{sub[sub.test_env == env].ood_acc.mean():.3f}"
        row["average"] = f"{sub.ood_acc.mean():.3f}"
        row["iid"] = f"{sub.iid_acc.mean():.3f}"
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["dropout", "method"]).reset_index(drop=True)


def baseline_overhead(root: str | Path) -> float:
    """Extra wall time of the trajectory baselines as a fraction of the rest of the runs' time."""
    base = extra = 0.0
    for _, run in finished_runs(root):
        records = [r for r in run.records() if r.get("method") == "model" and "s_per_step" in r]
        steps = [0] + [r["step"] for r in records]
        for prev, r in zip(steps, records, strict=False):
            base += r["s_per_step"] * (r["step"] - prev)
            extra += r.get("s_baselines", 0.0)
    return extra / base if base else float("nan")


def loss_plateau(curves: pd.DataFrame) -> pd.DataFrame:
    """Mean training loss per dropout at quarters of the schedule: has it levelled off?"""
    steps = np.sort(curves.step.unique())
    marks = [steps[max(0, int(round(q * len(steps))) - 1)] for q in (0.25, 0.5, 0.75, 1.0)]
    sub = curves[curves.step.isin(marks)]
    return sub.pivot_table(index="dropout", columns="step", values="train_loss", aggfunc="mean")
