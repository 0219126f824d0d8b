"""The paper profile end to end on a generated DomainBed tree and a torchvision weight file.

The weight file holds a random ResNet50 under the name of torchvision's IMAGENET1K_V2 file; its
BatchNorm statistics are randomised so that loading them (and keeping them frozen) shows.
"""

import pandas as pd
import pytest
import torch
import torchvision

from vldlib.__main__ import main
from vldlib.data import get_dataset
from vldlib.data.domainbed import decode_into_memory
from vldlib.data.transforms import train_transform
from vldlib.grids import RESNET50_V2
from vldlib.runs import RunDir, load_checkpoint
from vldlib.sweeps import run_status
from vldlib.train import StepBatches


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    torch.save(state, folder / RESNET50_V2)
    return folder


def test_fig2_sweep_runs_one_paper_run_and_collect_tables_it(pacs_dir, weights_dir, tmp_path):
    runs, tables = tmp_path / "runs", tmp_path / "tables"
    where = dict(dataset="PACS", test_env=3, dropout=0.9, lr=1e-3, weight_decay=1e-4, seed=0)
    small = dict(steps=2, lr_milestones=1, eval_every=2, image_size=32, batch_size_per_domain=4)
    fast = dict(cache_images="on", channels_last="on")  # the CUDA defaults, asked for on a CPU
    argv = ["sweep", "--grid", "fig2", "--runs-dir", str(runs), "--data-dir", str(pacs_dir)]
    argv += ["--weights", str(weights_dir)]
    argv += [a for k, v in where.items() for a in ("--where", f"{k}={v}")]
    argv += [a for k, v in (small | fast).items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0

    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    assert run.name.startswith("sketch_p0.9_s0_") and run_status(run) == "done"
    config = RunDir(run).stored_config()
    assert (config.backbone, config.weights) == (
        "torchvision/resnet50",
        str(weights_dir / RESNET50_V2),
    )
    trained = load_checkpoint(run / "checkpoint.pt")["model"]
    pretrained = torch.load(weights_dir / RESNET50_V2, weights_only=True)
    for key in ("bn1.running_mean", "layer4.2.bn3.running_var"):
        assert torch.equal(trained[key], pretrained[key]), key  # loaded, then kept frozen
    assert not torch.equal(trained["conv1.weight"], pretrained["conv1.weight"])  # and trained

    assert main(["collect", str(runs), "--out", str(tables)]) == 0
    table = pd.read_csv(tables / "fig2.csv")
    row = table[(table.method == "model") & (table.test_domain == "sketch")].iloc[0]
    assert (row.dataset, row.dropout, row.runs, row.seeds) == ("PACS", 0.9, 1, 1)
    assert (tables / "fig2.md").read_text().startswith("# Fig. 2")


def test_images_decoded_into_memory_give_the_same_batches(pacs_dir):
    data = get_dataset("PACS", pacs_dir)
    pools = [(env, list(range(10))) for env in data.envs[:3]]
    steps = StepBatches(pools, 4, train_transform(24, 3), seed=0)
    from_disk = [steps[t] for t in range(3)]
    assert not decode_into_memory(pools, budget_bytes=1000)  # too big: nothing is kept
    assert all(not env.decoded for env in data.envs)
    assert decode_into_memory(pools)
    assert isinstance(data.envs[0][0][0], torch.Tensor) and len(data.envs[0].decoded) == 10
    for (x, y), (x_disk, y_disk) in zip([steps[t] for t in range(3)], from_disk, strict=True):
        assert torch.equal(x, x_disk) and torch.equal(y, y_disk)
