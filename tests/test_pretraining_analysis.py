"""Richer vs plainer pre-training (Fig. 8): configs, smoke runs, results and the table."""

import dataclasses

import pandas as pd
import pytest

from vldlib.analysis import pretraining
from vldlib.errors import ConfigError
from vldlib.runs import append_record, read_records
from vldlib.sweeps import run_dir


def test_configs_cross_backbones_and_recipes() -> None:
    configs = pretraining.pretraining_configs("cpu", seeds=[0, 1], test_envs=[0, 1, 2, 3])
    assert len(configs) == 2 * 2 * 2 * 4
    kinds = {(c.weights, c.dropout, c.last_layer_lr_factor) for c in configs}
    assert kinds == {(w, p, f) for w in ("rich", "plain") for p, f in ((0.0, 1.0), (0.9, 10.0))}
    assert len({c.hash() for c in configs}) == len(configs)


def test_recipe_fields_cannot_be_overridden() -> None:
    with pytest.raises(ConfigError, match="dropout cannot be overridden"):
        pretraining.pretraining_configs("smoke", seeds=[0], test_envs=[0], dropout=0.5)


def test_smoke_runs_give_the_four_cells(tmp_path) -> None:
    configs = pretraining.pretraining_configs(
        "smoke", seeds=[0], test_envs=[3], steps=3, eval_every=3, lr_milestones=[2]
    )
    results = pretraining.run_pretraining(configs, tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "rich"]
    assert set(results.method) == {"model", "traj_avg", "traj_ens"}
    reported = results[results.reported]
    assert len(reported) == 4 and set(reported.test_domain) == {"photo"}
    assert dict(zip(reported.recipe, reported.method, strict=True)) == {
        "naive": "model",
        "advanced": "traj_avg",
    }
    table = pretraining.pretraining_table(results)
    assert list(table.columns) == [
        "weights", "recipe", "photo", "average", "average_std", "iid",
    ]  # fmt: skip
    assert len(table) == 4 and table.average.equals(table.photo)
    # a 1× combination of combine_grid's form joins as an unreported row of its recipe
    soup = {"test_env": 3, "dropout": 0.0, "method": "soup_1x", "iid_acc": 0.5, "ood_acc": 0.4}
    append_record(tmp_path / "rich" / "combined.jsonl", soup)
    row = pretraining.pretraining_results(tmp_path).query("method == 'soup_1x'").iloc[0]
    assert (row.weights, row.recipe, row.test_domain, row.reported) == (
        "rich",
        "naive",
        "photo",
        False,
    )


def test_a_diverging_run_leaves_the_other_cells(tmp_path, caplog) -> None:
    configs = pretraining.pretraining_configs(
        "smoke", seeds=[0], test_envs=[3], steps=3, eval_every=3, lr_milestones=[2]
    )
    bad = dataclasses.replace(configs[-1], lr=1e30)  # plain backbone, advanced recipe
    results = pretraining.run_pretraining([*configs[:-1], bad], tmp_path, combine=True)
    assert f"plain/{run_dir(tmp_path, bad).name}: non-finite" in caplog.text
    reported = results[results.reported]
    assert sorted(zip(reported.weights, reported.recipe, strict=True)) == [
        ("plain", "naive"),
        ("rich", "advanced"),
        ("rich", "naive"),
    ]
    combined = read_records(tmp_path / "plain" / "combined.jsonl")
    assert {r["dropout"] for r in combined} == {0.0}  # the diverged group is not combined


def test_table_needs_reported_runs() -> None:
    with pytest.raises(ConfigError, match="no naive or advanced"):
        pretraining.pretraining_table(pd.DataFrame({"reported": [False]}))


def test_scratch_weights_have_no_label() -> None:
    with pytest.raises(ConfigError, match="need weights"):
        pretraining.weights_label(None)
    assert pretraining.weights_label("/w/resnet50-0676ba61.pth") == "resnet50-0676ba61"
