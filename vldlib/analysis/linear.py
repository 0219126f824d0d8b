"""Linear fine-tuning (§4.3, Eq. 1; Figs. 9 and 10): re-weight the frozen residual-sum parts of Φ.

Around the pre-trained weights w0, fine-tuning is close to linear, and the short residual paths
dominate. The paper therefore approximates fine-tuning by

    Φ̃(x) = Σ_i v_i ⊙ φ_i(x; w0),        y = V·dropout(Φ̃(x)) + b,

where φ_i are the pooled contributions of the blocks after the last resolution change and only
v, V and b are trained, with dropout on Φ̃. Very large dropout should then cost little, as it
only re-weights features that already exist.

Here the parts are those of ``decomposition.block_contributions``: the stage's entry (everything
before the last stage) is its own term, with its own v_0, followed by one term per block. With every
v_i = 1 they sum to Φ exactly, so Eq. 1 with v = 1 and a model's head is that model (a test checks
it). The parts are computed once per split, so training is a few seconds of small matrix products.
Training follows ``vldlib.train``: the same data splits and evaluation inputs, the same steps,
batches of ``batch_size_per_domain`` per training domain, SGD with momentum, weight decay and
learning-rate milestones, V and b initialised as a full fine-tuning run of the same seed, and
selection by training-domain validation (``iid``) or at the last step (``last``, Fig. 10).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vldlib.analysis.decomposition import block_contributions
from vldlib.analysis.models import pretrained_model
from vldlib.collect import finished_runs
from vldlib.config import Config, make_config
from vldlib.data import MultiDomainData, get_dataset
from vldlib.data.splits import seed_hash
from vldlib.data.transforms import eval_transform, train_transform
from vldlib.errors import ConfigError
from vldlib.evaluate import accuracy, select_by_iid, summarise
from vldlib.heads import VeryLargeDropoutHead

# Paper App. A: linear fine-tuning uses the weight decays {1e-2, 5e-3}.
LINEAR_WEIGHT_DECAYS = (1e-2, 5e-3)


class LinearFineTuneHead(nn.Module):
    """Eq. 1: y = V·dropout(Σ_i v_i ⊙ φ_i) + b, on precomputed parts φ_i.

    Args:
        n_parts: number of parts (the entry and the last-stage blocks).
        num_features: width D of Φ.
        num_classes: outputs of V.
        drop_rate: λ, dropout on Φ̃.
    """

    def __init__(self, n_parts: int, num_features: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.ones(n_parts, num_features))
        self.head = VeryLargeDropoutHead(num_features, num_classes, drop_rate)

    def get_classifier(self) -> nn.Module:  # the "last layer" of ``train.make_optimizer``
        return self.head.fc

    def forward(self, parts: torch.Tensor) -> torch.Tensor:
        return self.head((self.v * parts).sum(dim=1))  # (B, P, D) → (B, C)


@dataclass
class Features:
    """The frozen parts of every split of one (config, held-out domain), computed once.

    ``train[d]`` is (views, N_d, P, D) for training domain d, ``evals[name]`` is (N, P, D) for each
    evaluation split of ``vldlib.train.build_splits`` (training domains' validation splits and the
    held-out domain), ``init_head`` the state of the head a full fine-tuning run starts from.
    """

    parts: list[str]
    train: list[torch.Tensor]
    train_targets: list[torch.Tensor]
    evals: dict[str, torch.Tensor]
    eval_targets: dict[str, torch.Tensor]
    train_domains: list[str]
    test_domain: str
    init_head: dict[str, torch.Tensor]


@torch.no_grad()
def stacked_parts(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The parts of Φ on the batch ``x`` (entry, then each block), stacked: (B, P, D) float32."""
    _, entry, contributions = block_contributions(model, x)
    return torch.stack([entry, *contributions], dim=1).float()  # (B, P, D)


