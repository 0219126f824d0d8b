"""Grids as data, the launchers, and relaunching a sweep after a crash (CPU, smoke sizes)."""

import shutil

import pytest

import vldlib.train
from vldlib.__main__ import main
from vldlib.collect import read_combined
from vldlib.config import make_config
from vldlib.grids import GRIDS, LRS, PAPER_DATASETS, SEEDS, WEIGHT_DECAYS, Grid
from vldlib.runs import RunDir, load_checkpoint, read_records
from vldlib.sweeps import (
    combine_grid,
    grid,
    run_dir,
    run_local,
    run_parallel,
    run_status,
    submit_slurm,
)

TIMING = ("s_per_step", "s_baselines")


def _metrics(folder):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_records(folder)]


def test_cpu_grid_is_the_benchmark_grid():
    """Same configs, hashes and folder names as the runs that results/cpu holds."""
    ours = GRIDS["cpu"].configs()
    benchmark = grid("cpu", [0, 1, 2, 3, 4], [0.0, 0.9], [0, 1, 2, 3])
    assert ours == benchmark
    assert [run_dir("r", c) for c in ours] == [run_dir("r", c) for c in benchmark]
    assert run_dir("r", ours[0]).name == "silhouette_p0_s0_e36b6be8bedc"


def test_paper_grids_are_the_papers_protocol():
    fig2 = GRIDS["fig2"].configs()
    n_domains = 4
    assert len(fig2) == len(PAPER_DATASETS) * n_domains * 2 * len(LRS) * len(WEIGHT_DECAYS) * 3
    assert len({c.hash() for c in fig2}) == len(fig2)  # every run has its own folder
    assert {(c.lr, c.weight_decay, c.seed) for c in fig2} == {
        (lr, wd, s) for lr in LRS for wd in WEIGHT_DECAYS for s in SEEDS
    }
    assert {c.weights for c in fig2} == {"resnet50-11ad3fa6.pth"}
    assert {c.steps for c in fig2} == {10_000} and {c.dropout for c in fig2} == {0.0, 0.9}
    # grids share runs: Fig. 3 holds every run of Fig. 2, Fig. 8 every V2 naive run of Fig. 2
    fig3 = {c.hash() for c in GRIDS["fig3"].configs()}
    assert {c.hash() for c in fig2} < fig3
    fig8 = GRIDS["fig8"].configs()
    naive_v2 = {c.hash() for c in fig8 if c.dropout == 0 and c.weights.endswith("11ad3fa6.pth")}
    assert naive_v2 == {c.hash() for c in fig2 if c.dropout == 0}
    assert {(c.dropout, c.last_layer_lr_factor) for c in fig8} == {(0.0, 1.0), (0.9, 10.0)}
    fig4 = GRIDS["fig4"].configs()
    assert {c.test_env for c in fig4} == set(range(6)) and {c.steps for c in fig4} == {30_000}


@pytest.mark.parametrize("name", list(GRIDS))
def test_each_grid_recognises_its_own_runs_only(name):
    configs = GRIDS[name].configs()
    assert all(GRIDS[name].matches(c.to_dict()) for c in configs)
    others = {"cpu": "smoke", "smoke": "cpu", "fig5": "fig2", "fig4": "fig2"}
    if name in others:
        assert not any(GRIDS[name].matches(c.to_dict()) for c in GRIDS[others[name]].configs())
    # a revised schedule keeps a run in its figure
    assert GRIDS[name].matches({**configs[0].to_dict(), "steps": 7, "lr_milestones": [3]})


class _Killed(BaseException):
    """A pre-emption: no except clause of the library catches it."""


SMOKE = Grid("t", "test", "smoke", {"test_env": (0, 1), "dropout": (0.0, 0.9), "seed": (0,)})


@pytest.fixture(scope="module")
def crashed_sweep(tmp_path_factory):
    """A smoke sweep of 4 runs: 2 finished, 1 killed after its step-3 checkpoint, 1 not started;
    and the same sweep run without interruption, for reference."""
    root, ref = tmp_path_factory.mktemp("sweep"), tmp_path_factory.mktemp("ref")
    configs = SMOKE.configs()
    run_local(configs, ref, progress=False)
    run_local(configs[:2], root, progress=False)
    original = vldlib.train.F.cross_entropy
    calls = []

    def killed_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise _Killed
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vldlib.train.F, "cross_entropy", killed_at_step_5)
        with pytest.raises(_Killed):
            run_local(configs[2:], root, progress=False)
    return root, ref, configs


