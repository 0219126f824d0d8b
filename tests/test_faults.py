"""Fault injection: every bad input or crash ends with one clear VldlibError (CLI: one `error:`
line, exit 2) and leaves nothing that looks finished. CPU, the Debug dataset, tiny sizes."""

import ast
import json
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import make_pacs_tree

import vldlib
import vldlib.train
from vldlib.__main__ import main
from vldlib.backbones import VLDNet, read_state_dict, save_weights
from vldlib.config import make_config
from vldlib.data import get_dataset
from vldlib.errors import ConfigError, DataError, RunError, WeightsError
from vldlib.runs import RunDir, load_checkpoint, read_records
from vldlib.train import build_splits, train

SOURCES = sorted(Path(vldlib.__file__).parent.rglob("*.py"))
DEBUG = get_dataset("Debug")


def _tiny(**kw):
    """A Debug run of 6 steps at 8x8 pixels, evaluated every 2: seconds on two cores."""
    base = dict(
        dataset="Debug",
        weights=None,
        image_size=8,
        train_domain_size=20,
        test_domain_size=8,
        batch_size_per_domain=4,
        steps=6,
        eval_every=2,
    )
    return make_config("smoke", **(base | kw))


def _pacs(data_dir, **kw):
    base = dict(
        dataset="PACS",
        data_dir=None if data_dir is None else str(data_dir),
        backbone="vldnet",
        weights=None,
        image_size=16,
        steps=2,
        eval_every=2,
        batch_size_per_domain=4,
    )
    return make_config("paper", **(base | kw))


def _metrics(records):
    """Records without their timing fields."""
    return [{k: v for k, v in r.items() if not k.startswith("s_")} for r in records]


def _model_steps(run: Path) -> list[int]:
    records = read_records(run / "results.jsonl")
    return [r["step"] for r in records if r["method"] == "model" and not r.get("final")]


def _assert_nothing_left(out: Path) -> None:
    assert not (out / "done").exists(), "a failed run is marked done"
    assert not out.exists(), f"an input error left a run folder behind: {sorted(os.listdir(out))}"


# ----------------------------------------------------------------------------------------------
# 1. data


def _no_data_dir(tmp):
    return None


def _missing_data_dir(tmp):
    return tmp / "nowhere"


def _empty_data_dir(tmp):
    (tmp / "data").mkdir()
    return tmp / "data"


def _tree(tmp):
    return make_pacs_tree(tmp / "data", per_class=1, size=8)


def _domain_folder_missing(tmp):
    root = _tree(tmp)
    shutil.rmtree(root / "PACS" / "cartoon")
    return root


def _domain_without_images(tmp):
    root = _tree(tmp)
    for image in (root / "PACS" / "sketch").rglob("*.*"):
        image.unlink()
    return root


def _classes_differ(tmp):
    root = _tree(tmp)
    (root / "PACS" / "photo" / "house").rename(root / "PACS" / "photo" / "houses")
    return root


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (_no_data_dir, r"needs a data directory: pass data_dir \(CLI: --data-dir DIR\)"),
        (_missing_data_dir, r"data directory .*nowhere does not exist; pass the folder"),
        (_empty_data_dir, r"PACS not found: expected .*data/PACS .*download script"),
        (_domain_folder_missing, r"domain folder .*cartoon is missing .*restore that folder"),
        (_domain_without_images, r"sketch holds no images .*download or extract"),
        (_classes_differ, r"'photo' lacks \['house'\] and has extra \['houses'\]"),
    ],
)
def test_bad_data_dir_fails_before_any_file_is_written(tmp_path, break_it, message):
    data_dir = break_it(tmp_path)
    with pytest.raises(DataError, match=message):
        train(_pacs(data_dir), tmp_path / "run", progress=False)
    _assert_nothing_left(tmp_path / "run")


