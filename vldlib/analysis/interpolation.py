"""Weight vs representation interpolation between a pre-trained and a fine-tuned model (Fig. 1).

Along α ∈ [0, 1] the paper compares two paths from the fine-tuned model (α = 0) to the
pre-trained one (α = 1):

    weights:         the network with weights α·θ_pre + (1 − α)·θ_ft;
    representation:  W_α·(α·Φ_pre(x) + (1 − α)·Φ_ft(x)) + b_α, with
                     W_α, b_α = α·(W, b)_pre + (1 − α)·(W, b)_ft: the last layer is
                     interpolated in both paths.

If fine-tuning stays in the linear regime of §3.2, Φ(x; θ) is affine in θ along the path and the
two curves agree; the paper finds they do after a mild fine-tuning and part after a long one.

The pre-trained end needs a last layer for the fine-tuning classes, which a backbone pre-trained
on other labels does not have. The paper's pre-trained end is CLIP with its zero-shot head, a
working classifier of the frozen pre-trained features. Its analogue here (``pre_head="probe"``) is
a linear probe: V and b trained on the frozen pre-trained Φ of the run's training domains (v = 1
in ``linear.fit_linear``, no dropout), selected by training-domain validation.
``pre_head="finetuned"`` instead keeps the fine-tuned last layer at both ends, so only the trunk
moves.

BatchNorm running statistics are interpolated like the weights; with ``freeze_bn`` (the paper's
setting) they are the pre-trained ones at both ends.
"""

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from vldlib.analysis.linear import extract_features, fit_linear
from vldlib.analysis.models import (
    check_same_architecture,
    load_finetuned,
    pooled_features,
    pretrained_model,
)
from vldlib.config import Config
from vldlib.data import MultiDomainData, get_dataset
from vldlib.errors import ConfigError, WeightsError
from vldlib.evaluate import split_accuracies, split_logits, summarise

ALPHAS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2).tolist())
PRE_HEADS = ("probe", "finetuned")


