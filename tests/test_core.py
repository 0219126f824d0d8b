"""The VLD head, config, backbones and weight files (CPU, seeded, seconds)."""

import json

import pytest
import timm
import torch

from vldlib.backbones import (
    TorchvisionResNet,
    VLDNet,
    create_model,
    forward_with_blocks,
    load_weights,
    read_state_dict,
    save_weights,
    set_batchnorm_eval,
)
from vldlib.config import Config, make_config, parse_value
from vldlib.errors import ConfigError, WeightsError
from vldlib.heads import VeryLargeDropoutHead


# --- the head
def test_head_keeps_one_minus_lambda_and_rescales():
    torch.manual_seed(0)
    head = VeryLargeDropoutHead(2048, 0, drop_rate=0.9).train()
    out = head(torch.ones(200, 2048))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.1) < 0.005  # 409,600 Bernoulli draws
    assert torch.allclose(out[kept], torch.full_like(out[kept], 10.0))


def test_head_is_the_linear_layer_in_eval():
    head = VeryLargeDropoutHead(64, 5, drop_rate=0.9).eval()
    x = torch.randn(8, 64)
    assert torch.equal(head(x), head.fc(x))
    assert torch.equal(head(x, pre_logits=True), x)


def test_head_reset_changes_classes():
    head = VeryLargeDropoutHead(64, 5)
    head.reset(3)
    assert head(torch.randn(2, 64)).shape == (2, 3)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "0.9", True])
def test_head_rejects_rates_outside_unit_interval(bad):
    with pytest.raises(ConfigError, match="dropout"):
        VeryLargeDropoutHead(8, 2, drop_rate=bad)


def test_timm_drop_rate_equals_vld_head_under_same_seed():
    """timm's own drop_rate drops the pooled features exactly as our head does."""
    model = timm.create_model("resnet18", pretrained=False, num_classes=7, drop_rate=0.9).train()
    head = VeryLargeDropoutHead(model.num_features, 7, drop_rate=0.9).train()
    head.fc.load_state_dict(model.fc.state_dict())
    fmap = torch.randn(4, model.num_features, 3, 3)
    torch.manual_seed(1)
    a = model.forward_head(fmap)
    torch.manual_seed(1)
    b = head(fmap.mean(dim=(2, 3)))
    assert torch.allclose(a, b, atol=1e-6)
    torch.manual_seed(2)
    assert not torch.allclose(model.forward_head(fmap), a)  # the mask really is random


def test_torchvision_backbone_has_the_same_head_behaviour():
    tv = create_model("torchvision/resnet18", 7, drop_rate=0.9).train()
    tm = timm.create_model("resnet18", pretrained=False, num_classes=7, drop_rate=0.9).train()
    tm.fc.load_state_dict(tv.get_classifier().state_dict())
    fmap = torch.randn(4, 512, 2, 2)
    torch.manual_seed(3)
    a = tv.forward_head(fmap)
    torch.manual_seed(3)
    assert torch.allclose(a, tm.forward_head(fmap), atol=1e-6)
    assert isinstance(tv, TorchvisionResNet) and tv.num_features == 512


# --- config
def test_config_defaults_are_the_papers():
    c = Config()
    assert (c.dropout, c.steps, c.lr_milestones, c.momentum) == (0.9, 10_000, (5000,), 0.9)
    assert (c.batch_size_per_domain, c.eval_every, c.holdout_fraction, c.freeze_bn) == (
        32,
        300,
        0.2,
        True,
    )


def test_config_is_frozen_and_validated():
    c = make_config("cpu", dropout=0.0, lr=5e-3)
    with pytest.raises(AttributeError):
        c.lr = 1.0
    with pytest.raises(ConfigError, match="unknown config key 'learning_rate'"):
        make_config("paper", learning_rate=1e-3)
    with pytest.raises(ConfigError, match="steps must be of type int"):
        make_config("paper", steps="100")
    with pytest.raises(ConfigError, match="steps must be > 0"):
        make_config("paper", steps=0)
    with pytest.raises(ConfigError, match="dropout must be in"):
        make_config("paper", dropout=1.0)
    with pytest.raises(ConfigError, match="unknown profile"):
        make_config("gpu")
    with pytest.raises(ConfigError, match="lr expects a float"):
        parse_value("lr", "fast")


def test_config_hash_ignores_location_but_not_method():
    a = make_config("cpu")
    assert a.hash() == make_config("cpu", data_dir="/elsewhere", device="cpu").hash()
    assert a.hash() != make_config("cpu", dropout=0.0).hash()
    assert make_config("paper", **json.loads(json.dumps(a.to_dict()))) == a


def test_committed_runs_keep_their_hash():
    # results/cpu/ is found by these hashes: a new result-changing Config field, or a changed
    # cpu-profile value, must rerun the benchmark on purpose, not by accident.
    config = make_config("cpu", test_env=0, dropout=0.0, seed=0)
    assert config.hash() == "e36b6be8bedc"


def test_parse_value_handles_none_tuples_and_bools():
    assert parse_value("weights", "none") is None
    assert parse_value("lr_milestones", "5000,8000") == (5000, 8000)
    assert parse_value("freeze_bn", "false") is False


# --- backbones and weights
def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet9000'"):
        create_model("resnet9000", 3)
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_model("timm/not_a_model", 3)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_round_trip_and_keep_fresh_head(tmp_path, suffix):
    torch.manual_seed(0)
    src = VLDNet(num_classes=72, in_chans=1)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save(src.state_dict(), path)
    else:
        save_weights(src, path)
    dst = load_weights(VLDNet(num_classes=10, in_chans=1), path)
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, dst.state_dict()[k]), k
    assert dst.get_classifier().out_features == 10


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(create_model("torchvision/resnet18", 5).state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit the VLDNet backbone"):
        load_weights(VLDNet(num_classes=10, in_chans=1), path)
    gray = tmp_path / "gray.pth"
    torch.save(VLDNet(num_classes=10, in_chans=1).state_dict(), gray)
    with pytest.raises(WeightsError, match=r"1 with another shape \['stem.0.weight'\]"):
        load_weights(VLDNet(num_classes=10, in_chans=3), gray)  # same keys, one other shape


def test_missing_and_truncated_weights_are_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pth")
    path = tmp_path / "w.safetensors"
    save_weights(VLDNet(in_chans=1), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match="cannot read weights file"):
        read_state_dict(path)


def test_frozen_batchnorm_keeps_running_statistics():
    torch.manual_seed(0)
    model = VLDNet(in_chans=1).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    set_batchnorm_eval(model)
    model(torch.randn(16, 1, 28, 28) * 3 + 1).sum().backward()
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    model.train()  # without freezing, the statistics do move
    model(torch.randn(16, 1, 28, 28) * 3 + 1)
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_forward_with_blocks_returns_phi_and_last_stage_outputs():
    model = VLDNet(in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    phi, blocks = forward_with_blocks(model, x)
    assert phi.shape == (3, 512) and len(blocks) == 3
    assert torch.allclose(blocks[-1], phi)
    assert torch.allclose(model.forward_head(model.forward_features(x)), model.head.fc(phi))