def _cut(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_corrupt_image_is_named_at_read_time_and_listed_by_verify(tmp_path, capsys):
    root = make_pacs_tree(tmp_path / "data", per_class=2, size=16)
    broken = root / "PACS" / "art_painting" / "dog" / "0.jpg"  # held out (test_env 0): read first
    _cut(broken)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"cannot read image .*art_painting/dog/0\.jpg.*--verify"):
        train(_pacs(root), out, progress=False)
    assert not (out / "done").exists() and not (out / "checkpoint.pt").exists()
    assert RunDir(out).prepare(_pacs(root)) == "new"  # once the file is fixed, the run starts

    capsys.readouterr()
    assert main(["datasets", "--verify", "PACS", "--data-dir", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(broken), "1 unreadable image(s)"]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_corrupt_training_image_mid_run_is_one_clear_line(tmp_path, num_workers):
    """A training image is read at its step, in a DataLoader worker when num_workers > 0."""
    root = make_pacs_tree(tmp_path / "data", per_class=2, size=16)
    config = _pacs(root, num_workers=num_workers, batch_size_per_domain=16)  # step 1 reads all
    env, pool = build_splits(config, get_dataset("PACS", root))[0][0]
    broken = Path(env.paths[int(pool[0])])  # in a training pool, not a validation split
    _cut(broken)
    with pytest.raises(DataError) as info:
        train(config, tmp_path / "run", progress=False)
    message = str(info.value)
    assert str(broken) in message and "--verify" in message
    assert "Traceback" not in message and "\n" not in message, message[:300]
    assert not (tmp_path / "run" / "done").exists()


# ----------------------------------------------------------------------------------------------
# 2. names


def test_unknown_dataset_fails_before_any_file_is_written(tmp_path):
    with pytest.raises(DataError, match=r"unknown dataset 'PAC'; choose one of PACS, VLCS"):
        train(_tiny(dataset="PAC"), tmp_path / "run", progress=False)
    _assert_nothing_left(tmp_path / "run")


def test_out_of_range_test_env_lists_the_domains(tmp_path):
    with pytest.raises(ConfigError, match=r"test_env 7 is out of range .*0=debug0, 1=debug1"):
        train(_tiny(test_env=7), tmp_path / "run", progress=False)
    _assert_nothing_left(tmp_path / "run")


def _cli_train(out: Path, *extra: str, dataset: bool = True) -> list[str]:
    """``train`` on Debug at a size that fits it; later flags in ``extra`` win."""
    return [
        "train", "--profile", "smoke", *(["--dataset", "Debug"] if dataset else []),
        "--weights", "none", "--test-domain-size", "20",
        "--output-dir", str(out), "--no-progress", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--test-env", "debug9"), "error: Debug has no domain 'debug9'; valid domains: 0=debug0"),
        (("--test-env", "7"), "error: test_env 7 is out of range for Debug"),
        (("--profile", "gpu"), "error: unknown profile 'gpu'; valid profiles: paper, cpu, smoke"),
    ],
)
def test_cli_bad_name_is_one_error_line(tmp_path, capsys, extra, message):
    assert main(_cli_train(tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(message), err[-500:]
    assert "Traceback" not in err
    _assert_nothing_left(tmp_path / "run")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "gpu"], "unknown profile 'gpu'"),
        (["--dropouts", "0,fast"], "dropouts"),
        (["--seeds", "0,a"], "seeds"),
    ],
)
def test_cli_benchmark_bad_argument_is_one_line(tmp_path, capsys, monkeypatch, extra, message):
    """The sweep command: a typo must stop it before any of its runs starts."""
    monkeypatch.setattr("vldlib.data.get_dataset", lambda name, data_dir=None: DEBUG)
    monkeypatch.setattr("vldlib.sweeps.run_local", pytest.fail)
    runs = tmp_path / "runs"
    argv = ["benchmark", "--profile", "smoke", "--test-envs", "0", "--runs-dir", str(runs)]
    assert main([*argv, *extra]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not runs.exists()


def test_cli_unknown_flag_is_refused_by_argparse(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(_cli_train(tmp_path / "run", "--learning-rate", "1"))
    assert info.value.code == 2
    assert "unrecognized arguments: --learning-rate 1" in capsys.readouterr().err
    _assert_nothing_left(tmp_path / "run")


def test_unknown_backbone_fails_before_any_file_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown backbone 'resnet9000': use 'vldnet'"):
        train(_tiny(backbone="resnet9000"), tmp_path / "run", progress=False)
    _assert_nothing_left(tmp_path / "run")


# ----------------------------------------------------------------------------------------------
# 3. values (a notebook's papermill parameters reach make_config as they are)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\) .*got -0.1"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\) .*got 1.0"),
        (dict(dropout=1.5), r"dropout must be in \[0, 1\) .*got 1.5"),
        (dict(dropout="0.9"), r"dropout must be of type float, got '0.9'"),
        (dict(steps=-5), r"steps must be > 0, got -5"),
        (dict(steps=100.0), r"steps must be of type int, got 100.0"),
        (dict(lr=True), r"lr must be of type float, got True"),
        (dict(freeze_bn="false"), r"freeze_bn must be of type bool, got 'false'"),
        (dict(test_env="photo"), r"test_env must be of type int, got 'photo'"),
        (dict(lr_milestones=5000), r"lr_milestones must be a list of ints, got 5000"),
        (dict(lr=float("nan")), r"lr must be .*got nan"),
        (dict(lr=float("inf")), r"lr must be .*got inf"),
        (dict(weight_decay=float("nan")), r"weight_decay must be .*got nan"),
        (dict(momentum=float("inf")), r"momentum must be .*got inf"),
    ],
    ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict) else "msg",
)
def test_bad_value_is_a_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config("paper", **overrides)


