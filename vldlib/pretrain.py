"""Pre-training of the embedded benchmark's backbones: our CPU-sized stand-ins for ImageNet weights.

The paper contrasts two ImageNet ResNet50s (§4.4, Fig. 8): "#1", trained with the plain recipe of
He et al. (2016), and "#2", trained with a richer recipe (TrivialAugment, random erasing, label
smoothing, longer schedule). We mirror that with two pre-trainings of ``vldnet`` on the same budget
of images seen:

    ``plain``: MNIST digits (10 classes), small random shifts only.
    ``rich``:  digits + Fashion-MNIST + font-rendered letters (72 classes), random rotations,
               scalings and shifts, inversions, random erasing and label smoothing.

Neither label space is the fine-tuning task's (animal silhouettes), as ImageNet's is not PACS's.
"""

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vldlib.backbones import VLDNet, save_weights
from vldlib.data.embedded import pretraining_data, pretraining_eval_data
from vldlib.errors import ConfigError
from vldlib.evaluate import accuracy, predict
from vldlib.runs import atomic_write_json

log = logging.getLogger(__name__)

RECIPES: dict[str, dict[str, Any]] = {
    "plain": dict(shift=2 / 28, rotate=0.0, scale=0.0, invert=0.0, erase=0.0, smoothing=0.0),
    "rich": dict(shift=3 / 28, rotate=20.0, scale=0.2, invert=0.2, erase=0.25, smoothing=0.1),
}


def augment_batch(x: torch.Tensor, recipe: dict[str, float], gen: torch.Generator) -> torch.Tensor:
    """Per-image random affine warp, inversion and erasing of a uint8 batch (B, 1, H, W).

    Vectorised with ``affine_grid``: torchvision's per-image transforms cost 7-12 ms per 28-px
    image on a CPU, more than the training step itself. Returns floats in [0, 1].
    """
    b = len(x)
    x = x.float() / 255.0

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=gen) * (hi - lo) + lo

    angle = torch.deg2rad(uniform(-recipe["rotate"], recipe["rotate"]))
    scale = uniform(1 - recipe["scale"], 1 + recipe["scale"])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift = 2 * recipe["shift"]  # affine_grid coordinates span [-1, 1]
    theta = torch.stack(
        [
            torch.stack([cos, -sin, uniform(-shift, shift)], 1),
            torch.stack([sin, cos, uniform(-shift, shift)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    flip = (torch.rand(b, generator=gen) < recipe["invert"]).view(b, 1, 1, 1)
    x = torch.where(flip, 1 - x, x)
    if recipe["erase"] > 0:  # one random square of side 6-12 px per erased image
        side = torch.randint(6, 13, (b,), generator=gen)
        cy, cx = (torch.randint(0, x.shape[-1], (2, b), generator=gen)).unbind(0)
        ys = torch.arange(x.shape[-2]).view(1, -1, 1)
        xs = torch.arange(x.shape[-1]).view(1, 1, -1)
        box = ((ys - cy.view(-1, 1, 1)).abs() * 2 < side.view(-1, 1, 1)) & (
            (xs - cx.view(-1, 1, 1)).abs() * 2 < side.view(-1, 1, 1)
        )
        erase = (torch.rand(b, generator=gen) < recipe["erase"]).view(-1, 1, 1)
        x = x.masked_fill((box & erase).unsqueeze(1), 0.0)
    return x


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5  # the fine-tuning data's normalisation


def pretrain(
    kind: str,
    output: str | Path,
    samples: int = 300_000,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``vldnet`` from scratch on a pre-training set and save it as safetensors.

    Args:
        kind: ``rich`` or ``plain`` (see the module docstring).
        output: the ``.safetensors`` file to write; a JSON card with the same stem goes beside it.
        samples: training images seen (the same budget for both kinds).
        batch_size, lr, weight_decay: SGD (momentum 0.9, Nesterov), one-cycle schedule.
        seed: seeds initialisation, order and augmentation.

    Returns:
        The card: recipe, classes, held-out accuracy on the pre-training task, time, file hash.
    """
    if kind not in RECIPES:
        raise ConfigError(f"unknown pre-training kind {kind!r}; use one of {', '.join(RECIPES)}")
    torch.manual_seed(seed)
    images, labels, classes = pretraining_data(kind)
    test_x, test_y, _ = pretraining_eval_data(kind)
    model = VLDNet(num_classes=len(classes), drop_rate=0.0, in_chans=1)
    steps = math.ceil(samples / batch_size)
    opt = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    recipe = RECIPES[kind]
    gen = torch.Generator().manual_seed(seed)

    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(images), generator=gen)
    pos = 0
    for _ in tqdm(range(steps), disable=not progress, desc=f"pretrain {kind}"):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        x = augment_batch(images[idx], recipe, gen)
        loss = F.cross_entropy(
            model(_normalise(x)), labels[idx], label_smoothing=recipe["smoothing"]
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start

    logits = predict(model, _normalise(test_x.float() / 255.0).split(512), torch.device("cpu"))
    output = Path(output)
    save_weights(model, output)
    card = {
        "kind": kind,
        "recipe": RECIPES[kind],
        "n_classes": len(classes),
        "n_train_images": len(images),
        "samples_seen": steps * batch_size,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "seed": seed,
        "test_accuracy": accuracy(logits, test_y),
        "n_test_images": len(test_y),
        "seconds": round(seconds, 1),
        "sha256": hashlib.sha256(output.read_bytes()).hexdigest(),
    }
    atomic_write_json(output.with_suffix(".json"), card)
    log.info("pretrained %s: test accuracy %.4f in %.0f s", kind, card["test_accuracy"], seconds)
    return card


def read_card(weights: str | Path) -> dict[str, Any]:
    return json.loads(Path(weights).with_suffix(".json").read_text())
