"""From-scratch runs (Fig. 5): their configs, a smoke run through the sweep launcher."""

import json

import pytest
import torch

from vldlib.analysis.scratch import SCRATCH_DROPOUTS, run_scratch, scratch_configs
from vldlib.errors import ConfigError
from vldlib.runs import load_checkpoint


def test_configs_start_from_random_weights_with_live_batchnorm() -> None:
    configs = scratch_configs("cpu", seeds=[0, 1], test_envs=[0, 3])
    assert len(configs) == 2 * 2 * len(SCRATCH_DROPOUTS)
    assert {c.dropout for c in configs} == set(SCRATCH_DROPOUTS)
    assert all(c.weights is None and not c.freeze_bn for c in configs)
    assert {c.lr for c in configs} == {1e-2}  # the profile's
    two = scratch_configs("cpu", seeds=[0], test_envs=[0], dropouts=[0.0], lrs=[5e-3, 1e-2])
    assert [c.lr for c in two] == [5e-3, 1e-2]


def test_weights_and_freeze_bn_are_fixed() -> None:
    with pytest.raises(ConfigError, match="weights cannot be overridden"):
        scratch_configs("smoke", seeds=[0], test_envs=[0], weights="rich")
    with pytest.raises(ConfigError, match="unknown config key"):
        scratch_configs("smoke", seeds=[0], test_envs=[0], dropuot=0.5)


def test_smoke_runs_and_rereads(tmp_path) -> None:
    configs = scratch_configs("smoke", seeds=[0], test_envs=[1], dropouts=[0.0, 0.9])
    table = run_scratch(configs, tmp_path, progress=False)
    assert list(table.dropout) == [0.0, 0.9] and set(table.test_domain) == {"sketch"}
    assert table[["iid_acc", "ood_acc"]].stack().between(0, 1).all()
    folder = next(tmp_path.glob("sketch_p0_s0_*"))
    assert json.loads((folder / "config.json").read_text())["config"]["weights"] is None
    state = load_checkpoint(folder / "checkpoint.pt")["model"]
    assert state["stem.1.running_mean"].abs().sum() > 0  # statistics moved from their init, 0
    assert not torch.equal(state["stem.1.running_var"], torch.ones(16))
    assert run_scratch(configs, tmp_path, progress=False).equals(table)  # read, not redone