# ----------------------------------------------------------------------------------------------
# 4. weights


def _missing(tmp):
    return tmp / "missing.pth"


def _truncated_safetensors(tmp):
    path = tmp / "w.safetensors"
    save_weights(VLDNet(num_classes=2, in_chans=3), path)
    _cut(path, path.stat().st_size // 2)
    return path


def _truncated_pth(tmp):
    path = tmp / "w.pth"
    torch.save(VLDNet(num_classes=2, in_chans=3).state_dict(), path)
    _cut(path, path.stat().st_size // 2)
    return path


def _resnet18(tmp):
    path = tmp / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, r"weights file .*missing\.pth does not exist: give the path of a local file"),
        (_truncated_safetensors, r"cannot read weights file .*w\.safetensors.*truncated"),
        (_truncated_pth, r"cannot read weights file .*w\.pth.*truncated"),
        (_resnet18, r"resnet18\.pth does not fit the VLDNet backbone: .*missing keys"),
    ],
)
def test_bad_weights_file_fails_before_any_file_is_written(tmp_path, make, message):
    weights = make(tmp_path)
    with pytest.raises(WeightsError, match=message):
        train(_tiny(weights=str(weights)), tmp_path / "run", progress=False)
    _assert_nothing_left(tmp_path / "run")


def test_rerun_with_the_input_fixed_is_not_refused(tmp_path):
    """After a typo in --weights, the corrected command must be able to use the same folder."""
    out = tmp_path / "run"
    with pytest.raises(WeightsError):
        train(_tiny(weights=str(tmp_path / "typo.safetensors")), out, progress=False)
    assert RunDir(out).prepare(_tiny()) == "new"  # RunError "another config" if it was left


# ----------------------------------------------------------------------------------------------
# 5. security


