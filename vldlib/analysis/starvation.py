"""A linear gradient-starvation demo: logistic regression with one strong and many weak features.

Illustrative, our own construction: v1 of the paper has no such experiment, and the one a later
version describes ("multiple features perfectly predict the target; SGD learns only one strongly
relevant feature and starves the others") has no public construction (PAPER.md §4).

Every example has one strong feature, predictive with a large margin, and ``n_weak`` weak
features, each a noisy copy of the label. Gradient descent on the logistic loss drives the loss
down through the strong feature first, after which the weak ones get almost no gradient: they are
starved. Input dropout builds random feature subsets, forcing the weak features to be learned.

What the demo shows (measured in tests/test_analysis.py): the starved weak weights stay small but
keep their sign, so a linear model survives ``remove`` (the strong feature set to 0); it fails
under ``flip``, a shift that contradicts the strong feature. Input dropout spreads the weights and
restores much of the ``flip`` accuracy. Plain L2 does not spread them: it is isotropic, whereas the
penalty dropout amounts to scales with each feature's E[x_j²] (``dropout_penalty_check``).
"""

import pandas as pd
import torch

from vldlib.errors import ConfigError

STRONG = 0  # column of the strong feature; columns 1..n_weak are the weak ones


def make_data(
    n: int,
    n_weak: int = 8,
    strong_margin: float = 12.0,
    strong_noise: float = 0.1,
    weak_noise: float = 1.2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` balanced examples: X (n, 1 + n_weak) and labels y (n,) in {−1, +1}.

    Strong feature: y·strong_margin + N(0, strong_noise²). Weak feature j: y + N(0, weak_noise²),
    alone right with probability Φ_N(1 / weak_noise) (0.80 at the default 1.2).
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)[torch.randperm(n, generator=g)]
    strong = y * strong_margin + strong_noise * torch.randn(n, generator=g)
    weak = y[:, None] + weak_noise * torch.randn(n, n_weak, generator=g)
    return torch.cat([strong[:, None], weak], dim=1), y


def shift(X: torch.Tensor, mode: str) -> torch.Tensor:
    """The test-time shift: ``remove`` sets the strong feature to 0, ``flip`` negates it."""
    X = X.clone()
    if mode == "remove":
        X[:, STRONG] = 0.0
    elif mode == "flip":
        X[:, STRONG] = -X[:, STRONG]
    else:
        raise ConfigError(f"unknown shift {mode!r}: use 'remove' or 'flip'")
    return X


def fit(
    X: torch.Tensor,
    y: torch.Tensor,
    dropout: float = 0.0,
    l2: float = 0.0,
    steps: int = 3000,
    lr: float | None = None,
    seed: int = 0,
    record_every: int = 50,
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Full-batch gradient descent on the mean logistic loss of the training split (X, y).

    Each step draws a fresh inverted-dropout mask on the inputs (rate ``dropout``, seeded) and adds
    the penalty l2/2·‖w‖² (not on the bias). The default ``lr``,
    (1 − dropout) / max_j E[x_j²], is below the stability limit 4 / λ_max of the loss on
    dropped-out inputs, whose scale is E[x_j²] / (1 − dropout).

    Returns:
        w: (d,) weights; b: the bias; history: (steps // record_every + 1, d) weights every
        ``record_every`` steps, starting from the zero initialisation.
    """
    X, y = X.double(), y.double()
    n, d = X.shape
    if lr is None:
        lr = (1.0 - dropout) / (X * X).mean(dim=0).max().item()
    g = torch.Generator().manual_seed(seed)
    w = torch.zeros(d, dtype=torch.float64)
    b = 0.0
    history = [w.clone()]
    for step in range(1, steps + 1):
        Xd = X
        if dropout > 0:
            keep = torch.rand(n, d, generator=g, dtype=torch.float64) >= dropout
            Xd = X * keep / (1.0 - dropout)
        # d/df log(1 + exp(−y f)) = −y σ(−y f)
        r = -y * torch.sigmoid(-y * (Xd @ w + b))  # (n,)
        w = w - lr * (Xd.T @ r / n + l2 * w)
        b = b - lr * r.mean().item()
        if step % record_every == 0:
            history.append(w.clone())
    return w, b, torch.stack(history)


def accuracy(w: torch.Tensor, b: float, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of examples of (X, y) whose label is sign(X w + b)."""
    return ((X.double() @ w + b).sign() == y.double()).double().mean().item()


def strong_weight_share(w: torch.Tensor) -> float:
    """|w_strong| / Σ_j |w_j|: 1 when the model reads only the strong feature."""
    return (w[STRONG].abs() / w.abs().sum()).item()


def dropout_sweep(
    rates: tuple[float, ...] = (0.0, 0.5, 0.7, 0.9),
    seed: int = 0,
    n_train: int = 500,
    n_test: int = 5000,
    l2s: tuple[float, ...] = (),
) -> pd.DataFrame:
    """Fit one model per input-dropout rate, and one per L2 strength without dropout, on a
    training split; score each on a test split.

    Columns: rate, l2, iid_acc (test split), ood_remove_acc and ood_flip_acc (test split after
    ``shift``), strong_weight_share.
    """
    X, y = make_data(n_train, seed=seed)
    Xt, yt = make_data(n_test, seed=seed + 1)  # a fresh draw: the test split
    rows = []
    for rate, l2 in [(r, 0.0) for r in rates] + [(0.0, l2) for l2 in l2s]:
        w, b, _ = fit(X, y, dropout=rate, l2=l2, seed=seed)
        rows.append(
            {
                "rate": rate,
                "l2": l2,
                "iid_acc": accuracy(w, b, Xt, yt),
                "ood_remove_acc": accuracy(w, b, shift(Xt, "remove"), yt),
                "ood_flip_acc": accuracy(w, b, shift(Xt, "flip"), yt),
                "strong_weight_share": strong_weight_share(w),
            }
        )
    return pd.DataFrame(rows)


def dropout_losses(
    X: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    rate: float,
    n_samples: int,
    seed: int = 0,
) -> torch.Tensor:
    """(n_samples,) squared losses ½·mean_i (y_i − x̃_i·w)², one per seeded mask."""
    X, y, w = X.double(), y.double(), w.double()
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(n_samples, *X.shape, generator=g, dtype=torch.float64) >= rate
    preds = (X * keep / (1.0 - rate)) @ w  # (n_samples, n)
    return 0.5 * ((y - preds) ** 2).mean(dim=1)


def dropout_penalty_check(
    X: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    rate: float,
    n_samples: int,
    seed: int = 0,
) -> tuple[float, float]:
    """Monte-Carlo dropout loss vs its closed form, for the squared loss where it is exact.

    Inverted dropout keeps E[x̃·w] = x·w and adds the variance λ/(1−λ)·Σ_j w_j² x_j², so
    E_mask[½(y − x̃·w)²] = ½(y − x·w)² + ½·λ/(1−λ)·Σ_j w_j² x_j²
    (Wager et al. 2013; Srivastava
    et al. 2014): an L2 penalty weighted by each feature's E[x_j²] on (X, y). A feature with a
    large scale, like the strong one here, is penalised most, which plain L2 does not do.

    Returns:
        (Monte-Carlo average over ``n_samples`` masks, plain loss + penalty).
    """
    X, y, w = X.double(), y.double(), w.double()
    mc = dropout_losses(X, y, w, rate, n_samples, seed).mean().item()
    plain = 0.5 * ((y - X @ w) ** 2).mean()
    penalty = 0.5 * rate / (1.0 - rate) * (w * w * (X * X).mean(dim=0)).sum()
    return mc, (plain + penalty).item()
