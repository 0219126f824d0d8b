"""Weight averaging: along one trajectory (the paper's ★ 1296×) and across runs (soups, ★ 1×).

BatchNorm: fine-tuning freezes the running statistics (``freeze_bn``), so every model of a
trajectory, and every run started from the same pre-trained weights, holds the same statistics.
The averages below average parameters and keep those buffers unchanged; no ``update_bn`` pass is
needed. With ``freeze_bn=False`` a trajectory average keeps the buffers of the model it started
from: recompute them with ``torch.optim.swa_utils.update_bn`` before trusting its accuracy.
"""

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class TrajectoryAverage:
    """Uniform running mean of the weights along a trajectory, from ``start`` on.

    ``every="eval"`` adds the model at each evaluation step ≥ ``start`` (the paper's text: "model
    weights collected every 300 iterations"); ``every="step"`` adds it after every step from
    ``start`` on
    (the authors' code). Built on ``torch.optim.swa_utils.AveragedModel``.
    """

    def __init__(self, model: nn.Module, start: int, every: str = "eval") -> None:
        if every not in ("eval", "step"):
            raise ValueError(f"every must be 'eval' or 'step', got {every!r}")
        self.start, self.every = start, every
        self.average = AveragedModel(model)

    @property
    def n_averaged(self) -> int:
        return int(self.average.n_averaged.item())

    def on_step(self, model: nn.Module, step: int, is_eval: bool) -> None:
        if step >= self.start and (self.every == "step" or is_eval):
            self.average.update_parameters(model)

    @property
    def module(self) -> nn.Module:
        return self.average.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.average.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.average.load_state_dict(state)


def uniform_soup(state_dicts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of several models' weights (Wortsman et al. 2022's uniform soup).

    Floating-point tensors are averaged in float64, so a soup of identical models is exactly the
    model; integer buffers (BatchNorm's ``num_batches_tracked``) are taken from the first model.
    """
    if not state_dicts:
        raise ValueError("a soup needs at least one model")
    soup = {}
    for key, first in state_dicts[0].items():
        if first.is_floating_point():
            soup[key] = torch.stack([s[key].double() for s in state_dicts]).mean(0).to(first.dtype)
        else:
            soup[key] = first.clone()
    return soup


def greedy_soup(
    model: nn.Module,
    state_dicts: Sequence[dict[str, torch.Tensor]],
    score: Callable[[nn.Module], float],
) -> tuple[dict[str, torch.Tensor], list[int], list[float]]:
    """Greedy soup: visit models from best to worst single score; keep one in the soup only if the
    soup's score does not drop.

    ``score`` must measure the **training domains' validation accuracy** (never the held-out
    domain): it is the only split this function selects on.

    Returns:
        The soup's weights, the indices of the models kept, and the soup's score after each visit.
    """
    probe = copy.deepcopy(model)

    def evaluate(state: dict[str, torch.Tensor]) -> float:
        probe.load_state_dict(state)
        return score(probe)

    singles = [evaluate(s) for s in state_dicts]
    order = sorted(range(len(state_dicts)), key=lambda i: -singles[i])
    kept = [order[0]]
    best = singles[order[0]]
    history = [best]
    for i in order[1:]:
        candidate = evaluate(uniform_soup([state_dicts[j] for j in [*kept, i]]))
        if candidate >= best:
            kept.append(i)
            best = candidate
        history.append(best)
    return uniform_soup([state_dicts[j] for j in kept]), kept, history
