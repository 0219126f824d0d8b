"""Result tables: paired differences and confidence intervals, from synthetic runs."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vldlib.collect import dropout_table, mean_ci, methods_table


def test_mean_ci_matches_student_t():
    x = np.array([0.1, 0.3, 0.2, 0.4, 0.25])
    mean, half = mean_ci(x)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert mean == pytest.approx(x.mean()) and half == pytest.approx((hi - lo) / 2)


def test_dropout_table_pairs_by_seed():
    rng = np.random.default_rng(0)
    rows = []
    for env, domain in enumerate(["a", "b"]):
        for seed in range(5):
            seed_effect = rng.normal(0, 0.05)  # shared by both methods: pairing removes it
            for dropout, gain in ((0.0, 0.0), (0.9, 0.02)):
                rows.append(
                    dict(
                        method="model", test_env=env, test_domain=domain, seed=seed,
                        dropout=dropout, ood_acc=0.6 + seed_effect + gain, iid_acc=0.8,
                    )
                )  # fmt: skip
    table = dropout_table(pd.DataFrame(rows)).set_index("held-out domain")
    assert list(table.index) == ["a", "b", "average"]
    assert table.loc["average", "ood diff [95% CI]"] == "+0.020 [+0.020, +0.020]"
    assert table.loc["a", "seeds"] == 5


def test_domain_average_keeps_only_seeds_with_every_domain():
    """Seed 2 has run on the easy domain only: its lone accuracy is no domain average."""
    rows = [
        dict(
            method="model", test_env=env, test_domain=domain, seed=seed, dropout=dropout,
            ood_acc=acc, iid_acc=0.8,
        )
        for env, domain, acc in ((0, "easy", 0.9), (1, "hard", 0.3))
        for seed in (0, 1, 2)
        for dropout in (0.0, 0.9)
        if not (seed == 2 and domain == "hard")
    ]  # fmt: skip
    table = dropout_table(pd.DataFrame(rows)).set_index("held-out domain")
    assert table.loc["easy", "seeds"] == 3
    assert table.loc["average", "seeds"] == 2
    assert table.loc["average", "ood λ=0"] == "0.600 ± 0.000"
    methods = methods_table(pd.DataFrame(rows), pd.DataFrame())
    assert set(methods.average) == {"0.600 ± 0.000"}


def test_collect_cli_writes_one_table_per_grid_selected_by_iid(tmp_path, capsys):
    """Two smoke runs: the table's accuracies are those of each run's step with the best
    training-domain validation accuracy, recomputed here from results.jsonl."""
    from vldlib.__main__ import main
    from vldlib.runs import read_records

    runs, out = tmp_path / "runs", tmp_path / "tables"
    assert main(["sweep", "--grid", "smoke", "--runs-dir", str(runs), "--where", "test_env=0"]) == 0
    assert main(["collect", str(runs), "--out", str(out)]) == 0
    assert "## smoke" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["smoke.csv", "smoke.md"]
    table = pd.read_csv(out / "smoke.csv")
    rows = table[(table.method == "model") & (table.test_domain == "silhouette")]
    assert sorted(rows.dropout) == [0.0, 0.9] and set(rows.seeds) == {1}
    for folder in runs.iterdir():
        evals = [r for r in read_records(folder / "results.jsonl") if r.get("method") == "model"]
        best = max(evals, key=lambda r: (r.get("iid_acc", -1), -r.get("step", 0)))
        dropout = float(folder.name.split("_")[1][1:])
        row = rows[rows.dropout == dropout].iloc[0]
        assert (row.iid, row.ood) == pytest.approx((best["iid_acc"], best["ood_acc"]))
    markdown = (out / "smoke.md").read_text()
    assert markdown.startswith("# the embedded benchmark at test size")
    assert "| silhouette " in markdown


def test_read_combined_keeps_the_records_of_exactly_these_runs(tmp_path) -> None:
    from vldlib.collect import COMBINED, read_combined
    from vldlib.runs import append_record

    path = tmp_path / COMBINED
    five, three = [f"r{i}" for i in range(5)], ["r0", "r1", "r2"]
    append_record(path, {"test_env": 0, "dropout": 0.9, "method": "ens_1x", "ood_acc": 0.5})
    for runs, acc in ((five, 0.6), (three, 0.7)):  # the smaller grid's record is newer
        append_record(path, {"test_env": 0, "dropout": 0.9, "method": "ens_1x", "ood_acc": acc,
                             "runs": sorted(runs)})  # fmt: skip
    assert read_combined(tmp_path, runs={(0, 0.9): five[::-1]}).ood_acc.tolist() == [0.6]
    assert read_combined(tmp_path, runs={(0, 0.9): three}).ood_acc.tolist() == [0.7]
    assert read_combined(tmp_path, runs={(0, 0.9): ["r0"]}).empty
    assert read_combined(tmp_path / "none", runs={(0, 0.9): three}).empty
