"""The analyses' tables and their command line, on smoke-sized runs."""

import pandas as pd
import pytest

from vldlib.analysis import tables
from vldlib.analysis.__main__ import main
from vldlib.config import make_config
from vldlib.errors import RunError
from vldlib.sweeps import run_dir
from vldlib.train import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished smoke runs (λ = 0 and 0.9) and one without a checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    for p in (0.0, 0.9):
        config = make_config("smoke", test_env=1, dropout=p)
        train(config, run_dir(root, config), progress=False)
    config = make_config("smoke", test_env=1, seed=1)
    folder = run_dir(root, config)
    train(config, folder, progress=False)
    (folder / "checkpoint.pt").unlink()
    return root


def test_starvation_tables() -> None:
    frames = tables.starvation_tables(seeds=(0,), rates=(0.0, 0.9), l2s=(1.0,), penalty_masks=1000)
    sweep = frames["starvation"].set_index(["rate", "l2"])
    assert sweep.loc[(0.9, 0.0), "ood_flip_acc"] > sweep.loc[(0.0, 1.0), "ood_flip_acc"] + 0.3
    history = frames["starvation_history"]
    assert set(history.feature) == {"strong", *(f"weak{j}" for j in range(1, 9))}
    assert (history[history.step == 0].w == 0).all()  # zero initialisation
    assert (frames["starvation_penalty"].rel_error < 0.02).all()


def test_shares_read_only_finished_runs_with_checkpoints(runs) -> None:
    names = {p.name.rsplit("_", 1)[0] for p in tables.runs_with_checkpoints(runs)}
    assert names == {"sketch_p0_s0", "sketch_p0.9_s0"}  # not sketch_p0_s1: no checkpoint
    shares = tables.decomposition_shares(runs, n_images=8)["decomposition_shares"]
    assert set(shares.dropout) == {0.0, 0.9} and set(shares.images) == {"sketch"}
    with pytest.raises(RunError, match="checkpoint"):
        tables.decomposition_shares(runs / "none")


def test_linear_summary_keeps_pairs_with_every_full_dropout() -> None:
    def row(kind, env, seed, p, acc):
        return dict(kind=kind, test_env=env, seed=seed, dropout=p, weight_decay=1e-4,
                    selection="iid", iid_acc=acc, ood_acc=acc)  # fmt: skip

    full = pd.DataFrame([row("full", 0, 0, 0.0, 0.8), row("full", 0, 0, 0.9, 0.6),
                         row("full", 1, 0, 0.0, 0.1)])  # fmt: skip
    linear = pd.DataFrame([row("linear", 0, 0, 0.9, 0.4), row("linear", 1, 0, 0.9, 0.2)])
    summary = tables.linear_summary(linear, full).set_index(["kind", "dropout"])
    assert summary.runs.tolist() == [1, 1, 1]  # (env 1, seed 0) lacks a λ = 0.9 full run
    assert summary.loc[("linear", 0.9), "ood_acc"] == pytest.approx(0.4)


def test_interpolation_tables_train_a_mild_run_per_long_run(runs, tmp_path) -> None:
    long_runs = tables.runs_with_checkpoints(runs)  # λ = 0 and 0.9, seed 0
    curve = tables.interpolation_tables(long_runs, tmp_path, 3, ["finetuned"])["interpolation"]
    assert set(curve.finetuning) == {"mild", "long"} and set(curve.pre_head) == {"finetuned"}
    assert set(curve[curve.finetuning == "mild"].steps) == {3}
    assert set(curve.long_run) == {p.name for p in long_runs} and set(curve.test_domain) == {
        "sketch"
    }
    gaps = tables.interpolation_gaps(curve)
    assert len(gaps) == 2 * 2 and (gaps.iid_acc_gap_max >= gaps.iid_acc_gap_mean).all()
    mild = sorted((tmp_path / "trained" / "mild").iterdir())
    assert len(mild) == 2 and all((m / "done").exists() for m in mild)
    with pytest.raises(RunError, match="at least one"):
        tables.interpolation_tables([], tmp_path)


