"""Weight averaging, soups and ensembles: exact identities on tiny nets, and in a real run."""

import copy

import pytest
import torch
from torch import nn

from vldlib.averaging import TrajectoryAverage, greedy_soup, uniform_soup
from vldlib.config import make_config
from vldlib.ensembles import TrajectoryEnsemble, combine
from vldlib.runs import RunDir
from vldlib.train import train


def _tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_soup_of_identical_weights_is_the_model():
    model = _tiny(0)
    soup = uniform_soup([model.state_dict()] * 3)
    assert all(torch.equal(soup[k], v) for k, v in model.state_dict().items())


def test_trajectory_average_equals_hand_computed_mean():
    model = _tiny(0)
    avg = TrajectoryAverage(model, start=2, every="eval")
    snapshots = []
    for step in range(1, 6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        is_eval = step % 2 == 0
        avg.on_step(model, step, is_eval)
        if is_eval:
            snapshots.append(copy.deepcopy(model.state_dict()))
    assert avg.n_averaged == 2  # steps 2 and 4
    for name, p in avg.module.named_parameters():
        expected = torch.stack([s[name] for s in snapshots]).mean(0)
        assert torch.allclose(p, expected, atol=1e-6), name


def test_trajectory_average_every_step_counts_each_step_from_start():
    model = _tiny(0)
    avg = TrajectoryAverage(model, start=3, every="step")
    for step in range(1, 8):
        avg.on_step(model, step, is_eval=False)
    assert avg.n_averaged == 5


def test_ensemble_of_one_checkpoint_equals_it():
    logits = torch.randn(10, 5)
    assert torch.allclose(combine([logits], "prob"), logits.softmax(1))
    assert torch.equal(combine([logits], "logit"), logits)
    ens = TrajectoryEnsemble(start=0)
    scores = ens.add(1, {"a": logits})
    assert torch.equal(scores["a"].argmax(1), logits.argmax(1))


def test_cached_ensemble_equals_recomputed_outputs():
    x = torch.randn(32, 4)
    models = [_tiny(s).eval() for s in range(4)]
    with torch.no_grad():
        outs = [m(x) for m in models]
    for mode in ("prob", "logit"):
        ens = TrajectoryEnsemble(start=2, mode=mode)
        assert ens.add(1, {"x": outs[0]}) is None  # before start: not a member
        for step, out in enumerate(outs[1:], start=2):
            scores = ens.add(step, {"x": out})
        with torch.no_grad():
            recomputed = combine([m(x) for m in models[1:]], mode)
        assert torch.allclose(scores["x"].float(), recomputed, atol=1e-6)


def test_probability_and_logit_ensembles_can_disagree():
    a = torch.tensor([[10.0, 0.0]])  # very confident in class 0
    b = torch.tensor([[0.0, 3.0]])
    c = torch.tensor([[0.0, 3.0]])  # summed logits [10, 6]; mean probabilities [0.36, 0.64]
    assert combine([a, b, c], "logit").argmax(1).item() == 0
    assert combine([a, b, c], "prob").argmax(1).item() == 1


def test_greedy_soup_never_lowers_its_selection_metric():
    x = torch.randn(64, 4)
    target = _tiny(100).eval()(x).argmax(1)
    models = [_tiny(s).state_dict() for s in range(6)]

    def val_accuracy(m: nn.Module) -> float:  # stands for training-domain validation accuracy
        with torch.no_grad():
            return (m.eval()(x).argmax(1) == target).float().mean().item()

    soup, kept, history = greedy_soup(_tiny(0), models, val_accuracy)
    assert history == sorted(history) and len(history) == len(models)
    probe = _tiny(0)
    probe.load_state_dict(soup)
    assert val_accuracy(probe) == pytest.approx(history[-1])
    assert len(kept) >= 1 and kept[0] == max(
        range(6), key=lambda i: (val_accuracy(_load(i, models)), -i)
    )


def _load(i, models):
    m = _tiny(0)
    m.load_state_dict(models[i])
    return m


def test_baselines_ride_along_one_run(tmp_path):
    config = make_config(
        "smoke", dataset="Debug", weights=None, test_domain_size=20, steps=12, eval_every=4
    )
    train(config, tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    records = [r for r in run.records() if not r.get("final")]
    by = {(r["method"], r["step"]): r for r in records}
    assert {m for m, _ in by} == {"model", "traj_avg", "traj_ens"}
    # at the first evaluation from average_start on, each baseline holds one model: the model
    first = min(s for m, s in by if m == "traj_avg")
    assert by["traj_avg", first]["n_models"] == by["traj_ens", first]["n_models"] == 1
    assert by["traj_avg", first]["acc"] == by["model", first]["acc"]
    assert by["traj_ens", first]["acc"] == by["model", first]["acc"]
    assert by["traj_ens", 12]["n_models"] == len([s for m, s in by if m == "model" and s >= 3])
    assert set(run.final_records()) == {"model", "traj_avg", "traj_ens"}
    assert by["model", 4]["s_baselines"] >= 0


def test_last_layer_learning_rate_factor():
    from vldlib.backbones import VLDNet
    from vldlib.train import make_optimizer

    model = VLDNet(num_classes=4, in_chans=1)
    opt = make_optimizer(model, make_config("cpu", lr=0.01, last_layer_lr_factor=10))
    trunk, head = opt.param_groups
    assert trunk["lr"] == 0.01 and head["lr"] == pytest.approx(0.1)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.get_classifier().parameters()}
    assert len(trunk["params"]) + len(head["params"]) == len(list(model.parameters()))


def test_1x_combinations_of_a_run_with_itself_equal_its_final_model(tmp_path):
    from vldlib.combine import combine_runs

    config = make_config(
        "smoke", dataset="Debug", weights=None, test_domain_size=20, steps=6, eval_every=3
    )
    train(config, tmp_path / "run", progress=False)
    records = RunDir(tmp_path / "run").records()
    last = [r for r in records if r.get("method") == "model" and not r.get("final")][-1]
    assert last["step"] == 6  # the checkpoint holds the final (last-step) model
    records = {r["method"]: r for r in combine_runs([tmp_path / "run"] * 2, [config] * 2)}
    assert set(records) == {"ens_1x", "soup_1x", "greedy_1x"}
    for r in records.values():
        assert r["acc"] == last["acc"], r["method"]
