"""Combining the final models of several runs: the paper's 1× ensemble ▲ and weight average ★.

The runs of one group (same dataset, held-out domain and method; different hyper-parameters or
seeds) share their data splits, so their final models are evaluated on the same splits. Three
combinations, each selected and reported like a single run:

    ``ens_1x``:   mean predicted probabilities of the final models;
    ``soup_1x``:  the uniform average of their weights (DiWA / uniform soup);
    ``greedy_1x``: the greedy soup, selected on the training domains' validation accuracy only.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vldlib.averaging import greedy_soup, uniform_soup
from vldlib.backbones import create_model
from vldlib.config import Config
from vldlib.data import get_dataset
from vldlib.ensembles import combine
from vldlib.evaluate import split_accuracies, split_logits, summarise
from vldlib.runs import RunDir, load_checkpoint


def combine_runs(
    run_dirs: Sequence[str | Path], configs: Sequence[Config], device: str = "cpu"
) -> list[dict[str, Any]]:
    """Evaluate the 1× ensemble, uniform soup and greedy soup of the final models of ``run_dirs``.

    Returns one record per combination with ``iid_acc`` (mean over the training domains'
    validation splits), ``ood_acc`` (held-out domain) and per-domain ``acc``.
    """
    from vldlib.train import build_splits

    first = configs[0]
    keys = ("dataset", "test_env", "split_seed", "train_domain_size", "test_domain_size")
    if any(getattr(c, k) != getattr(first, k) for c in configs for k in keys):
        raise ValueError(f"runs to combine must share {', '.join(keys)}")
    data = get_dataset(first.dataset, first.data_dir)
    _, evals = build_splits(first, data)  # augmentation draws are seeded; use the first run's
    train_domains = [d for i, d in enumerate(data.domains) if i != first.test_env]
    test_domain = data.domains[first.test_env]
    dev = torch.device(device)
    model = create_model(first.backbone, len(data.classes), first.dropout, data.channels).to(dev)
    states = [load_checkpoint(RunDir(d).checkpoint_path)["model"] for d in run_dirs]

    def logits_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model.load_state_dict(state)
        return split_logits(model, evals, first.eval_batch_size, dev)

    def record(method: str, scores: dict[str, torch.Tensor], n: int) -> dict[str, Any]:
        acc = split_accuracies(scores, evals)
        return {"method": method, "n_models": n, **summarise(acc, train_domains, test_domain)}

    outputs = [logits_of(s) for s in states]
    ens = {e.name: combine([o[e.name] for o in outputs], "prob") for e in evals}
    records = [record("ens_1x", ens, len(states))]
    records.append(record("soup_1x", logits_of(uniform_soup(states)), len(states)))

    val_splits = [e for e in evals if e.name != test_domain]

    def iid_score(m: torch.nn.Module) -> float:  # training domains' validation splits only
        acc = split_accuracies(split_logits(m, val_splits, first.eval_batch_size, dev), val_splits)
        return sum(acc.values()) / len(acc)

    soup, kept, _ = greedy_soup(model, states, iid_score)
    records.append(record("greedy_1x", logits_of(soup), len(kept)))
    return records