def extract_features(
    config: Config,
    data: MultiDomainData | None = None,
    views: int = 1,
    progress: bool = False,
) -> Features:
    """Parts φ_i of the pre-trained backbone of ``config`` on every split of its held-out domain.

    Args:
        config: the run config (backbone, weights, held-out domain, split sizes, seed).
        data: the dataset, if already loaded.
        views: 1 reads each training image once, unaugmented; k > 1 reads k seeded augmented
            copies (``config.augment``) and each step picks one at random.
        progress: show a progress bar.
    """
    from vldlib.train import build_splits

    if views < 1:
        raise ConfigError(f"views must be >= 1, got {views}")
    data = data or get_dataset(config.dataset, config.data_dir)
    pools, evals = build_splits(config, data)
    model = pretrained_model(config, data)
    size = config.image_size or data.image_size
    # deviation from paper: the parts are computed once, so training sees no per-step
    # augmentation (views=1: none; views=k: k fixed augmented copies of each image).
    tf = (
        eval_transform(size, data.channels)
        if views == 1
        else train_transform(size, data.channels, config.augment)
    )
    bs = config.eval_batch_size
    train, targets = [], []
    for d, (env, idx) in enumerate(tqdm(pools, disable=not progress, desc="features")):
        per_view = []
        for view in range(views):
            chunks = []
            for start in range(0, len(idx), bs):
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed_hash(config.seed, "linear-view", d, view, start))
                    x = torch.stack([tf(env[int(i)][0]) for i in idx[start : start + bs]])
                chunks.append(stacked_parts(model, x))
            per_view.append(torch.cat(chunks))
        train.append(torch.stack(per_view))
        targets.append(torch.as_tensor(env.targets[idx]))
    test_domain = data.domains[config.test_env]
    return Features(
        parts=["entry", *(f"block{k}" for k in range(1, train[0].shape[2]))],
        train=train,
        train_targets=targets,
        evals={e.name: torch.cat([stacked_parts(model, x) for x in e.batches(bs)]) for e in evals},
        eval_targets={e.name: e.targets for e in evals},
        train_domains=[d for d in data.domains if d != test_domain],
        test_domain=test_domain,
        init_head={k: v.clone() for k, v in model.get_classifier().state_dict().items()},
    )


