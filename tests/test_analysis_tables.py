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


def test_interpolation_tables_train_a_mild_run(runs, tmp_path) -> None:
    long_run = tables.runs_with_checkpoints(runs)[0]
    curve = tables.interpolation_tables(long_run, tmp_path, 3, ["finetuned"])["interpolation"]
    assert set(curve.finetuning) == {"mild", "long"} and set(curve.pre_head) == {"finetuned"}
    assert set(curve[curve.finetuning == "mild"].steps) == {3}
    gaps = tables.interpolation_gaps(curve)
    assert len(gaps) == 2 and (gaps.iid_acc_gap_max >= gaps.iid_acc_gap_mean).all()
    (mild,) = (tmp_path / "trained" / "mild").iterdir()
    assert (mild / "done").exists()


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