def test_relaunch_redoes_only_the_unfinished_runs(crashed_sweep, tmp_path, capsys):
    root, ref, configs = crashed_sweep
    sweep = tmp_path / "sweep"
    shutil.copytree(root, sweep)
    folders = [run_dir(sweep, c) for c in configs]
    assert [run_status(f) for f in folders] == ["done", "done", "partial", "new"]
    assert load_checkpoint(RunDir(folders[2]).checkpoint_path)["step"] == 3
    before = {f: (f / "results.jsonl").read_bytes() for f in folders[:2]}
    done_mtime = {f: (f / "done").stat().st_mtime_ns for f in folders[:2]}

    argv = ["sweep", "--grid", "smoke", "--runs-dir", str(sweep), "--dry-run"]
    assert main(argv) == 0
    assert "4 runs in" in capsys.readouterr().out  # the registered smoke grid is SMOKE
    trained = []
    original = vldlib.train.train

    def spy(config, folder, **kw):
        trained.append(RunDir(folder).path.name)
        return original(config, folder, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vldlib.train, "train", spy)
        assert main(argv[:-1]) == 0
    assert trained == [folders[2].name, folders[3].name]  # only the unfinished ones
    for f in folders[:2]:
        assert (f / "results.jsonl").read_bytes() == before[f]
        assert (f / "done").stat().st_mtime_ns == done_mtime[f]
    for c, f in zip(configs, folders, strict=True):  # the resumed run ends as if never killed
        assert _metrics(f / "results.jsonl") == _metrics(run_dir(ref, c) / "results.jsonl")


def _debug_grid() -> list:
    base = dict(dataset="Debug", weights=None, image_size=8, test_domain_size=8, steps=4)
    return [make_config("smoke", test_env=t, seed=0, **base) for t in (0, 1)]


def test_slurm_launcher_on_submitits_local_executor(tmp_path):
    configs = _debug_grid()
    run_local(configs[:1], tmp_path, progress=False)  # already done: not submitted again
    jobs = submit_slurm(configs, tmp_path, gpus_per_job=0, timeout_min=5, cluster="local")
    assert len(jobs) == 1
    final = jobs[0].result()
    assert final == RunDir(run_dir(tmp_path, configs[1])).final_record()
    assert all(run_status(run_dir(tmp_path, c)) == "done" for c in configs)
    assert submit_slurm(configs, tmp_path, gpus_per_job=0, timeout_min=5, cluster="local") == []


def test_parallel_jobs_give_the_in_process_results(tmp_path):
    configs = _debug_grid()
    run_local(configs, tmp_path / "serial", progress=False)
    finals = run_parallel(configs, tmp_path / "parallel", jobs=2, progress=False)
    for c, final in zip(configs, finals, strict=True):
        serial = run_dir(tmp_path / "serial", c)
        assert _metrics(run_dir(tmp_path / "parallel", c) / "results.jsonl") == _metrics(
            serial / "results.jsonl"
        )
        assert final == RunDir(serial).final_record()


def test_a_group_that_gains_seeds_is_combined_again(tmp_path):
    base = dict(dataset="Debug", weights=None, image_size=8, test_domain_size=8, steps=4)
    configs = [make_config("smoke", test_env=0, seed=s, **base) for s in (0, 1)]
    run_local(configs, tmp_path, progress=False)
    one = combine_grid(configs[:1], tmp_path)
    assert set(one.n_models) == {1} and len(one) == 3
    two = combine_grid(configs, tmp_path)  # same (domain, λ) group, one more seed
    assert len(two) == 3 and set(two[two.method != "greedy_1x"].n_models) == {2}
    assert len(read_records(tmp_path / "combined.jsonl")) == 6
    combine_grid(configs, tmp_path)  # already computed for these runs: nothing appended
    assert len(read_records(tmp_path / "combined.jsonl")) == 6
    assert read_combined(tmp_path).equals(two)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--grid", "fig9"], "unknown grid 'fig9'; valid grids: cpu, smoke, fig2"),
        (["--grid", "smoke", "--set", "steps"], "--set expects KEY=VALUE"),
        (["--grid", "smoke", "--where", "speed=1"], "unknown config key 'speed'"),
        (["--grid", "fig2"], "pass --weights DIR, the folder that holds them"),
        (["--grid", "smoke", "--jobs", "0"], "--jobs must be >= 1"),
    ],
)
def test_sweep_bad_argument_is_one_line(tmp_path, capsys, extra, message):
    assert main(["sweep", "--runs-dir", str(tmp_path), "--dry-run", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
