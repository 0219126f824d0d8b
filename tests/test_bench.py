"""The benchmark's measurements on a tiny config: what it reports, never how fast (CPU)."""

import pytest
import torch
from torch import nn

from vldlib.__main__ import main
from vldlib.bench import bench, report, step_flops, write_stand_in
from vldlib.config import make_config
from vldlib.data import get_dataset
from vldlib.train import fast_path

KEYS = {
    "backbone", "resolution", "batch", "steps", "device", "threads", "fast_path", "data_source",
    "loop_img_s", "bare_img_s", "loop_over_bare", "data_img_s", "data_over_loop",
    "gflop_per_img", "achieved_tflop_s", "peak_tflop_s", "peak_fraction",
}  # fmt: skip


def test_bench_reports_every_rate_and_their_ratios():
    r = bench("vldnet", 16, batch=6, steps=2, warmup=1, dataset="Debug", train_domain_size=None)
    assert set(r) == KEYS
    assert (r["device"], r["batch"]) == ("cpu", 6) and r["fast_path"].startswith("fast path: off")
    for key in ("loop_img_s", "bare_img_s", "data_img_s", "gflop_per_img", "peak_tflop_s"):
        assert r[key] > 0, key
    assert r["loop_over_bare"] == pytest.approx(r["loop_img_s"] / r["bare_img_s"])
    assert r["data_over_loop"] == pytest.approx(r["data_img_s"] / r["loop_img_s"])
    achieved = r["gflop_per_img"] * 1e9 * r["loop_img_s"]
    assert r["achieved_tflop_s"] * 1e12 == pytest.approx(achieved)
    assert r["peak_fraction"] == pytest.approx(r["achieved_tflop_s"] / r["peak_tflop_s"])
    lines = report(r).splitlines()
    assert [line.split()[0] for line in lines] == [
        "vldnet", "loop", "bare", "loop", "data", "data:", "FLOPs",
    ]  # fmt: skip


def test_step_flops_counts_forward_and_backward():
    """Each linear layer costs 2·B·in·out forward, as much again for its weight's gradient and,
    but for the first (the input needs none), for its input's gradient."""
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 5))
    x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    fast = fast_path(make_config("smoke"), torch.device("cpu"))
    assert step_flops(model, x, y, fast) == 2 * (2 * 4 * 8 * 6) + 3 * (2 * 4 * 6 * 5)
    assert model[0].weight.grad is None  # the count leaves no gradient behind


def test_stand_in_tree_is_a_valid_domainbed_dataset(tmp_path):
    data = get_dataset("VLCS", write_stand_in(tmp_path, "VLCS", per_class=1))
    assert [len(env) for env in data.envs] == [5] * 4
    assert data.envs[0][0][0].size == (227, 227)


def test_bench_cli_rejects_a_batch_the_domains_cannot_share(capsys):
    argv = ["bench", "--backbone", "vldnet", "--batch", "7", "--set", "dataset=Debug"]
    argv += ["--set", "train_domain_size=none"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --batch must be a multiple of 2 (training domains)"
