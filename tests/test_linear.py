"""Linear fine-tuning (Eq. 1): exactness at v = 1, training on precomputed parts, sweeps."""

import pytest
import torch

from vldlib.analysis import linear
from vldlib.backbones import VLDNet, create_model, read_state_dict, resolve_weights
from vldlib.config import make_config
from vldlib.data import get_dataset
from vldlib.errors import ConfigError
from vldlib.train import train


def _head_like(model: torch.nn.Module, n_parts: int) -> linear.LinearFineTuneHead:
    fc = model.get_classifier()
    head = linear.LinearFineTuneHead(n_parts, fc.in_features, fc.out_features, drop_rate=0.9)
    head.head.fc.load_state_dict(fc.state_dict())
    return head.eval()


def test_v_one_with_the_pretrained_head_is_the_pretrained_model() -> None:
    state = read_state_dict(resolve_weights("rich"))
    model = VLDNet(num_classes=state["head.fc.bias"].numel(), in_chans=1)
    model.load_state_dict(state)
    model.eval()
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    parts = linear.stacked_parts(model, x)
    assert parts.shape == (8, 4, 512)  # entry + 3 blocks
    with torch.no_grad():
        expected, got = model(x), _head_like(model, 4)(parts)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4)  # measured max error ~4e-6
    # and the parts matter: zeroing v_0 (the entry) changes the logits
    head = _head_like(model, 4)
    with torch.no_grad():
        head.v[0] = 0.0
        assert (head(parts) - expected).abs().max() > 1e-2


def test_v_one_reproduces_a_torchvision_resnet() -> None:
    torch.manual_seed(0)
    model = create_model("torchvision/resnet18", 5).eval()
    x = torch.randn(2, 3, 64, 64)
    parts = linear.stacked_parts(model, x)  # entry = layer4[0], then layer4[1]
    with torch.no_grad():
        assert torch.allclose(_head_like(model, parts.shape[1])(parts), model(x), atol=1e-5)


@pytest.fixture(scope="module")
def smoke():
    config = make_config("smoke", test_env=1)
    data = get_dataset(config.dataset)
    return config, data, linear.extract_features(config, data)


def test_features_cover_every_split(smoke) -> None:
    config, data, f = smoke
    assert f.parts == ["entry", "block1", "block2", "block3"]
    assert f.test_domain == "sketch" and len(f.train) == 3
    assert set(f.evals) == set(data.domains)
    n_train = config.train_domain_size - round(config.train_domain_size * config.holdout_fraction)
    assert f.train[0].shape == (1, n_train, 4, 512)
    assert f.evals["sketch"].shape == (config.test_domain_size, 4, 512)
    assert f.init_head["weight"].shape == (len(data.classes), 512)


def test_fit_is_seeded_and_records_the_evaluations(smoke) -> None:
    config, _, f = smoke
    a = linear.fit_linear(f, config).records
    b = linear.fit_linear(f, config).records
    assert a.equals(b)
    assert list(a.step) == [3, 6]
    assert a[["iid_acc", "ood_acc"]].stack().between(0, 1).all()
    c = linear.fit_linear(f, make_config("smoke", test_env=1, seed=1)).records
    assert not a.train_loss.equals(c.train_loss)


def test_fit_learns_and_probe_keeps_v(smoke) -> None:
    _, _, f = smoke
    config = make_config(
        "smoke", test_env=1, dropout=0.0, steps=60, eval_every=20, lr=0.1, lr_milestones=(50,)
    )
    fit = linear.fit_linear(f, config)
    # measured: mean loss 1.59 over steps 1-20, 0.56 over steps 41-60 (chance: ln 10 = 2.30)
    assert fit.records.train_loss.iloc[-1] < 0.5 * fit.records.train_loss.iloc[0]
    assert not torch.equal(fit.head.v, torch.ones_like(fit.head.v))
    probe = linear.fit_linear(f, config, train_v=False)
    assert torch.equal(probe.head.v, torch.ones_like(probe.head.v))
    best = fit.records.iid_acc.idxmax()
    head = linear.LinearFineTuneHead(4, 512, 10, 0.0)
    head.load_state_dict(fit.selected_state)
    assert linear.evaluate_head(head, f) == fit.records.acc.iloc[best]


def test_bad_views_is_an_error(smoke) -> None:
    config, data, _ = smoke
    with pytest.raises(ConfigError, match="views"):
        linear.extract_features(config, data, views=0)


def test_augmented_views_differ(smoke) -> None:
    config, data, f = smoke
    g = linear.extract_features(config, data, views=2)
    assert g.train[0].shape[0] == 2 and not torch.equal(g.train[0][0], g.train[0][1])
    assert torch.equal(g.evals["sketch"], f.evals["sketch"])


def test_sweep_rows() -> None:
    table = linear.linear_sweep(
        "smoke", seeds=[0], dropouts=[0.0, 0.9], test_envs=[2], weight_decays=[1e-2], progress=False
    )
    assert len(table) == 4 and set(table.selection) == {"iid", "last"}
    assert set(table.test_domain) == {"texture"} and (table.kind == "linear").all()
    assert (table[table.selection == "last"].step == 6).all()


def test_full_finetuning_rows_match_the_run(tmp_path) -> None:
    config = make_config(
        "smoke", dataset="Debug", weights=None, test_domain_size=20, steps=6, eval_every=3
    )
    final = train(config, tmp_path / "run", progress=False)
    table = linear.full_finetuning_results(tmp_path)
    iid = table[table.selection == "iid"].iloc[0]
    assert iid.step == final["selected_step"] and iid.ood_acc == final["ood_acc"]
    assert table[table.selection == "last"].step.item() == 6