def check_alpha(alpha: float) -> float:
    """``alpha`` as a float, or ConfigError if it is not a number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ConfigError(f"alpha must be a number in [0, 1] (1: pre-trained), got {alpha!r}")
    return float(alpha)


def _check_pair(pre: nn.Module, ft: nn.Module) -> None:
    check_same_architecture(pre, ft, "the pre-trained and fine-tuned models")
    wp, wf = pre.get_classifier().weight, ft.get_classifier().weight
    if wp.shape != wf.shape:
        raise WeightsError(
            f"the pre-trained model's last layer is {tuple(wp.shape)}, the fine-tuned one's "
            f"{tuple(wf.shape)}: give the pre-trained model a head for the fine-tuning classes"
        )


def weight_interpolation(pre: nn.Module, ft: nn.Module, alpha: float) -> nn.Module:
    """A new model with weights α·θ_pre + (1 − α)·θ_ft (floating tensors; integer buffers
    such as BatchNorm's batch counter are the fine-tuned model's), in eval mode."""
    alpha = check_alpha(alpha)
    _check_pair(pre, ft)
    sp = pre.state_dict()
    state = {
        k: alpha * sp[k] + (1 - alpha) * v if v.is_floating_point() else v
        for k, v in ft.state_dict().items()
    }
    model = copy.deepcopy(ft)
    model.load_state_dict(state)
    return model.eval()


def _mixed_logits(
    phi_pre: torch.Tensor, phi_ft: torch.Tensor, fc_pre: nn.Linear, fc_ft: nn.Linear, alpha: float
) -> torch.Tensor:
    phi = alpha * phi_pre + (1 - alpha) * phi_ft  # (B, D)
    weight = alpha * fc_pre.weight + (1 - alpha) * fc_ft.weight  # (C, D)
    bias = alpha * fc_pre.bias + (1 - alpha) * fc_ft.bias
    return torch.nn.functional.linear(phi, weight, bias).detach()


def representation_interpolation(
    pre: nn.Module, ft: nn.Module, alpha: float, x: torch.Tensor
) -> torch.Tensor:
    """Logits W_α·(α·Φ_pre(x) + (1 − α)·Φ_ft(x)) + b_α on the batch ``x``, no dropout."""
    alpha = check_alpha(alpha)
    _check_pair(pre, ft)
    phi_pre, phi_ft = pooled_features(pre, [x]), pooled_features(ft, [x])
    return _mixed_logits(phi_pre, phi_ft, pre.get_classifier(), ft.get_classifier(), alpha)


def probe_head(config: Config, data: MultiDomainData) -> dict[str, torch.Tensor]:
    """A linear probe of the pre-trained Φ for ``config``'s task: the state of its last layer.

    V and b are trained with ``config``'s schedule, without dropout, on the unaugmented training
    pools (``linear.extract_features``), and taken at the step of best training-domain validation.
    """
    probe = dataclasses.replace(config, dropout=0.0)
    state = fit_linear(extract_features(probe, data), probe, train_v=False).selected_state
    return {k.removeprefix("head.fc."): v for k, v in state.items() if k.startswith("head.fc.")}


def interpolation_curve(
    pre: nn.Module,
    ft: nn.Module,
    config: Config,
    data: MultiDomainData | None = None,
    alphas: Sequence[float] = ALPHAS,
    progress: bool = False,
) -> pd.DataFrame:
    """Accuracies along both interpolation paths, on the evaluation splits of ``config``.

    ``pre`` must already have a last layer for the fine-tuning classes (see ``pre_head`` of
    ``interpolation_from_run``).

    Returns:
        One row per (alpha, kind): alpha (1: pre-trained), kind (``weights`` or
        ``representation``), iid_acc (training domains' validation splits), ood_acc (held-out).
    """
    from vldlib.train import build_splits

    alphas = [check_alpha(a) for a in alphas]
    _check_pair(pre, ft)
    data = data or get_dataset(config.dataset, config.data_dir)
    _, evals = build_splits(config, data)
    test_domain = data.domains[config.test_env]
    train_domains = [d for d in data.domains if d != test_domain]
    bs, cpu = config.eval_batch_size, torch.device("cpu")
    inputs = {e.name: list(e.batches(bs)) for e in evals}
    phi_pre = {n: pooled_features(pre, b) for n, b in inputs.items()}
    phi_ft = {n: pooled_features(ft, b) for n, b in inputs.items()}
    for e in evals:  # the inputs are drawn once; evaluate the weight path on the same tensors
        e.cached = torch.cat(inputs[e.name])
    rows = []
    for alpha in tqdm(alphas, disable=not progress, desc="alpha"):
        model = weight_interpolation(pre, ft, alpha)
        scores = {
            "weights": split_logits(model, evals, bs, cpu),
            "representation": {
                n: _mixed_logits(
                    phi_pre[n], phi_ft[n], pre.get_classifier(), ft.get_classifier(), alpha
                )
                for n in inputs
            },
        }
        for kind, logits in scores.items():
            acc = summarise(split_accuracies(logits, evals), train_domains, test_domain)
            rows.append(
                {"alpha": alpha, "kind": kind, **{k: acc[k] for k in ("iid_acc", "ood_acc")}}
            )
    return pd.DataFrame(rows)


def interpolation_from_run(
    run_dir: str | Path,
    alphas: Sequence[float] = ALPHAS,
    pre_head: str = "probe",
    pre: nn.Module | None = None,
    data: MultiDomainData | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """``interpolation_curve`` between a run's pre-trained backbone and its ``checkpoint.pt``.

    Args:
        run_dir: a run folder of ``vldlib.train`` (its last checkpoint is the fine-tuned end).
        alphas: points of the path, each in [0, 1].
        pre_head: the pre-trained end's last layer: ``probe`` (a linear probe of the
            pre-trained Φ) or ``finetuned`` (the fine-tuned last layer at both ends).
        pre: the pre-trained model; default: the backbone and weights of the run's config.
        data: the dataset, if already loaded.
        progress: show a progress bar.

    Returns:
        The rows of ``interpolation_curve`` with the run's name, dropout, seed, steps and
        pre_head.
    """
    if pre_head not in PRE_HEADS:
        raise ConfigError(f"pre_head must be one of {', '.join(PRE_HEADS)}, got {pre_head!r}")
    ft, config, data = load_finetuned(run_dir, data)
    pre = copy.deepcopy(pre) if pre is not None else pretrained_model(config, data)
    check_same_architecture(pre, ft, f"the pre-trained model and the checkpoint of {run_dir}")
    if pre.get_classifier().weight.shape != ft.get_classifier().weight.shape:
        pre.reset_classifier(len(data.classes))  # e.g. the pre-training head; replaced below
    if pre_head == "probe":
        # deviation from paper: CLIP's pre-trained end has a zero-shot head; ours is a probe.
        pre.get_classifier().load_state_dict(probe_head(config, data))
    else:
        pre.get_classifier().load_state_dict(ft.get_classifier().state_dict())
    curve = interpolation_curve(pre, ft, config, data, alphas, progress)
    info = {"run": Path(run_dir).name, "dropout": config.dropout, "seed": config.seed}
    return curve.assign(**info, steps=config.steps, pre_head=pre_head)