class _StepSampler:
    """Step t's batch: ``batch_size`` indices per training domain, a fresh seeded permutation of
    each domain per pass, as ``vldlib.train.StepBatches`` orders images."""

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int) -> None:
        self.sizes, self.batch_size, self.seed = list(sizes), batch_size, seed
        self._perm: dict[tuple[int, int], np.ndarray] = {}

    def _order(self, d: int, epoch: int) -> np.ndarray:
        if (d, epoch) not in self._perm:
            rng = np.random.default_rng(seed_hash(self.seed, "linear-order", d, epoch))
            self._perm[d, epoch] = rng.permutation(self.sizes[d])
        return self._perm[d, epoch]

    def __call__(self, d: int, step: int) -> np.ndarray:
        n, b = self.sizes[d], self.batch_size
        return np.array([self._order(d, k // n)[k % n] for k in range(step * b, (step + 1) * b)])


@dataclass
class LinearFit:
    """A linear fine-tuning run: the head at the last step, the state selected by training-domain
    validation, and one record per evaluation (step, train_loss, lr, iid_acc, ood_acc, acc)."""

    head: LinearFineTuneHead
    selected_state: dict[str, torch.Tensor]
    records: pd.DataFrame


def fit_linear(
    features: Features, config: Config, train_v: bool = True, progress: bool = False
) -> LinearFit:
    """Train Eq. 1 on precomputed parts with the optimisation settings of ``config``.

    Uses ``steps``, ``lr``, ``lr_milestones``, ``lr_gamma``, ``momentum``, ``weight_decay`` (on
    v, V and b, as SGD applies it to all parameters in the paper), ``last_layer_lr_factor`` (on V
    and b), ``batch_size_per_domain``, ``eval_every``, ``dropout`` and ``seed``.

    Args:
        features: from ``extract_features``.
        config: the optimisation settings.
        train_v: False keeps v = 1, which makes this a linear probe of Φ (V and b only).
        progress: show a progress bar.
    """
    from vldlib.train import make_optimizer

    n_parts, width = features.evals[features.test_domain].shape[1:]
    n_classes = features.init_head["weight"].shape[0]
    head = LinearFineTuneHead(n_parts, width, n_classes, config.dropout)
    head.head.fc.load_state_dict(features.init_head)
    head.v.requires_grad_(train_v)
    optimizer = make_optimizer(head, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(config.lr_milestones), config.lr_gamma
    )
    sampler = _StepSampler(
        [t.shape[1] for t in features.train], config.batch_size_per_domain, config.seed
    )
    view_rng = np.random.default_rng(seed_hash(config.seed, "linear-views"))
    records: list[dict[str, Any]] = []
    best: tuple[float, dict[str, torch.Tensor]] = (-1.0, {})
    loss_sum = 0.0
    # Dropout masks come from torch's global RNG: seed it here and restore it afterwards.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_hash(config.seed, "linear-dropout"))
        for step in tqdm(range(1, config.steps + 1), disable=not progress, desc="linear"):
            xs, ys = [], []
            for d, (feats, targets) in enumerate(
                zip(features.train, features.train_targets, strict=True)
            ):
                idx = sampler(d, step - 1)
                idx = torch.from_numpy(idx)
                view = torch.from_numpy(view_rng.integers(feats.shape[0], size=len(idx)))
                xs.append(feats[view, idx])
                ys.append(targets[idx])
            head.train()
            loss = F.cross_entropy(head(torch.cat(xs)), torch.cat(ys))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item()
            if step % config.eval_every and step != config.steps:
                continue
            n_steps = step - (records[-1]["step"] if records else 0)
            record = {
                "step": step,
                "train_loss": loss_sum / n_steps,
                "lr": optimizer.param_groups[0]["lr"],
                **summarise(
                    evaluate_head(head, features), features.train_domains, features.test_domain
                ),
            }
            records.append(record)
            if record["iid_acc"] > best[0]:  # ties keep the earliest step, as select_by_iid
                best = (record["iid_acc"], {k: v.clone() for k, v in head.state_dict().items()})
            loss_sum = 0.0
    return LinearFit(head, best[1], pd.DataFrame(records))


@torch.no_grad()
def evaluate_head(head: nn.Module, features: Features) -> dict[str, float]:
    """Accuracy of ``head`` (in eval mode: no dropout) on every evaluation split, by name."""
    was_training = head.training
    head.eval()
    acc = {n: accuracy(head(x), features.eval_targets[n]) for n, x in features.evals.items()}
    head.train(was_training)
    return acc


def selected_and_last(records: pd.DataFrame) -> list[dict[str, Any]]:
    """Two rows of a run's records: the step selected by training-domain validation (``iid``,
    the paper's protocol, Fig. 9) and the last step (``last``, no selection, Fig. 10)."""
    rows = records.to_dict("records")
    picked = {"iid": select_by_iid(rows), "last": max(rows, key=lambda r: r["step"])}
    return [
        {"selection": s, "step": r["step"], "iid_acc": r["iid_acc"], "ood_acc": r["ood_acc"]}
        for s, r in picked.items()
    ]


def linear_sweep(
    profile: str,
    seeds: Sequence[int],
    dropouts: Sequence[float],
    test_envs: Sequence[int],
    weight_decays: Sequence[float] = LINEAR_WEIGHT_DECAYS,
    views: int = 1,
    progress: bool = True,
    **overrides: Any,
) -> pd.DataFrame:
    """Linear fine-tuning on every (held-out domain, seed, weight decay, dropout).

    The parts are extracted once per (held-out domain, seed), as the validation splits'
    augmentation is seeded by the run's seed. Other settings come from ``profile`` and
    ``overrides`` (as ``vldlib.sweeps.grid``).

    Returns:
        One row per run and selection: kind (``linear``), test_env, test_domain, dropout, seed,
        weight_decay, selection (``iid`` or ``last``), step, iid_acc, ood_acc, final_train_loss.
    """
    data = None
    rows = []
    jobs = [(t, s) for t in test_envs for s in seeds]
    for test_env, seed in tqdm(jobs, disable=not progress, desc="linear sweep"):
        base = make_config(profile, test_env=test_env, seed=seed, **overrides)
        data = data or get_dataset(base.dataset, base.data_dir)
        features = extract_features(base, data, views)
        for wd in weight_decays:
            for p in dropouts:
                config = make_config(
                    profile, test_env=test_env, seed=seed, weight_decay=wd, dropout=p, **overrides
                )
                records = fit_linear(features, config).records
                for row in selected_and_last(records):
                    rows.append(
                        {
                            "kind": "linear",
                            "test_env": test_env,
                            "test_domain": features.test_domain,
                            "dropout": p,
                            "seed": seed,
                            "weight_decay": wd,
                            **row,
                            "final_train_loss": records.train_loss.iloc[-1],
                        }
                    )
    return pd.DataFrame(rows)


def full_finetuning_results(root: str | Path) -> pd.DataFrame:
    """The same rows as ``linear_sweep`` (kind ``full``) for the finished full fine-tuning runs
    under ``root``, read from their ``model`` records, to set beside linear fine-tuning."""
    rows = []
    for config, run in finished_runs(root):
        records = pd.DataFrame(
            [r for r in run.records() if not r.get("final") and r["method"] == "model"]
        )
        final = run.final_record()
        for row in selected_and_last(records):
            rows.append(
                {
                    "kind": "full",
                    "test_env": config["test_env"],
                    "test_domain": final["test_domain"],
                    "dropout": config["dropout"],
                    "seed": config["seed"],
                    "weight_decay": config["weight_decay"],
                    **row,
                    "final_train_loss": records.train_loss.iloc[-1],
                }
            )
    return pd.DataFrame(rows)
