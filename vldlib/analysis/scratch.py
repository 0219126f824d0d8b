"""Training from scratch at several dropout rates (App. A.3, Fig. 5).

The paper's control for its linear argument (§3.2): when fine-tuning only re-weights features
that pre-training created, very large dropout is harmless, but a network trained from a random
initialisation must create its features, and there dropout rates above 50% hurt both i.i.d. and
o.o.d. accuracy (VLCS, optimum near 0). The runs are ordinary ``vldlib.train`` runs with
``weights=None``; the paper's learning rates for this experiment are {5e-3, 1e-2}.

BatchNorm statistics stay frozen in the paper's fine-tuning (``freeze_bn``); at a random
initialisation they would be frozen at mean 0 and variance 1 and the network does not learn, so
these runs update them (``freeze_bn=False``). The paper does not say what it did.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from vldlib.config import Config
from vldlib.errors import ConfigError
from vldlib.sweeps import grid, run_local

SCRATCH_DROPOUTS = (0.0, 0.5, 0.9, 0.95)  # Fig. 5
SCRATCH_LRS = (5e-3, 1e-2)  # App. A.3


def scratch_configs(
    profile: str,
    seeds: Sequence[int],
    test_envs: Sequence[int],
    dropouts: Sequence[float] = SCRATCH_DROPOUTS,
    lrs: Sequence[float] | None = None,
    **overrides: Any,
) -> list[Config]:
    """Every (held-out domain, dropout, seed, lr) config trained from a random initialisation.

    Args:
        profile: ``paper``, ``cpu`` or ``smoke`` (their ``weights`` are replaced by None).
        seeds, test_envs, dropouts: the grid, as ``vldlib.sweeps.grid``.
        lrs: learning rates; None keeps the profile's (the paper's are ``SCRATCH_LRS``).
        **overrides: other config fields; ``weights`` and ``freeze_bn`` are fixed here.
    """
    fixed = {"weights", "freeze_bn"} & set(overrides)
    if fixed:
        raise ConfigError(
            f"{', '.join(sorted(fixed))} cannot be overridden: from-scratch runs use weights=None "
            "and freeze_bn=False"
        )
    # deviation from paper: BatchNorm statistics are updated (freeze_bn=False), see module doc.
    overrides |= {"weights": None, "freeze_bn": False}
    lr_grid: Sequence[dict[str, float]] = [{"lr": lr} for lr in lrs] if lrs else [{}]
    return [
        c for lr in lr_grid for c in grid(profile, seeds, dropouts, test_envs, **lr, **overrides)
    ]


def run_scratch(configs: Sequence[Config], root: str | Path, progress: bool = True) -> pd.DataFrame:
    """Run (or read, when finished) every config under ``root`` with ``vldlib.sweeps.run_local``.

    Returns:
        One row per run: test_env, test_domain, dropout, seed, lr, selected_step, steps, iid_acc
        and ood_acc at the step selected by training-domain validation.
    """
    finals = run_local(configs, root, progress)
    rows = []
    for config, final in zip(configs, finals, strict=True):
        rows.append(
            {
                "test_env": config.test_env,
                "test_domain": final["test_domain"],
                "dropout": config.dropout,
                "seed": config.seed,
                "lr": config.lr,
                **{k: final[k] for k in ("selected_step", "steps", "iid_acc", "ood_acc")},
            }
        )
    return pd.DataFrame(rows)
