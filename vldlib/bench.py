"""Throughput of the fine-tuning loop on one device, to size a sweep before launching it.

Four measurements on the same model, optimiser and batches:

1. ``loop``: ``train.training_step`` as the loop calls it (batch moved from host memory, frozen
   BatchNorm, loss check, SGD update, schedule), on batches made beforehand.
2. ``bare``: forward, backward and optimiser step on one batch already on the device, with the
   same fast path (autocast, channels_last, compile). ``loop / bare`` is the loop's overhead.
3. ``data``: the training loader alone (read, decode, augment, collate, in its worker processes).
   It should deliver several times the loop's rate, or the device waits for data.
4. FLOP/s: the step's FLOPs (``torch.utils.flop_counter``: convolutions and matmuls, forward and
   backward) times the loop's rate, as a fraction of a matmul's rate measured on the same device
   in the step's dtype.

No weights or data are downloaded: weights are random (speed does not depend on them), and
without ``data_dir`` a DomainBed dataset is stood in for by generated JPEGs of PACS's size.
"""

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vldlib.backbones import create_model, set_batchnorm_eval
from vldlib.config import make_config
from vldlib.data import MultiDomainData, get_dataset
from vldlib.data.domainbed import DOMAINBED_SPECS, decode_into_memory
from vldlib.data.transforms import train_transform
from vldlib.errors import ConfigError
from vldlib.train import (
    FastPath,
    StepBatches,
    build_splits,
    fast_path,
    make_loader,
    prepare_model,
    resolve_device,
    training_step,
)

STAND_IN_SIZE = 227  # PACS images are 227 × 227 JPEGs


