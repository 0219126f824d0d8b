"""Richer vs plainer pre-training, naive vs advanced fine-tuning (Fig. 8; later versions' table).

The paper fine-tunes two ImageNet ResNet50s, #1 (torchvision V1, the plain He et al. recipe) and
#2 (V2, a rich recipe), in two ways:

    naive:    plain fine-tuning, no dropout (●);
    advanced: very large dropout (0.9) + 10× last-layer learning rate + weight averaging (◆).

Its finding: on 3 of 4 datasets advanced fine-tuning of #1 barely matches naive fine-tuning of
#2: richer pre-training beats sophisticated fine-tuning. Here the two backbones are the shipped
``rich`` and ``plain`` vldnets (or any weights files). Weight averaging is the run's own
trajectory average (``traj_avg``, the paper's 1296× ★); ``run_pretraining(..., combine=True)``
also computes the 1× ensemble and soups of ``vldlib.combine`` per (backbone, held-out domain,
recipe).

Runs of one backbone live in ``root/<weights label>/``, so that ``vldlib.sweeps.combine_grid``,
which groups runs by held-out domain and dropout, never mixes two pre-trainings.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vldlib.collect import finished_runs, read_combined
from vldlib.config import Config
from vldlib.errors import ConfigError
from vldlib.sweeps import combine_grid, grid, run_local

WEIGHTS = ("rich", "plain")  # the paper's ResNet #2 and #1
RECIPES: dict[str, dict[str, float]] = {
    "naive": {"dropout": 0.0, "last_layer_lr_factor": 1.0},
    "advanced": {"dropout": 0.9, "last_layer_lr_factor": 10.0},
}
# The method whose records a recipe reports: advanced fine-tuning includes weight averaging.
REPORTED = {"naive": "model", "advanced": "traj_avg"}


def weights_label(weights: str | None) -> str:
    """``rich``/``plain``, or a weights file's stem: the name of a backbone's run folder."""
    if weights is None:
        raise ConfigError("pre-training comparisons need weights; got None (from scratch)")
    return weights if weights in WEIGHTS else Path(weights).stem


def recipe_of(config: dict[str, Any]) -> str:
    """The recipe of a run's config: ``naive``, ``advanced``, else ``dropout=…, lr×…``."""
    for name, fields in RECIPES.items():
        if all(config[k] == v for k, v in fields.items()):
            return name
    return f"dropout={config['dropout']:g}, lr×{config['last_layer_lr_factor']:g}"


def pretraining_configs(
    profile: str,
    seeds: Sequence[int],
    test_envs: Sequence[int],
    weights: Sequence[str] = WEIGHTS,
    **overrides: Any,
) -> list[Config]:
    """Every (backbone, recipe, held-out domain, seed) config, through ``vldlib.sweeps.grid``."""
    clash = ({"weights", "dropout", "last_layer_lr_factor"}) & set(overrides)
    if clash:
        raise ConfigError(
            f"{', '.join(sorted(clash))} cannot be overridden: they are set by the backbone and "
            "recipe (see RECIPES)"
        )
    configs = []
    for w in weights:
        for recipe in RECIPES.values():
            lr_factor = {"last_layer_lr_factor": recipe["last_layer_lr_factor"]}
            configs += grid(
                profile, seeds, [recipe["dropout"]], test_envs, weights=w, **lr_factor, **overrides
            )
    return configs


def run_pretraining(
    configs: Sequence[Config],
    root: str | Path,
    combine: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or read, when finished) the configs, each backbone under ``root/<label>``; with
    ``combine``, also the 1× combinations of each group. Returns ``pretraining_results(root)``.

    A run that diverges (non-finite loss) is a result of its recipe, not a crash of the
    comparison: it is logged and left unfinished (a rerun tries it again), and the table has
    the other runs; a group with a diverged run gets no 1× combination."""
    by_weights: dict[str, list[Config]] = {}
    for c in configs:
        by_weights.setdefault(weights_label(c.weights), []).append(c)
    for label, group in by_weights.items():
        finals = run_local(group, Path(root) / label, progress, skip_diverged=True)
        if combine:
            diverged = {
                (c.test_env, c.dropout) for c, f in zip(group, finals, strict=True) if f is None
            }
            kept = [c for c in group if (c.test_env, c.dropout) not in diverged]
            combine_grid(kept, Path(root) / label)
    return pretraining_results(root)


def pretraining_results(root: str | Path) -> pd.DataFrame:
    """One row per finished run and method (and per 1× combination, if computed) under ``root``.

    Columns: weights, recipe, method, reported (the method is the one the recipe reports:
    ``model`` for naive, ``traj_avg`` for advanced), test_env, test_domain, seed (None for 1×
    combinations), selected_step, iid_acc, ood_acc.
    """
    rows = []
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        recipes = {}
        for config, run in finished_runs(folder):
            recipe = recipes[config["test_env"], config["dropout"]] = recipe_of(config)
            for method, final in run.final_records().items():
                rows.append(
                    {
                        "weights": weights_label(config["weights"]),
                        "recipe": recipe,
                        "method": method,
                        "reported": REPORTED.get(recipe) == method,
                        "test_env": config["test_env"],
                        "test_domain": final["test_domain"],
                        "seed": config["seed"],
                        **{k: final[k] for k in ("selected_step", "iid_acc", "ood_acc")},
                    }
                )
        test_domains = {r["test_env"]: r["test_domain"] for r in rows}
        for r in read_combined(folder).to_dict("records"):
            rows.append(
                {
                    "weights": folder.name,
                    "recipe": recipes.get((r["test_env"], r["dropout"])),
                    "method": r["method"],
                    "reported": False,
                    "test_env": r["test_env"],
                    "test_domain": test_domains.get(r["test_env"]),
                    "seed": None,
                    "selected_step": None,
                    "iid_acc": r["iid_acc"],
                    "ood_acc": r["ood_acc"],
                }
            )
    return pd.DataFrame(rows)


def pretraining_table(results: pd.DataFrame) -> pd.DataFrame:
    """Fig. 8 as a table: the reported method of each (backbone, recipe), o.o.d. accuracy per
    held-out domain (mean over seeds), ``average`` over domains (taken per seed, then averaged;
    ``average_std`` across seeds) and ``iid`` (the same average of i.i.d. validation accuracy)."""
    sub = results[results.reported]
    if sub.empty:
        raise ConfigError("no naive or advanced runs in these results; run pretraining_configs")
    keys = ["weights", "recipe"]
    table = sub.pivot_table(index=keys, columns="test_domain", values="ood_acc", aggfunc="mean")
    per_seed = sub.groupby([*keys, "seed"])[["ood_acc", "iid_acc"]].mean()
    by = per_seed.groupby(level=keys)
    table["average"] = by.ood_acc.mean()
    table["average_std"] = by.ood_acc.std()
    table["iid"] = by.iid_acc.mean()
    table.columns.name = None
    return table.reset_index()
