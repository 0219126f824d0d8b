"""Weight vs representation interpolation (Fig. 1): the ends of both paths, runs, bad input."""

import shutil

import pytest
import torch

from vldlib.analysis import interpolation
from vldlib.analysis.models import load_finetuned
from vldlib.backbones import VLDNet, create_model
from vldlib.config import make_config
from vldlib.errors import ConfigError, RunError, WeightsError
from vldlib.runs import RunDir, save_checkpoint
from vldlib.train import train


@pytest.fixture(scope="module")
def pair() -> tuple[VLDNet, VLDNet, torch.Tensor]:
    torch.manual_seed(0)
    pre = VLDNet(num_classes=5, in_chans=1).eval()
    ft = VLDNet(num_classes=5, in_chans=1).eval()
    ft.load_state_dict(pre.state_dict())
    with torch.no_grad():
        for t in ft.state_dict().values():  # move weights and BatchNorm statistics alike
            if t.is_floating_point():
                t.mul_(1 + 0.3 * torch.rand_like(t))
    return pre, ft, torch.randn(4, 1, 28, 28)


def test_both_paths_reproduce_the_end_models(pair) -> None:
    pre, ft, x = pair
    with torch.no_grad():
        for alpha, end in ((0.0, ft), (1.0, pre)):
            expected = end(x)
            assert torch.allclose(interpolation.weight_interpolation(pre, ft, alpha)(x), expected)
            got = interpolation.representation_interpolation(pre, ft, alpha, x)
            assert torch.allclose(got, expected, atol=1e-5)
        # in between, a non-linear network makes the two paths differ
        mid_w = interpolation.weight_interpolation(pre, ft, 0.5)(x)
    mid_r = interpolation.representation_interpolation(pre, ft, 0.5, x)
    assert (mid_w - mid_r).abs().max() > 1e-3


def test_inputs_are_left_unchanged(pair) -> None:
    pre, ft, x = pair
    before = {k: v.clone() for k, v in ft.state_dict().items()}
    interpolation.weight_interpolation(pre, ft, 0.3)
    assert all(torch.equal(v, before[k]) for k, v in ft.state_dict().items())


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.5", True, float("nan")])
def test_alpha_outside_the_unit_interval_is_an_error(pair, alpha) -> None:
    pre, ft, x = pair
    with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\]"):
        interpolation.weight_interpolation(pre, ft, alpha)


def test_other_backbone_or_head_is_an_error(pair) -> None:
    pre, ft, x = pair
    with pytest.raises(WeightsError, match="different architectures"):
        interpolation.weight_interpolation(create_model("torchvision/resnet18", 5), ft, 0.5)
    with pytest.raises(WeightsError, match="last layer"):
        interpolation.representation_interpolation(VLDNet(num_classes=7, in_chans=1), ft, 0.5, x)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interp") / "run"
    train(make_config("smoke", test_env=2), folder, progress=False)
    return folder


def test_run_curve_ends(run) -> None:
    curve = interpolation.interpolation_from_run(run, alphas=[0.0, 0.5, 1.0])
    assert len(curve) == 6 and set(curve.kind) == {"weights", "representation"}
    last = [r for r in RunDir(run).records() if r.get("method") == "model" and not r.get("final")]
    at = curve.set_index(["alpha", "kind"])
    for kind in ("weights", "representation"):  # α = 0 is the checkpoint, as train.py scored it
        assert at.loc[(0.0, kind), "ood_acc"] == pytest.approx(last[-1]["ood_acc"], abs=1e-6)
        assert at.loc[(0.0, kind), "iid_acc"] == pytest.approx(last[-1]["iid_acc"], abs=1e-6)
    assert at.loc[(1.0, "weights"), "ood_acc"] == at.loc[(1.0, "representation"), "ood_acc"]
    assert (curve.steps == 6).all() and (curve.pre_head == "probe").all()


def test_finetuned_head_option_and_bad_pre_head(run) -> None:
    curve = interpolation.interpolation_from_run(run, alphas=[1.0], pre_head="finetuned")
    assert curve.iid_acc.between(0, 1).all()
    with pytest.raises(ConfigError, match="pre_head"):
        interpolation.interpolation_from_run(run, pre_head="zero-shot")


def test_checkpoint_of_another_backbone_is_an_error(run, tmp_path) -> None:
    other = tmp_path / "other"
    shutil.copytree(run, other)
    save_checkpoint(
        other / "checkpoint.pt", {"model": create_model("timm/resnet18", 10).state_dict()}
    )
    with pytest.raises(WeightsError, match="does not fit the vldnet backbone"):
        load_finetuned(other)
    with pytest.raises(WeightsError, match="different architectures"):
        interpolation.interpolation_from_run(run, pre=create_model("torchvision/resnet18", 10))
    with pytest.raises(RunError, match="run folder"):
        load_finetuned(tmp_path)
