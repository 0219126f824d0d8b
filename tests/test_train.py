"""The fine-tuning loop and the run contract, end to end on generated data (CPU)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from vldlib.backbones import VLDNet, save_weights
from vldlib.config import make_config
from vldlib.errors import RunError
from vldlib.runs import RunDir, load_checkpoint
from vldlib.train import train

TIMING = ("s_per_step", "s_baselines")


def _metrics(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def test_end_to_end_on_generated_domainbed_tree_beats_chance(pacs_dir, tmp_path):
    config = make_config(
        "paper",
        dataset="PACS",
        data_dir=str(pacs_dir),
        backbone="vldnet",
        image_size=32,
        test_env=3,
        dropout=0.5,
        steps=60,
        lr=0.05,
        lr_milestones=(40,),
        eval_every=20,
        batch_size_per_domain=16,
        augment=False,
        freeze_bn=False,  # from a random init, frozen statistics (mean 0, var 1) fit nothing
    )
    final = train(config, tmp_path / "run", progress=False)
    assert final["test_domain"] == "sketch"
    assert final["iid_acc"] > 0.5 and final["ood_acc"] > 0.3  # chance is 1/7 = 0.14
    run = RunDir(tmp_path / "run")
    assert run.is_done()
    records = [r for r in run.records() if not r.get("final")]
    assert [r["step"] for r in records] == [20, 40, 60]
    assert set(records[0]["acc"]) == {"art_painting", "cartoon", "photo", "sketch"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["hash"] == config.hash()


def _debug_config(**kw):
    base = dict(dataset="Debug", weights=None, test_domain_size=20, steps=12, eval_every=4)
    return make_config("smoke", **(base | kw))


def test_same_seed_same_results_and_other_seed_differs(tmp_path):
    a = train(_debug_config(), tmp_path / "a", progress=False)
    b = train(_debug_config(), tmp_path / "b", progress=False)
    assert _metrics(RunDir(tmp_path / "a").records()) == _metrics(RunDir(tmp_path / "b").records())
    assert a == b
    train(_debug_config(seed=1), tmp_path / "c", progress=False)

    def losses(name):
        return [r["train_loss"] for r in RunDir(tmp_path / name).records() if "train_loss" in r]

    assert losses("c") != losses("a")


def test_frozen_bn_run_keeps_pretrained_statistics(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "w.safetensors"
    save_weights(VLDNet(num_classes=4, in_chans=3), weights)
    train(_debug_config(weights=str(weights)), tmp_path / "run", progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["model"]
    src = VLDNet(num_classes=4, in_chans=3)
    from vldlib.backbones import load_weights

    load_weights(src, weights)
    for k, v in src.state_dict().items():
        if "running" in k:
            assert torch.equal(v, state[k]), k


def test_finished_run_is_not_redone_or_overwritten(tmp_path):
    first = train(_debug_config(), tmp_path / "run", progress=False)
    mtime = (tmp_path / "run" / "results.jsonl").stat().st_mtime_ns
    assert train(_debug_config(), tmp_path / "run", progress=False) == first
    assert (tmp_path / "run" / "results.jsonl").stat().st_mtime_ns == mtime
    with pytest.raises(RunError, match="another config"):
        train(_debug_config(lr=0.5), tmp_path / "run", progress=False)
    train(_debug_config(lr=0.5), tmp_path / "run", overwrite=True, progress=False)
    assert RunDir(tmp_path / "run").stored_config().lr == 0.5


def _cli(out, steps=40):
    return [
        sys.executable, "-m", "vldlib", "train", "--profile", "smoke", "--dataset", "Debug",
        "--weights", "none", "--test-domain-size", "20", "--steps", str(steps),
        "--eval-every", "4", "--lr-milestones", "20", "--output-dir", str(out), "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_to_identical_results(tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cli(ref), check=True, capture_output=True)

    proc = subprocess.Popen(_cli(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a few checkpoints exist, mid-run
        if (killed / "results.jsonl").exists():
            if len((killed / "results.jsonl").read_text().splitlines()) >= 3:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "done").exists(), "the run finished before it could be killed"

    subprocess.run(_cli(killed), check=True, capture_output=True)
    assert _metrics(RunDir(killed).records()) == _metrics(RunDir(ref).records())
    a = load_checkpoint(ref / "checkpoint.pt")["model"]
    b = load_checkpoint(killed / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit


def test_smoke_profile_runs_on_the_embedded_benchmark_with_shipped_weights(tmp_path):
    """The committed rich backbone loads into the smoke profile's run (AnimalStyles, offline)."""
    from vldlib.backbones import resolve_weights
    from vldlib.pretrain import read_card

    card = read_card(resolve_weights("rich"))
    assert card["n_classes"] == 72 and card["test_accuracy"] > 0.5
    final = train(make_config("smoke", test_env=1), tmp_path / "run", progress=False)
    assert final["test_domain"] == "sketch" and 0.0 <= final["ood_acc"] <= 1.0
    assert RunDir(tmp_path / "run").is_done()