class _Touch:
    """Unpickling this creates ``marker``: code execution, which a loader must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_save(obj, path):
    torch.save({"model": {"w": torch.zeros(1)}, "payload": obj}, path)


def _pickle_dump(obj, path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_crafted_pickle_payload_is_live(tmp_path):
    """Control: the payload does run when unpickled without weights_only."""
    marker = tmp_path / "control"
    _torch_save(_Touch(marker), tmp_path / "evil.pth")
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", [_Touch, _System])
@pytest.mark.parametrize("save", [_torch_save, _pickle_dump])
@pytest.mark.parametrize(
    ("load", "suffix", "message"),
    [
        (read_state_dict, ".pth", r"cannot read weights file .*pickle that needs code"),
        (read_state_dict, ".safetensors", r"cannot read weights file .*evil\.safetensors"),
        (load_checkpoint, ".pth", r"cannot read checkpoint .*evil\.pth.*Delete it"),
    ],
)
def test_crafted_pickle_is_refused_and_never_runs(tmp_path, payload, save, load, suffix, message):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    save(payload(marker), path)
    with pytest.raises(WeightsError, match=message):
        load(path)
    assert not marker.exists(), "loading the file ran its code"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func), {k.arg: k.value for k in node.keywords}


def test_sources_run_no_shell_and_unpickle_no_code():
    assert SOURCES, "no sources found"
    found = []
    for path in SOURCES:
        text = path.read_text()
        for pattern in (r"shell\s*=\s*True", r"\bos\.system\b", r"\bos\.popen\b"):
            found += [f"{path.name}: {pattern}" for _ in re.finditer(pattern, text)]
        for node, name, kwargs in _calls(ast.parse(text)):
            where = f"{path.name}:{node.lineno} {name}("
            if name in ("eval", "exec", "builtins.eval", "builtins.exec", "compile"):
                found.append(where)
            weights_only = kwargs.get("weights_only")
            if name == "torch.load" and not (
                isinstance(weights_only, ast.Constant) and weights_only.value is True
            ):
                found.append(where + " without weights_only=True")
            allow = kwargs.get("allow_pickle")
            if name.endswith("np.load") and isinstance(allow, ast.Constant) and allow.value:
                found.append(where + " allow_pickle=True")
    assert found == []


# ----------------------------------------------------------------------------------------------
# 6. non-finite loss


class _Inject:
    """Wraps F.cross_entropy (called once per training step, never by evaluation)."""

    def __init__(self, at: int, fault) -> None:
        self.at, self.fault, self.calls = at, fault, 0
        self.original = torch.nn.functional.cross_entropy

    def __call__(self, *args, **kwargs):
        self.calls += 1
        loss = self.original(*args, **kwargs)
        return self.fault(loss) if self.calls >= self.at else loss


class _InfGrad(torch.autograd.Function):
    """The loss unchanged, its gradient infinite: a finite loss whose update overflows."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def _is_finite(state):
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(vldlib.train.F, "cross_entropy", _Inject(5, lambda loss: loss * torch.nan))
    out, message = tmp_path / "run", r"non-finite loss \(nan\) at step 5; .*checkpoint \(step 4\)"
    with pytest.raises(RunError, match=message):
        train(_tiny(), out, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 4 and _is_finite(state["model"])
    assert _model_steps(out) == [2, 4]
    assert not (out / "done").exists()


def test_nan_loss_before_any_checkpoint_claims_none(tmp_path, monkeypatch):
    monkeypatch.setattr(vldlib.train.F, "cross_entropy", _Inject(1, lambda loss: loss * torch.nan))
    out = tmp_path / "run"
    with pytest.raises(RunError, match=r"non-finite loss \(nan\) at step 1") as info:
        train(_tiny(), out, progress=False)
    assert not (out / "checkpoint.pt").exists() and not (out / "done").exists()
    assert "checkpoint (step 0) is kept" not in str(info.value), "it claims a checkpoint it lacks"


def test_non_finite_update_at_an_eval_step_is_not_checkpointed(tmp_path, monkeypatch):
    """Step 4's loss is finite but its gradient is not: the step-4 weights are not good."""
    monkeypatch.setattr(vldlib.train.F, "cross_entropy", _Inject(4, _InfGrad.apply))
    out = tmp_path / "run"
    with pytest.raises(RunError, match="non-finite"):
        train(_tiny(), out, progress=False)
    state = load_checkpoint(out / "checkpoint.pt")
    assert _is_finite(state["model"]), f"the checkpoint of step {state['step']} holds NaN/inf"
    assert state["step"] == 2
    assert _model_steps(out) == [2]
    assert not (out / "done").exists()


# ----------------------------------------------------------------------------------------------
# 7. crash residue


class _Killed(BaseException):
    """Stands in for SIGKILL or a pre-emption: no except clause of the library catches it."""


def _kill(loss):
    raise _Killed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished reference run, and the same run killed during step 5 (checkpoint at step 4)."""
    root = tmp_path_factory.mktemp("runs")
    train(_tiny(), root / "ref", progress=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vldlib.train.F, "cross_entropy", _Inject(5, _kill))
        with pytest.raises(_Killed):
            train(_tiny(), root / "killed", progress=False)
    assert load_checkpoint(root / "killed" / "checkpoint.pt")["step"] == 4
    return root


def test_cut_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    good = [{"step": 2, "iid_acc": 0.5}, {"step": 4, "iid_acc": 0.75}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 6, "iid_a')
    with caplog.at_level("WARNING", logger="vldlib.runs"):
        assert read_records(path) == good
    assert "skipped 1 unreadable line" in caplog.text


def _cut_record(run: Path) -> None:  # killed while appending the step-6 record
    with open(run / "results.jsonl", "a") as f:
        f.write('{"acc": {"debug1": 0.5}, "iid_acc": 0.5, "lr": 0.0')


def _whole_record_after_checkpoint(run: Path) -> None:  # killed after appending, before saving
    with open(run / "results.jsonl", "a") as f:
        f.write(json.dumps({"step": 6, "method": "model", "iid_acc": 1.0, "ood_acc": 1.0}) + "\n")


def _half_saved_checkpoint(run: Path) -> None:  # killed while writing the next checkpoint
    data = (run / "checkpoint.pt").read_bytes()
    (run / ".checkpoint.pt.tmp").write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "residue", [_cut_record, _whole_record_after_checkpoint, _half_saved_checkpoint]
)
def test_resume_over_crash_residue_equals_an_uninterrupted_run(runs, tmp_path, residue):
    run = tmp_path / "run"
    shutil.copytree(runs / "killed", run)
    residue(run)
    final = train(_tiny(), run, progress=False)
    lines = (run / "results.jsonl").read_text().splitlines()
    assert all(isinstance(json.loads(line), dict) for line in lines)  # whole again
    assert _metrics(read_records(run / "results.jsonl")) == _metrics(
        read_records(runs / "ref" / "results.jsonl")
    )
    assert final == RunDir(runs / "ref").final_record()
    assert (run / "done").exists() and not (run / ".checkpoint.pt.tmp").exists()


def test_killed_between_final_record_and_done_marker(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "ref", run)
    (run / "done").unlink()
    train(_tiny(), run, progress=False)
    records = read_records(run / "results.jsonl")
    assert _metrics(records) == _metrics(read_records(runs / "ref" / "results.jsonl"))
    assert records[-1]["final"] and _model_steps(run) == [2, 4, 6]  # finals once, at the end
    assert (run / "done").exists()


def test_corrupt_checkpoint_is_named_and_results_are_kept(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "killed", run)
    _cut(run / "checkpoint.pt", 100)
    before = (run / "results.jsonl").read_bytes()
    with pytest.raises(WeightsError, match=r"cannot read checkpoint .*checkpoint\.pt.*Delete it"):
        train(_tiny(), run, progress=False)
    assert (run / "results.jsonl").read_bytes() == before
    assert not (run / "done").exists()


# ----------------------------------------------------------------------------------------------
# 8. the command line, as a user runs it (one process each, started together)

CLI_FAULTS = {  # name: (flags, start of the last stderr line, whether to pass --dataset Debug)
    "value that does not parse": (["--lr", "fast"], "error: lr expects a float, got 'fast'", 1),
    "missing data dir": (
        ["--dataset", "PACS", "--data-dir", "{tmp}/nowhere"],
        "error: data directory {tmp}/nowhere does not exist",
        1,
    ),
    "missing weights": (
        ["--weights", "{tmp}/missing.pth"],
        "error: weights file {tmp}/missing.pth does not exist",
        1,
    ),
    "unknown profile and a domain name": (
        ["--profile", "gpu", "--test-env", "photo"],
        "error: unknown profile 'gpu'",
        0,
    ),
}


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    procs = {}
    for name, (args, _, dataset) in CLI_FAULTS.items():
        out = tmp / name.replace(" ", "_")
        argv = _cli_train(out, *(a.format(tmp=tmp) for a in args), dataset=bool(dataset))
        procs[name] = (
            out,
            subprocess.Popen(
                [sys.executable, "-m", "vldlib", *argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=Path(vldlib.__file__).parent.parent,
            ),
        )
    results = {}
    for name, (out, proc) in procs.items():
        _, err = proc.communicate(timeout=180)
        results[name] = (proc.returncode, err, out)
    return tmp, results


@pytest.mark.parametrize("fault", list(CLI_FAULTS))
def test_cli_fault_is_one_error_line_and_exit_2(cli_results, fault):
    tmp, results = cli_results
    code, err, out = results[fault]
    assert "Traceback" not in err, err[-1500:]
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith(CLI_FAULTS[fault][1].format(tmp=tmp)), last
    _assert_nothing_left(out)
