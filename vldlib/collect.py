"""Results → pandas tables: selection by training-domain validation, means, paired differences.

Reads only run folders (config.json + results.jsonl), never models.
"""

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from vldlib.config import EXECUTION_FIELDS
from vldlib.grids import GRIDS, HPARAM_FIELDS, Grid
from vldlib.runs import CONFIG, RunDir, read_records

COMBINED = "combined.jsonl"  # the 1× combinations of a runs folder (``sweeps.combine_grid``)
RESULT_COLUMNS = ("method", "test_domain", "iid_acc", "ood_acc", "run")


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


def complete_seeds(runs: pd.DataFrame, n_domains: int) -> pd.DataFrame:
    """The rows of the (dropout, method, seed) groups that have all ``n_domains`` held-out
    domains: a domain average over fewer would mix easier and harder domains."""
    keys = [k for k in ("dropout", "method", "seed") if k in runs]
    counts = runs.groupby(keys).test_domain.transform("nunique")
    return runs[counts == n_domains]


def dropout_table(runs: pd.DataFrame, baseline: float = 0.0, method: float = 0.9) -> pd.DataFrame:
    """Per held-out domain: o.o.d. and i.i.d. accuracy (mean ± std over seeds) of the baseline
    and the method, and their paired o.o.d. difference (same seed) with a 95% CI."""
    runs = runs[runs.method == "model"]
    rows = []
    domains = runs.sort_values("test_env")["test_domain"].unique()
    for domain in [*domains, "average"]:
        if domain == "average":
            sub = complete_seeds(runs, len(domains))
        else:
            sub = runs[runs.test_domain == domain]
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
        per_seed = complete_seeds(sub, len(names)).groupby("seed")[["ood_acc", "iid_acc"]].mean()
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


# ----------------------------------------------------------------------------------------------
# One table per figure: the runs of each grid in a runs folder


def _file_name(weights: str | None) -> str | None:
    return None if weights is None else Path(weights).name


def load_all(root: str | Path) -> pd.DataFrame:
    """One row per finished run and method: every result-changing config field (weights by file
    name) and the run's final record, selected by training-domain validation."""
    rows = []
    for config, run in finished_runs(root):
        fields = {k: v for k, v in config.items() if k not in EXECUTION_FIELDS}
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        fields["weights"] = _file_name(fields.get("weights"))
        for method, final in run.final_records().items():
            rows.append(
                {
                    **fields,
                    "method": method,
                    "test_domain": final["test_domain"],
                    "iid_acc": final["iid_acc"],
                    "ood_acc": final["ood_acc"],
                    "run": run.path.name,
                }
            )
    return pd.DataFrame(rows)


def combo_cloud(per_domain: list[np.ndarray]) -> np.ndarray:
    """Every average over domains with one hyper-parameter choice per domain: with 6 choices on 4
    domains, the paper's 6^4 = 1296 points. ``per_domain[d]`` holds domain d's choices."""
    total = np.zeros(())
    for d, values in enumerate(per_domain):
        shape = [1] * len(per_domain)
        shape[d] = len(values)
        total = total + np.asarray(values, dtype=float).reshape(shape)
    return total.ravel() / len(per_domain)


def _summary(sub: pd.DataFrame) -> dict[str, Any]:
    """Mean and 95% CI over seeds, and the range over hyper-parameter choices (seed means)."""
    per_seed = sub.groupby("seed")[["iid_acc", "ood_acc"]].mean()
    ood, half = mean_ci(per_seed.ood_acc.to_numpy())
    by_choice = sub.groupby(["test_env", *HPARAM_FIELDS]).ood_acc.mean()
    cloud = combo_cloud([g.to_numpy() for _, g in by_choice.groupby(level="test_env")])
    return {
        "runs": sub.run.nunique(),
        "seeds": len(per_seed),
        "iid": per_seed.iid_acc.mean(),
        "ood": ood,
        "ood_ci95": half,
        "combos": len(cloud),
        "ood_min": cloud.min(),
        "ood_max": cloud.max(),
    }