# --- the fast path: off on a CPU by default, results within seed noise when asked for


def test_fast_path_is_on_for_cuda_and_off_for_cpu_by_default():
    from vldlib.train import CUDA_EVAL_BATCH, fast_path

    config = make_config("paper")
    cpu = fast_path(config, torch.device("cpu"))
    assert (cpu.amp, cpu.channels_last, cpu.compile, cpu.cache_images) == (False,) * 4
    assert (cpu.num_workers, cpu.pin_memory, cpu.eval_batch_size) == (0, False, 256)
    cuda = fast_path(config, torch.device("cuda"))  # resolving needs no GPU
    assert (cuda.amp, cuda.channels_last, cuda.cache_images, cuda.pin_memory) == (True,) * 4
    assert cuda.num_workers >= 0 and cuda.eval_batch_size == CUDA_EVAL_BATCH
    asked = make_config("paper", amp="bf16", channels_last="on", num_workers=2)
    asked = fast_path(asked, torch.device("cpu"))
    assert (asked.amp, asked.channels_last, asked.num_workers) == (True, True, 2)
    off = fast_path(make_config("paper", amp="off", cache_images="off"), torch.device("cuda"))
    assert not off.amp and not off.cache_images and off.channels_last


def test_execution_fields_leave_the_run_hash_alone():
    fast = dict(amp="bf16", channels_last="on", compile=True, cache_images="on", num_workers=3)
    assert make_config("cpu", **fast).hash() == make_config("cpu").hash()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("amp", "fp16", "amp must be one of auto, bf16, off, got 'fp16'"),
        ("channels_last", "yes", "channels_last must be one of auto, on, off"),
        ("cache_images", "true", "cache_images must be one of auto, on, off"),
        ("compile", "maybe", "compile expects a bool"),
    ],
)
def test_bad_fast_path_value_is_one_clear_line(tmp_path, capsys, key, value, message):
    from vldlib.__main__ import main

    argv = ["train", "--profile", "smoke", f"--{key.replace('_', '-')}", value]
    assert main([*argv, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_on_cpu_stays_within_seed_noise(tmp_path):
    """bf16 autocast (CPU autocast here, CUDA's on a GPU) changes the losses, by far less than
    another seed does; with channels_last as well, the same."""

    def losses(name, **kw):
        train(_debug_config(**kw), tmp_path / name, progress=False)
        records = RunDir(tmp_path / name).records()
        return torch.tensor([r["train_loss"] for r in records if "train_loss" in r])

    fp32, other_seed = losses("fp32"), losses("seed1", seed=1)
    bf16, fast = losses("bf16", amp="bf16"), losses("fast", amp="bf16", channels_last="on")
    seed_noise = (other_seed - fp32).abs().max()
    for run in (bf16, fast):
        assert not torch.equal(run, fp32)  # autocast did run
        assert (run - fp32).abs().max() < seed_noise / 10
