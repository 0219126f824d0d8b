"""Output ensembles: along one trajectory (the paper's ▲ 1296×) and across runs (▲ 1×).

Each checkpoint's outputs on the evaluation splits are added to a running sum when it is
evaluated, so the ensemble never runs an old checkpoint again and costs O(1) extra memory per
checkpoint (one sum per split, whatever the number of checkpoints).
"""

from collections.abc import Sequence

import torch


def combine(outputs: Sequence[torch.Tensor], mode: str = "prob") -> torch.Tensor:
    """Ensemble several models' logits for the same inputs.

    ``mode="prob"`` averages the predicted probabilities (the usual output ensemble);
    ``mode="logit"`` sums the raw logits, as the authors' code does. The two can disagree when
    members are confident to different degrees.
    """
    if mode == "prob":
        return torch.stack([o.softmax(dim=1) for o in outputs]).mean(0)
    if mode == "logit":
        return torch.stack(outputs).sum(0)
    raise ValueError(f"mode must be 'prob' or 'logit', got {mode!r}")


class TrajectoryEnsemble:
    """Running ensemble of the checkpoints evaluated at steps ≥ ``start``, from cached outputs."""

    def __init__(self, start: int, mode: str = "prob") -> None:
        combine([torch.zeros(1, 1)], mode)  # validate mode early
        self.start, self.mode = start, mode
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, step: int, logits: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """Add one checkpoint's logits per split; return the ensemble's scores, or None if
        ``step`` is before ``start``. Scores: mean probabilities or summed logits (``combine``)."""
        if step < self.start:
            return None
        for name, out in logits.items():
            term = out.softmax(dim=1) if self.mode == "prob" else out
            self.sums[name] = self.sums.get(name, 0) + term.double()
        self.count += 1
        return {k: (v / self.count if self.mode == "prob" else v) for k, v in self.sums.items()}

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.count = dict(state["sums"]), int(state["count"])