def figure_table(
    runs: pd.DataFrame, grid: Grid, combined: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The table of one figure: per dataset, recipe and method, each held-out domain and their
    average.

    ``ood``/``iid``: mean over seeds of the accuracy at the step selected by training-domain
    validation (averaged over hyper-parameter choices and, on ``average`` rows, over domains
    first), with the half-width of its 95% Student-t interval over seeds. ``combos``,
    ``ood_min``, ``ood_max``: the cloud of the paper's scatter plots, one point per choice of
    (lr, weight decay) for each held-out domain (6^4 = 1296 on the paper's grid). The 1×
    combinations of ``combined`` (one model per domain) have no interval.
    """
    if not len(runs):
        return pd.DataFrame()
    runs = runs[[grid.matches(r) for r in runs.to_dict("records")]]
    if not len(runs):
        return pd.DataFrame()
    ignored = {"test_env", "seed", *HPARAM_FIELDS}
    group = [k for k in grid.fields() if k not in ignored]
    configured = [k for k in runs.columns if k not in RESULT_COLUMNS and k not in ignored]
    group += [k for k in configured if k not in group and runs[k].nunique(dropna=False) > 1]
    if "dataset" not in group:
        group.insert(0, "dataset")
    names = dict(runs.drop_duplicates("test_env").set_index("test_env").test_domain)
    rows = []
    for values, sub in runs.groupby(group, dropna=False, sort=True):
        key = dict(zip(group, values, strict=True))
        for method, runs_of_method in sub.groupby("method", sort=True):
            for _, domain_runs in runs_of_method.groupby("test_env"):
                rows.append(
                    key | {"method": method, "test_domain": domain_runs.test_domain.iloc[0]}
                )
                rows[-1] |= _summary(domain_runs)
            rows.append(key | {"method": method, "test_domain": "average"})
            rows[-1] |= _summary(runs_of_method)
        rows += _combined_rows(key, names, combined)
    return pd.DataFrame(rows)


def _combined_rows(
    key: dict[str, Any], names: dict[int, str], combined: pd.DataFrame | None
) -> list[dict[str, Any]]:
    """The 1× combinations of one group: the records of ``combined`` that name every grouping
    field (the dataset may be left out: a runs folder of the embedded benchmark holds one)."""
    fields = [k for k in key if combined is not None and (k in combined.columns or k != "dataset")]
    if combined is None or any(k not in combined.columns for k in fields):
        return []
    mine = combined[combined.test_env.isin(names)]
    for k in fields:
        stored = mine[k].map(_file_name) if k == "weights" else mine[k]
        mine = mine[stored == key[k]]
    rows = []
    for method, m in mine.groupby("method", sort=True):
        for _, r in m.sort_values("test_env").iterrows():
            rows.append(key | {"method": method, "test_domain": names[r.test_env]})
            rows[-1] |= {"runs": r.n_models, "iid": r.iid_acc, "ood": r.ood_acc}
        average = {"method": method, "test_domain": "average", "runs": m.n_models.sum()}
        rows.append(key | average | {"iid": m.iid_acc.mean(), "ood": m.ood_acc.mean()})
    return rows


def collect_figures(root: str | Path, out: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """A table for every grid with finished runs in ``root``, written to ``out`` as
    ``<grid>.csv`` and ``<grid>.md`` when given."""
    runs = load_all(root)
    combined = read_combined(root) if (Path(root) / COMBINED).exists() else None
    tables = {}
    for name, grid in GRIDS.items():
        table = figure_table(runs, grid, combined)
        if len(table):
            tables[name] = table
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            table.to_csv(out / f"{name}.csv", index=False)
            text = f"# {GRIDS[name].figure}\n\n" + to_markdown(table) + "\n"
            (out / f"{name}.md").write_text(text)
    return tables


ACCURACY_COLUMNS = ("iid", "ood", "ood_ci95", "ood_min", "ood_max")
COUNT_COLUMNS = ("runs", "seeds", "combos")


def to_markdown(table: pd.DataFrame) -> str:
    """The table with accuracies to three decimals and blanks for what does not apply."""
    shown = table.astype(object)
    for column in table.columns:
        if column in ACCURACY_COLUMNS:
            shown[column] = [f"{v:.3f}" if pd.notna(v) else "" for v in table[column]]
        elif column in COUNT_COLUMNS:
            shown[column] = [f"{v:.0f}" if pd.notna(v) else "" for v in table[column]]
    return shown.to_markdown(index=False, disable_numparse=True)


def read_combined(
    root: str | Path,
    keys: Sequence[str] = ("test_env", "dropout"),
    runs: Mapping[tuple, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """``root/combined.jsonl`` with the newest record of each group (``keys``) and method.

    ``runs`` (group's ``keys`` values -> run folder names) keeps only the records that combine
    exactly those folders: one made from another set of runs (fewer seeds, or one predating
    the ``runs`` field) is left out rather than shown as this grid's, and does not hide it."""
    table = pd.DataFrame(read_records(Path(root) / COMBINED))
    if not len(table):
        return table
    if runs is not None:
        if "runs" not in table:
            return pd.DataFrame()
        wanted = {tuple(g): tuple(sorted(names)) for g, names in runs.items()}
        groups = table[list(keys)].itertuples(index=False)
        table = table[
            [
                isinstance(r, list) and wanted.get(tuple(g)) == tuple(r)
                for g, r in zip(groups, table.runs, strict=True)
            ]
        ]
    subset = [k for k in (*keys, "method") if k in table.columns]
    return table.drop_duplicates(subset, keep="last").reset_index(drop=True)
