"""The residual-sum decomposition of Φ over the last residual stage (§3.1; Veit et al. 2016).

A residual stage maps its input s_0 through blocks s_{k+1} = s_k + f_k(s_k), so the pooled
representation telescopes: Φ = pool(s_0) + Σ_k [pool(s_{k+1}) − pool(s_k)]. Dropping a
unit of Φ therefore removes that unit from every block's contribution at once, which is the
paper's argument for putting the dropout on Φ rather than after each block.

``shares_before_after`` compares each block's share of Φ in a pre-trained backbone and in the
models fine-tuned from it, with and without very large dropout.
"""

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from vldlib.analysis.models import load_finetuned, pretrained_model
from vldlib.backbones import VLDNet, last_stage_blocks
from vldlib.data import domain_index
from vldlib.errors import ConfigError
from vldlib.runs import RunDir


def _pool(t: torch.Tensor) -> torch.Tensor:
    """Global average pool (B, C, H, W) → (B, C) in float64, so the telescoping stays exact."""
    return t.detach().double().mean(dim=(2, 3))


@torch.no_grad()
def block_contributions(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Φ(x), the stage's entry and each last-stage block's additive contribution, all pooled.

    One forward pass in eval mode, without gradients; hooks read every block's input s_k and output
    s_{k+1}, and block k contributes φ_k = pool(s_{k+1}) − pool(s_k).

    ``VLDNet``: the blocks of ``stage3`` compute s + f(s) with nothing after the sum, so
    φ_k = pool(f_k(s_k)) exactly and ``entry`` = pool(s_0) is the pooled output of ``model.entry``.

    torchvision/timm ResNets: the first block of ``layer4`` halves the resolution, so it has no
    additive form; it is folded into ``entry``, which is its pooled output, and the
    contributions are those of blocks 2..n. These blocks end in a ReLU after the sum, so
    φ_k = pool(s_{k+1} − s_k) still telescopes exactly, but it equals
    pool(relu(s_k + f_k(s_k)) − s_k), not pool(f_k(s_k)): it includes what the ReLU clips.
    Everything that is not residual (the stem, the earlier stages and the downsampling
    shortcut of the first block) is counted in ``entry``.

    Returns:
        phi: (B, D) Φ(x) = ``forward_features(x)`` pooled, before any dropout.
        entry: (B, D) pooled s_0.
        contributions: one (B, D) tensor per block after the entry, in order.
        The parts are float64 so that entry + Σ contributions reproduces Φ to round-off.
    """
    blocks = last_stage_blocks(model)
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    # Pool inside the hooks: later in-place ReLUs cannot alter an already pooled copy.
    hooks = [
        b.register_forward_pre_hook(lambda _m, args: inputs.append(_pool(args[0]))) for b in blocks
    ]
    hooks += [
        b.register_forward_hook(lambda _m, _i, out: outputs.append(_pool(out))) for b in blocks
    ]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        phi = model.forward_features(x).mean(dim=(2, 3))
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes.items():  # restore per module, e.g. BatchNorm frozen in training
            m.train(training)

    if isinstance(model, VLDNet):
        entry, first = inputs[0], 0
    else:
        # deviation from paper: §4.3 uses all three layer4 block outputs; the first one is a
        # downsampling block with no additive form, so here it is the entry, not a contribution.
        entry, first = outputs[0], 1
    contributions = [outputs[k] - inputs[k] for k in range(first, len(blocks))]
    return phi, entry, contributions


def check_sum(model: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> float:
    """Max abs error of entry + Σ_k φ_k − Φ on the batch ``x``; ConfigError if above ``atol``.

    A model that transforms the stream after its last block (a final norm, an activation) has no
    exact residual-sum decomposition, which is what the error reveals.
    """
    phi, entry, contributions = block_contributions(model, x)
    error = (entry + sum(contributions) - phi.double()).abs().max().item()
    if error > atol:
        raise ConfigError(
            f"{type(model).__name__}: entry + Σ contributions differs from Φ by {error:.2e} "
            f"(> {atol:.0e}); the model changes the stream after its last residual block, so use a "
            "ResNet or VLDNet backbone"
        )
    return error


def norm_shares(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """The share of Φ carried by the entry and by each block, averaged over the batch ``x``.

    The share of a part p is ⟨p, Φ⟩ / ‖Φ‖²: the length of its projection onto Φ, in
    units of ‖Φ‖. The shares sum to 1 because the parts sum to Φ; a share can be negative (a
    block that pulls Φ back) or above 1. Keys: ``entry``, then ``block1``, ``block2`` … for
    the contributions in order (for a ResNet, ``block1`` is ``layer4[1]``, as
    ``layer4[0]`` is the entry).
    """
    _, entry, contributions = block_contributions(model, x)
    parts = [entry, *contributions]
    # Φ as the sum of its parts, so the shares sum to 1 up to float64 round-off.
    phi = sum(parts)
    sq_norm = (phi * phi).sum(dim=1)  # (B,)
    names = ["entry", *(f"block{k}" for k in range(1, len(contributions) + 1))]
    return {
        n: ((p * phi).sum(dim=1) / sq_norm).mean().item() for n, p in zip(names, parts, strict=True)
    }


def shares_frame(models: Mapping[str, nn.Module], x: torch.Tensor) -> pd.DataFrame:
    """``norm_shares`` of each model on the batch ``x``: one row per (model, part, share)."""
    return pd.DataFrame(
        [
            {"model": name, "part": part, "share": share}
            for name, model in models.items()
            for part, share in norm_shares(model, x).items()
        ]
    )


def shares_before_after(
    run_dirs: Sequence[str | Path], n_images: int = 256, domain: str | None = None
) -> pd.DataFrame:
    """Each part's share of Φ before (``pretrained``) and after (``finetuned``) fine-tuning.

    The fine-tuned model is a run folder's ``checkpoint.pt`` (its last step), the pre-trained one
    the backbone its config starts from; both are measured on the same images: the first
    ``n_images`` of the run's held-out domain split, or of the validation split of ``domain``.

    Returns:
        One row per (run, model, part): run, weights, dropout, seed, test_domain, images (the
        domain measured on), model, part, share.
    """
    from vldlib.train import build_splits

    if n_images < 1:
        raise ConfigError(f"n_images must be >= 1, got {n_images}")
    frames, datasets = [], {}
    for run_dir in run_dirs:
        stored = RunDir(run_dir).stored_config()  # to share one loaded dataset between runs
        key = (stored.dataset, stored.data_dir) if stored is not None else None
        ft, config, data = load_finetuned(run_dir, datasets.get(key))
        datasets[key] = data
        pre = pretrained_model(config, data)
        name = data.domains[domain_index(data, domain if domain is not None else config.test_env)]
        split = next(e for e in build_splits(config, data)[1] if e.name == name)
        x = torch.cat(list(split.batches(config.eval_batch_size)))[:n_images]
        frame = shares_frame({"pretrained": pre, "finetuned": ft}, x)
        info = {
            "run": Path(run_dir).name,
            "weights": config.weights,
            "dropout": config.dropout,
            "seed": config.seed,
            "test_domain": data.domains[config.test_env],
            "images": name,
        }
        frames.append(frame.assign(**info)[[*info, "model", "part", "share"]])
    return pd.concat(frames, ignore_index=True)