def test_interpolation_gaps() -> None:
    rows = [
        dict(finetuning="mild", pre_head="probe", alpha=a, kind=k, iid_acc=acc, ood_acc=0.5)
        for a, k, acc in [(0.0, "weights", 0.8), (0.0, "representation", 0.8),
                          (0.5, "weights", 0.4), (0.5, "representation", 0.7)]
    ]  # fmt: skip
    gaps = tables.interpolation_gaps(pd.DataFrame(rows)).iloc[0]
    assert gaps.iid_acc_gap_mean == pytest.approx(0.15) and gaps.iid_acc_gap_max == pytest.approx(
        0.3
    )
    assert gaps.ood_acc_gap_max == 0


def test_cli_writes_tables_and_reports_errors(runs, tmp_path, capsys) -> None:
    assert main(["full", "--runs", str(runs), "--out", str(tmp_path)]) == 0
    full = pd.read_csv(tmp_path / "full_ft.csv")
    assert len(full) == 2 * 3 and set(full.selection) == {"iid", "last"}
    assert main(["shares", "--runs", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["interpolation", "--out", str(tmp_path)])


def test_interpolation_gap_table_pairs_mild_and_long_per_run() -> None:
    from vldlib.figures import AnalysisTable, interpolation_gap

    rows = [
        dict(long_run=f"r{s}", seed=s, finetuning=f, pre_head="probe", alpha=a, kind=k,
             iid_acc=0.5, ood_acc=0.5 + (gap * s if k == "weights" and a == 0.5 else 0.0))
        for s in (1, 2, 3)
        for f, gap in (("mild", 0.1), ("long", 0.3))
        for a in (0.0, 0.5)
        for k in ("weights", "representation")
    ]  # fmt: skip
    out = interpolation_gap(AnalysisTable("interpolation", pd.DataFrame(rows), "test"))
    long = out[out["fine-tuning"] == "long"].iloc[0]
    assert long.runs == 3 and long["o.o.d. max |gap| [95% CI]"].startswith("0.600 [")
    # mean over α of the long gap minus the mild one: (0.3 − 0.1)·s / 2 = 0.1·s, mean 0.2
    assert long["o.o.d. mean |gap| change from mild"].startswith("+0.200 [")
    assert long["i.i.d. mean |gap| change from mild"] == "+0.000 [+0.000, +0.000]"  # no i.i.d. gap
    mild = out[out["fine-tuning"] == "mild"].iloc[0]
    assert mild["o.o.d. mean |gap| change from mild"] == "reference"


def test_a_table_computed_once_is_read_from_its_cache(tmp_path) -> None:
    from vldlib.figures import analysis_table, table_cache

    calls = []

    def compute() -> pd.DataFrame:
        calls.append(1)
        return pd.DataFrame({"ood_acc": [0.5, 0.25]})

    inputs = {"profile": "smoke", "seeds": [0, 1], "rates": [0.0, 0.9], "weight_decays": [1e-4]}
    cache = table_cache(tmp_path, "linear_ft", **inputs)
    assert cache != table_cache(tmp_path, "linear_ft", **(inputs | {"seeds": [0]}))
    first = analysis_table("linear_ft", None, compute, True, cache=cache)
    second = analysis_table("linear_ft", None, compute, False, cache=cache)
    assert calls == [1] and "computed earlier" in second.source
    pd.testing.assert_frame_equal(first.frame, second.frame)
    # a committed table comes first
    (tmp_path / "committed").mkdir()
    pd.DataFrame({"ood_acc": [0.9]}).to_csv(tmp_path / "committed" / "linear_ft.csv", index=False)
    assert (
        len(analysis_table("linear_ft", tmp_path / "committed", compute, True, cache=cache).frame)
        == 1
    )