def write_stand_in(root: Path, dataset: str = "PACS", per_class: int = 4, seed: int = 0) -> Path:
    """A DomainBed-layout tree of smooth random JPEGs (``STAND_IN_SIZE`` px) for ``dataset``."""
    spec = next(s for s in DOMAINBED_SPECS if s.name == dataset)
    classes = spec.classes or tuple(f"class{k}" for k in range(spec.n_classes))
    rng = np.random.default_rng(seed)
    for domain in spec.domains:
        for cls in classes:
            folder = root / spec.folder / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # low-frequency noise decodes like a photo; white noise would be far slower
                small = Image.fromarray(rng.integers(0, 256, (29, 29, 3), dtype=np.uint8))
                image = small.resize((STAND_IN_SIZE, STAND_IN_SIZE), Image.BICUBIC)
                image.save(folder / f"{i}.jpg", quality=90)
    return root


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Calls of ``fn`` per second over ``repeats`` calls, after the device has caught up."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _synchronize(device)
    return repeats / (time.perf_counter() - start)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None) -> float:
    """The best FLOP/s of an n × n matmul in ``dtype`` on ``device`` (n: 8192 CUDA, 2048 CPU)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm-up: kernel choice, thread pool
    return max(2 * n**3 * _rate(lambda: a @ b, 3, device) for _ in range(3))


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fast: FastPath) -> int:
    """FLOPs of one forward and backward pass on (x, y), counted on the eager model."""
    with FlopCounterMode(display=False) as counter:
        with fast.autocast(x.device):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _data(config: Any, data_dir: str | None, tmp: str) -> tuple[MultiDomainData, str]:
    """The dataset to time the loader on, and a line saying what it is."""
    if data_dir is not None or config.dataset not in {s.name for s in DOMAINBED_SPECS}:
        data = get_dataset(config.dataset, data_dir)
        return data, f"{data.name} ({data.source})"
    data = get_dataset(config.dataset, write_stand_in(Path(tmp), config.dataset))
    side = STAND_IN_SIZE
    return data, f"generated {side}x{side} JPEGs in {config.dataset}'s layout (pass --data-dir)"


def bench(
    backbone: str = "torchvision/resnet50",
    resolution: int = 224,
    batch: int = 96,
    steps: int = 20,
    warmup: int = 3,
    device: str = "auto",
    data_dir: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Measure the loop, a bare step, the data pipeline and FLOP/s; see the module docstring.

    Args:
        backbone: ``vldnet`` (the ``cpu`` profile: AnimalStyles) or a ``torchvision/``/``timm/``
            name (the ``paper`` profile: PACS, or generated JPEGs without ``data_dir``).
        resolution: image side in pixels.
        batch: images per step, split evenly over the training domains.
        steps: timed steps of each kind; ``warmup`` untimed steps come first.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_dir: the folder holding the DomainBed datasets.
        **overrides: config fields, e.g. ``dataset``, ``amp``, ``compile``, ``num_workers``.
            Weights are random unless given: pre-trained ones run at the same speed.
    """
    if steps < 1 or warmup < 0:
        raise ConfigError(f"bench needs steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    profile = "cpu" if backbone == "vldnet" else "paper"
    with tempfile.TemporaryDirectory() as tmp:
        data, source = _data(make_config(profile, **overrides), data_dir, tmp)
        n_train = len(data.domains) - 1
        if batch % n_train:
            raise ConfigError(f"--batch must be a multiple of {n_train} (training domains)")
        config = make_config(
            profile,
            backbone=backbone,
            image_size=resolution,
            device=device,
            batch_size_per_domain=batch // n_train,
            **({"weights": None, "test_domain_size": None} | overrides),
        )
        dev = resolve_device(config.device)
        fast = fast_path(config, dev)
        pools, _ = build_splits(config, data)
        if fast.cache_images:
            decode_into_memory(pools)
        transform = train_transform(resolution, data.channels, config.augment)
        loader = make_loader(
            StepBatches(pools, config.batch_size_per_domain, transform, config.seed),
            0,
            warmup + steps + 1,
            fast,
        )
        batches = iter(loader)
        first = next(batches)  # worker start-up is not the pipeline's rate
        start = time.perf_counter()
        batches = [first, *batches]
        data_img_s = (warmup + steps) * batch / (time.perf_counter() - start)

    torch.manual_seed(config.seed)
    model = create_model(backbone, len(data.classes), config.dropout, data.channels)
    forward, optimizer, scheduler = prepare_model(model, config, fast, dev)

    def loop_step(b: tuple[torch.Tensor, torch.Tensor]) -> None:
        training_step(model, forward, optimizer, scheduler, b, config, fast, dev)

    for b in batches[:warmup]:
        loop_step(b)
    timed = iter(batches[warmup : warmup + steps])
    loop_img_s = batch * _rate(lambda: loop_step(next(timed)), steps, dev)

    layout = torch.channels_last if fast.channels_last else torch.preserve_format
    x = batches[0][0].to(dev, memory_format=layout)
    y = batches[0][1].to(dev)

    def bare_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with fast.autocast(dev):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    model.train()
    if config.freeze_bn:
        set_batchnorm_eval(model)
    for _ in range(warmup):
        bare_step()
    bare_img_s = batch * _rate(bare_step, steps, dev)

    flop_per_img = step_flops(model, x, y, fast) / batch
    peak = matmul_peak(dev, torch.bfloat16 if fast.amp else torch.float32)
    achieved = flop_per_img * loop_img_s
    return {
        "backbone": backbone,
        "resolution": resolution,
        "batch": batch,
        "steps": steps,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "fast_path": fast.describe(),
        "data_source": source,
        "loop_img_s": loop_img_s,
        "bare_img_s": bare_img_s,
        "loop_over_bare": loop_img_s / bare_img_s,
        "data_img_s": data_img_s,
        "data_over_loop": data_img_s / loop_img_s,
        "gflop_per_img": flop_per_img / 1e9,
        "achieved_tflop_s": achieved / 1e12,
        "peak_tflop_s": peak / 1e12,
        "peak_fraction": achieved / peak,
    }


def report(r: dict[str, Any]) -> str:
    """The measurements as labelled lines, with the goals they are read against."""
    return "\n".join(
        [
            f"{r['backbone']} at {r['resolution']} px, batch {r['batch']}, {r['steps']} timed "
            f"steps on {r['device']} ({r['threads']} threads); {r['fast_path']}",
            f"loop  {r['loop_img_s']:10.1f} img/s  training_step as the loop runs it",
            f"bare  {r['bare_img_s']:10.1f} img/s  forward/backward/step on device-resident "
            "tensors",
            f"      loop / bare = {r['loop_over_bare']:.2f} (goal >= 0.9)",
            f"data  {r['data_img_s']:10.1f} img/s  training loader alone; "
            f"{r['data_over_loop']:.1f}x the loop (goal >= 3)",
            f"      data: {r['data_source']}",
            f"FLOPs {r['gflop_per_img']:.2f} GFLOP/img (forward + backward): "
            f"{r['achieved_tflop_s'] * 1e3:.1f} GFLOP/s = {r['peak_fraction']:.1%} of a measured "
            f"matmul peak of {r['peak_tflop_s'] * 1e3:.1f} GFLOP/s",
        ]
    )
