"""Accuracies per split, and model selection by training-domain validation.

Selection never looks at the held-out domain: it maximises ``iid_acc``, the mean accuracy over the
training domains' validation splits (Gulrajani & Lopez-Paz 2020, the paper's protocol).
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import nn


@torch.no_grad()
def predict(
    model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every input batch, concatenated on the CPU."""
    was_training = model.training
    model.eval()
    out = [model(x.to(device, non_blocking=True)).float().cpu() for x in batches]
    model.train(was_training)
    return torch.cat(out)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return (logits.argmax(dim=1) == targets).float().mean().item()


class Split(Protocol):
    """An evaluation split: a name, its input batches and its labels (``train.EvalSet``)."""

    name: str
    targets: torch.Tensor

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]: ...


def split_logits(
    model: nn.Module, splits: Sequence[Split], batch_size: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """The model's logits on every split, by split name."""
    return {s.name: predict(model, s.batches(batch_size), device) for s in splits}


def split_accuracies(scores: dict[str, torch.Tensor], splits: Sequence[Split]) -> dict[str, float]:
    """Accuracy per split from logits (or any per-class scores, e.g. ensemble probabilities)."""
    return {s.name: accuracy(scores[s.name], s.targets) for s in splits}


def summarise(
    acc: dict[str, float], train_domains: Sequence[str], test_domain: str
) -> dict[str, Any]:
    """``iid_acc``: mean over the training domains' validation splits; ``ood_acc``: held-out."""
    return {
        "iid_acc": sum(acc[d] for d in train_domains) / len(train_domains),
        "ood_acc": acc[test_domain],
        "acc": dict(acc),
    }


def select_by_iid(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The record with the best training-domain validation accuracy (``iid_acc``).

    Selects on the training domains' 20% validation splits only; ties go to the earliest step.
    """
    if not records:
        raise ValueError("no evaluation records to select from")
    return max(records, key=lambda r: (r["iid_acc"], -r["step"]))
