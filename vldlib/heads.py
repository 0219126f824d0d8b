"""The very-large-dropout head: dropout on the penultimate representation Φ(x), then a linear
layer.

Paper §3.1: Φ_dropout(x) = m(λ) / (1 - λ) ⊙ Φ(x) with m_i ~ Bernoulli(1 - λ), and no dropout
at test time. This is inverted dropout, exactly what ``torch.nn.Dropout(λ)`` computes. The head
follows timm's head contract (``forward(x, pre_logits=False)``, ``reset(num_classes)``), so it can
stand in for the classifier of any backbone; timm models get the same behaviour from their own
``drop_rate``.
"""

import torch
from torch import nn

from vldlib.errors import ConfigError


def check_drop_rate(drop_rate: float) -> float:
    """Return ``drop_rate`` as a float, or raise ConfigError if it is outside [0, 1)."""
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, int | float):
        raise ConfigError(f"dropout must be a number in [0, 1), got {drop_rate!r}")
    if not 0.0 <= drop_rate < 1.0:
        raise ConfigError(
            f"dropout must be in [0, 1) (the paper's very large dropout is 0.9), got {drop_rate}"
        )
    return float(drop_rate)


class VeryLargeDropoutHead(nn.Module):
    """Dropout with rate λ on pooled features, then a linear classifier.

    Args:
        in_features: width of Φ(x) (2048 for a ResNet50).
        num_classes: number of outputs; 0 makes the head return the (dropped) features.
        drop_rate: λ, the probability of zeroing a unit of Φ(x) during training.
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.9) -> None:
        super().__init__()
        self.in_features = in_features
        self.drop_rate = check_drop_rate(drop_rate)
        self.drop = nn.Dropout(self.drop_rate)
        self.fc = nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        """Replace the linear layer with a freshly initialised one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        if num_classes > 0:
            self.fc = nn.Linear(self.in_features, num_classes)
        else:
            self.fc = nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(x)  # (B, D); identity in eval()
        return x if pre_logits else self.fc(x)
