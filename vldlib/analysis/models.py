"""The two ends of a fine-tuning run, as models the analyses can compare.

The pre-trained end is the backbone a run started from (``config.weights``, its trunk only: the
pre-training head has other classes); the fine-tuned end is the state in the run's
``checkpoint.pt``. That checkpoint is the run's *last* evaluation (step ``config.steps`` for a
finished run), not its i.i.d.-selected step, which ``vldlib.train`` does not keep.
"""

from pathlib import Path

import torch
from torch import nn

from vldlib.backbones import classifier_prefix, create_model, load_weights
from vldlib.config import Config
from vldlib.data import MultiDomainData, get_dataset
from vldlib.errors import RunError, WeightsError
from vldlib.runs import RunDir, load_checkpoint


def pretrained_model(config: Config, data: MultiDomainData) -> nn.Module:
    """The backbone of ``config`` with its pre-trained trunk and a head for ``data``'s classes.

    The head is initialised exactly as ``vldlib.train`` initialises it for ``config.seed``.
    """
    from vldlib.train import seed_everything

    seed_everything(config.seed)
    model = create_model(config.backbone, len(data.classes), config.dropout, data.channels)
    return load_weights(model, config.weights).eval()


def check_same_architecture(a: nn.Module, b: nn.Module, what: str = "the two models") -> None:
    """WeightsError unless ``a`` and ``b`` have the same trunk parameters and buffers, by name and
    shape (their classifiers may differ in width)."""
    head_a, head_b = classifier_prefix(a), classifier_prefix(b)
    sa = {k: v.shape for k, v in a.state_dict().items() if not k.startswith(head_a)}
    sb = {k: v.shape for k, v in b.state_dict().items() if not k.startswith(head_b)}
    if sa != sb:
        differ = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
        raise WeightsError(
            f"{what} have different architectures ({type(a).__name__} vs {type(b).__name__}; "
            f"{len(differ)} trunk tensors differ, e.g. {differ[:3]}): use a checkpoint fine-tuned "
            "from this backbone"
        )


def load_finetuned(
    run_dir: str | Path, data: MultiDomainData | None = None
) -> tuple[nn.Module, Config, MultiDomainData]:
    """The fine-tuned model of a run folder (its ``checkpoint.pt``), its config and its dataset.

    Raises RunError when the folder has no config or checkpoint, and WeightsError when the
    checkpoint does not fit the backbone its config names.
    """
    run = RunDir(run_dir)
    config = run.stored_config()
    if config is None or not run.checkpoint_path.exists():
        raise RunError(f"{run.path} has no config.json and checkpoint.pt: give a run folder")
    data = data or get_dataset(config.dataset, config.data_dir)
    model = create_model(config.backbone, len(data.classes), config.dropout, data.channels)
    state = load_checkpoint(run.checkpoint_path)["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WeightsError(
            f"{run.checkpoint_path} does not fit the {config.backbone} backbone of its config: "
            f"{str(e).splitlines()[0]}"
        ) from None
    return model.eval(), config, data


@torch.no_grad()
def pooled_features(model: nn.Module, batches: list[torch.Tensor]) -> torch.Tensor:
    """Φ(x) (pooled, before dropout) of every input batch, concatenated: (N, D)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model.forward_features(x).mean(dim=(2, 3)) for x in batches])
    model.train(was_training)
    return out
