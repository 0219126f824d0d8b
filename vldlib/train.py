"""Fine-tuning with very large dropout: the paper's loop, resumable and deterministic.

Each step draws ``batch_size_per_domain`` images from every training domain, concatenates them, and
takes one SGD step on the cross-entropy, with BatchNorm statistics frozen and the learning rate
divided by 10 at each milestone. Every ``eval_every`` steps (and at the last step) the model is
evaluated on the training domains' validation splits and on the held-out domain, one record per
method is appended to results.jsonl and a checkpoint is saved. The methods are the model itself
(``model``) and, riding along the same trajectory, its running weight average (``traj_avg``) and
the ensemble of its checkpoints (``traj_ens``). Each method's selected step is the one with its best
training-domain validation accuracy.

Exact resume: the images of step t, their augmentation and the data order are a pure function of
(seed, t), and the checkpoint holds the model, optimiser, scheduler and RNG states, so a run killed
at any point and restarted with the same command ends with the same results, bit for bit on a CPU.

Fast path (``FastPath``): on CUDA a run by default uses bf16 autocast, channels_last tensors,
pinned-memory loaders with worker processes, training images decoded once into memory, and
evaluation batches of at least 1024; ``compile`` adds torch.compile. On a CPU all are off by
default, so CPU runs compute exactly what they always did; asked for explicitly, each applies on a
CPU too (bf16 autocast is CPU autocast), and a request the device cannot honour is a ConfigError.
"""

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from vldlib.averaging import TrajectoryAverage
from vldlib.backbones import create_model, load_weights, set_batchnorm_eval
from vldlib.config import Config
from vldlib.data import MultiDomainData, get_dataset
from vldlib.data.domainbed import decode_into_memory
from vldlib.data.splits import seed_hash, split_indices, subsample
from vldlib.data.transforms import eval_transform, train_transform
from vldlib.ensembles import TrajectoryEnsemble
from vldlib.errors import ConfigError, DivergedError, VldlibError
from vldlib.evaluate import select_by_iid, split_accuracies, split_logits, summarise
from vldlib.runs import RunDir, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

EVAL_CACHE_BYTES = 2 << 30  # evaluation inputs are transformed once and kept if they fit
CUDA_EVAL_BATCH = 1024  # the fast path's smallest evaluation batch
MAX_WORKERS = 16  # data-loading processes per run on CUDA


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available; use cpu")
    return torch.device(name)


@dataclass(frozen=True)
class FastPath:
    """How a run executes on its device: the config's execution fields with ``auto`` resolved."""

    amp: bool  # bf16 autocast of forward passes (the loss and the weights stay fp32)
    channels_last: bool
    compile: bool
    num_workers: int
    pin_memory: bool
    eval_batch_size: int
    cache_images: bool

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        on = [k for k in ("amp", "channels_last", "compile", "cache_images") if getattr(self, k)]
        return (
            f"fast path: {', '.join(on) or 'off'}; {self.num_workers} loader workers, "
            f"eval batch {self.eval_batch_size}"
        )


def fast_path(config: Config, device: torch.device) -> FastPath:
    """Resolve the execution fields for ``device``: ``auto`` is on for CUDA, off for CPU."""
    cuda = device.type == "cuda"

    def switch(value: str) -> bool:
        return cuda if value == "auto" else value != "off"

    amp = switch(config.amp)
    if amp and cuda and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        if config.amp == "bf16":
            raise ConfigError(f"amp='bf16' asked for, but {device} has no bfloat16; use amp=off")
        amp = False  # auto: a pre-Ampere GPU runs in fp32
    workers = config.num_workers
    if workers is None:
        workers = min(MAX_WORKERS, len(os.sched_getaffinity(0)) - 1) if cuda else 0
    return FastPath(
        amp=amp,
        channels_last=switch(config.channels_last),
        compile=config.compile,
        num_workers=max(workers, 0),
        pin_memory=cuda,
        eval_batch_size=max(config.eval_batch_size, CUDA_EVAL_BATCH if cuda else 0),
        cache_images=switch(config.cache_images),
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StepBatches(torch.utils.data.Dataset):
    """Item t is step t's training batch: ``batch_size`` images of each training domain.

    Data order: a fresh seeded permutation of each domain per pass. Augmentation: torch's RNG is
    seeded from (seed, t) while the batch is built. Both depend on t alone, so resuming at step t
    or loading with worker processes gives the same batches.
    """

    def __init__(
        self,
        domains: Sequence[tuple[torch.utils.data.Dataset, np.ndarray]],
        batch_size: int,
        transform: Callable,
        seed: int,
    ) -> None:
        self.domains = domains
        self.batch_size = batch_size
        self.transform = transform
        self.seed = seed
        self._perm: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return 2**62

    def _order(self, d: int, epoch: int) -> np.ndarray:
        if (d, epoch) not in self._perm:
            self._perm = {k: v for k, v in self._perm.items() if k[0] != d}  # keep one per domain
            rng = np.random.default_rng(seed_hash(self.seed, "order", d, epoch))
            self._perm[d, epoch] = rng.permutation(len(self.domains[d][1]))
        return self._perm[d, epoch]

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_hash(self.seed, "augment", step))
            for d, (dataset, indices) in enumerate(self.domains):
                n = len(indices)
                for k in range(step * self.batch_size, (step + 1) * self.batch_size):
                    x, y = dataset[int(indices[self._order(d, k // n)[k % n]])]
                    xs.append(self.transform(x))
                    ys.append(y)
        return torch.stack(xs), torch.tensor(ys)


@dataclass
class EvalSet:
    """One domain's evaluation split: inputs transformed once (seeded), and its labels.

    The transform's random draws are seeded per ``chunk`` images (the config's
    ``eval_batch_size``), so the inputs do not depend on the batch size they are evaluated in.
    """

    name: str
    dataset: torch.utils.data.Dataset
    indices: np.ndarray
    transform: Callable
    seed: int
    targets: torch.Tensor
    chunk: int = 256
    cached: torch.Tensor | None = None

    def _chunks(self) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.indices), self.chunk):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_hash(self.seed, "eval", self.name, start))
                chunk = self.indices[start : start + self.chunk]
                yield torch.stack([self.transform(self.dataset[int(i)][0]) for i in chunk])

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        if self.cached is not None:
            yield from self.cached.split(batch_size)
            return
        rest = torch.empty(0)
        for chunk in self._chunks():
            joined = torch.cat([rest, chunk]) if len(rest) else chunk
            full = len(joined) // batch_size * batch_size
            if full:
                yield from joined[:full].split(batch_size)
            rest = joined[full:]
        if len(rest):
            yield rest

    def cache_if_small(self, sample_bytes: int) -> None:
        if sample_bytes * len(self.indices) <= EVAL_CACHE_BYTES:
            self.cached = torch.cat(list(self._chunks()))


def build_splits(
    config: Config, data: MultiDomainData
) -> tuple[list[tuple[Any, np.ndarray]], list[EvalSet]]:
    """Training pools and evaluation splits for leave-one-domain-out.

    Each training domain is (optionally) subsampled to ``train_domain_size`` and split 80/20
    with ``split_seed``; the held-out domain is evaluated on all its images, or on a fixed subset of
    ``test_domain_size`` of them.
    """
    size = config.image_size or data.image_size
    val_tf = train_transform(size, data.channels, config.augment and config.augment_val)
    test_tf = eval_transform(size, data.channels)
    chunk = config.eval_batch_size
    pools, evals = [], []
    for i, (name, env) in enumerate(zip(data.domains, data.envs, strict=True)):
        if i == config.test_env:
            idx = subsample(len(env), config.test_domain_size, config.split_seed, i)
            targets = torch.as_tensor(env.targets[idx])
            evals.append(EvalSet(name, env, idx, test_tf, config.seed, targets, chunk))
            continue
        keep = subsample(len(env), config.train_domain_size, config.split_seed, i)
        tr, va = split_indices(len(keep), config.holdout_fraction, config.split_seed, i)
        pools.append((env, keep[tr]))
        targets = torch.as_tensor(env.targets[keep[va]])
        evals.append(EvalSet(name, env, keep[va], val_tf, config.seed, targets, chunk))
    return pools, evals


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.SGD:
    """SGD with momentum; the classifier's learning rate is ``last_layer_lr_factor`` × lr."""
    head = {id(p) for p in model.get_classifier().parameters()}
    trunk = [p for p in model.parameters() if id(p) not in head]
    groups = [
        {"params": trunk, "lr": config.lr},
        {
            "params": list(model.get_classifier().parameters()),
            "lr": config.lr * config.last_layer_lr_factor,
        },
    ]
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def prepare_model(
    model: nn.Module, config: Config, fast: FastPath, device: torch.device
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.optim.SGD, Any]:
    """Move ``model`` to ``device`` (channels_last if asked) and return its forward function
    (compiled if asked), SGD optimiser and step-decay schedule."""
    model.to(device)
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if fast.compile else model
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(config.lr_milestones), config.lr_gamma
    )
    return forward, optimizer, scheduler


def make_loader(steps: StepBatches, start: int, stop: int, fast: FastPath) -> Iterable:
    """The batches of steps ``start`` to ``stop - 1``, built in ``fast.num_workers`` processes."""
    return torch.utils.data.DataLoader(
        steps,
        batch_size=None,
        sampler=range(start, stop),
        num_workers=fast.num_workers,
        pin_memory=fast.pin_memory,
        generator=torch.Generator(),  # else creating the iterator draws from the global RNG
    )


def training_step(
    model: nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch: tuple[torch.Tensor, torch.Tensor],
    config: Config,
    fast: FastPath,
    device: torch.device,
) -> float:
    """One step of the loop: move the batch, forward, and, if the loss is finite, one SGD update
    and one scheduler step. Returns the loss; a non-finite loss leaves the model untouched.

    ``forward`` is ``model`` itself or its compiled version.
    """
    model.train()
    if config.freeze_bn:
        set_batchnorm_eval(model)
    x, y = batch
    layout = torch.channels_last if fast.channels_last and x.ndim == 4 else torch.preserve_format
    x = x.to(device, non_blocking=True, memory_format=layout)
    y = y.to(device, non_blocking=True)
    with fast.autocast(device):
        loss = F.cross_entropy(forward(x), y)
    value = loss.item()
    if not math.isfinite(value):
        return value
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return value


def _rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, gauss_next = state["python"]
    random.setstate((3, tuple(keys), gauss_next))
    np_keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np_keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _format(records: list[dict[str, Any]]) -> str:
    model, *others = records
    line = (
        f"step {model['step']} | loss {model['train_loss']:.4f} | iid_acc "
        f"{model['iid_acc']:.4f} | ood_acc {model['ood_acc']:.4f} | lr {model['lr']:.1e} | "
        f"s/step {model['s_per_step']:.3f}"
    )
    return line + "".join(f" | {r['method']}_ood {r['ood_acc']:.4f}" for r in others)


def _kept(run: RunDir) -> str:
    if run.checkpoint_path.exists():
        last = load_checkpoint(run.checkpoint_path)["step"]
        where = f"its last good checkpoint (step {last}) is kept in {run.path}"
    else:
        where = f"no checkpoint was saved yet, so it restarts from step 0 in {run.path}"
    return f"the run stopped and {where}. Lower lr or check the inputs"


def _unwrapped(loader: Iterable) -> Iterator:
    """Iterate ``loader``; a VldlibError from a DataLoader worker keeps its own one-line message
    (torch re-raises it with the worker's traceback as the message)."""
    try:
        yield from loader
    except VldlibError as e:
        text = str(e)
        if "Original Traceback" not in text:
            raise
        marker = f"{type(e).__module__}.{type(e).__name__}: "
        raise type(e)(text.rsplit(marker, 1)[-1].strip()) from None


def train(
    config: Config,
    output_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    data: MultiDomainData | None = None,
) -> dict[str, Any]:
    """Fine-tune one model and return its final record (the step selected by i.i.d. validation).

    Args:
        config: the run's resolved config.
        output_dir: the run folder (see ``vldlib.runs``); an unfinished run there is resumed.
        overwrite: discard a finished run or one with another config in ``output_dir``.
        progress: show a progress bar.
        data: the dataset, if already loaded (else ``get_dataset(config.dataset, data_dir)``).
    """
    data = data or get_dataset(config.dataset, config.data_dir)
    if config.test_env >= len(data.domains):
        raise ConfigError(
            f"test_env {config.test_env} is out of range for {data.name}, whose domains are "
            + ", ".join(f"{i}={d}" for i, d in enumerate(data.domains))
        )
    pools, evals = build_splits(config, data)  # bad sizes fail here, before any file is written
    device = resolve_device(config.device)
    # 1) model and optimiser, seeded: a bad backbone or weights file fails before any write
    seed_everything(config.seed)
    model = create_model(config.backbone, len(data.classes), config.dropout, data.channels)
    load_weights(model, config.weights)
    run = RunDir(output_dir)
    status = run.prepare(config, overwrite)
    if status == "done":
        log.info("%s is already finished; pass --overwrite to redo it", run.path)
        return run.final_record()

    fast = fast_path(config, device)
    log.info("%s on %s", fast.describe(), device)
    size = config.image_size or data.image_size
    for e in evals:
        e.cache_if_small(4 * data.channels * size * size)
    if fast.cache_images:
        decode_into_memory(pools)
    forward, optimizer, scheduler = prepare_model(model, config, fast, device)
    train_tf = train_transform(size, data.channels, config.augment)
    steps = StepBatches(pools, config.batch_size_per_domain, train_tf, config.seed)
    average = ensemble = None
    if config.trajectory_baselines:
        average = TrajectoryAverage(model, config.average_start, config.average_every)
        ensemble = TrajectoryEnsemble(config.average_start, config.ensemble_mode)

    # 2) resume from the last checkpoint, dropping records written after it
    start, loss_sum, loss_n = 0, 0.0, 0
    if status == "resume":
        state = load_checkpoint(run.checkpoint_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        if average is not None:
            average.load_state_dict(state["average"])
            ensemble.load_state_dict(state["ensemble"])
        start = int(state["step"])
        run.truncate_after(start)
        log.info("resuming %s from step %d", run.path, start)

    loader = make_loader(steps, start, config.steps, fast)
    train_domains = [d for i, d in enumerate(data.domains) if i != config.test_env]
    test_domain = data.domains[config.test_env]

    # 3) the loop
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="fine-tune")
    tick, baseline_seconds = time.perf_counter(), 0.0
    for step, batch in enumerate(_unwrapped(loader), start=start + 1):
        loss = training_step(model, forward, optimizer, scheduler, batch, config, fast, device)
        if not math.isfinite(loss):
            raise DivergedError(f"non-finite loss ({loss}) at step {step}; {_kept(run)}")
        loss_sum, loss_n = loss_sum + loss, loss_n + 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        is_eval = step % config.eval_every == 0 or step == config.steps
        if average is not None:
            t0 = time.perf_counter()
            average.on_step(model, step, is_eval)
            baseline_seconds += time.perf_counter() - t0
        if not is_eval:
            continue
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise DivergedError(f"non-finite weights after the update of step {step}; {_kept(run)}")

        # 4) evaluate the model, then the baselines riding along its trajectory
        with fast.autocast(device):
            logits = split_logits(model, evals, fast.eval_batch_size, device)
        s_per_step = (time.perf_counter() - tick - baseline_seconds) / loss_n
        records = [
            {
                "step": step,
                "method": "model",
                "train_loss": loss_sum / loss_n,
                "lr": optimizer.param_groups[0]["lr"],
                "s_per_step": s_per_step,
                **summarise(split_accuracies(logits, evals), train_domains, test_domain),
            }
        ]
        t0 = time.perf_counter()
        if average is not None and average.n_averaged > 0:
            with fast.autocast(device):
                avg_logits = split_logits(average.module, evals, fast.eval_batch_size, device)
            acc = split_accuracies(avg_logits, evals)
            records.append({"step": step, "method": "traj_avg", "n_models": average.n_averaged})
            records[-1].update(summarise(acc, train_domains, test_domain))
        ens_scores = ensemble.add(step, logits) if ensemble is not None else None
        if ens_scores is not None:
            acc = split_accuracies(ens_scores, evals)
            records.append({"step": step, "method": "traj_ens", "n_models": ensemble.count})
            records[-1].update(summarise(acc, train_domains, test_domain))
        baseline_seconds += time.perf_counter() - t0
        records[0]["s_baselines"] = baseline_seconds  # time the baselines added since last eval
        for record in records:
            run.append(record)
        (bar.write if progress else log.info)(_format(records))
        state = {
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
        }
        if average is not None:
            state |= {"average": average.state_dict(), "ensemble": ensemble.state_dict()}
        save_checkpoint(run.checkpoint_path, state)
        loss_sum, loss_n, tick, baseline_seconds = 0.0, 0, time.perf_counter(), 0.0
    bar.close()

    # 5) per method, selection by training-domain validation; then the done marker
    evals_by_method: dict[str, list[dict[str, Any]]] = {}
    for r in run.records():
        if not r.get("final"):
            evals_by_method.setdefault(r["method"], []).append(r)
    finals = []
    for method, records in evals_by_method.items():
        best = select_by_iid(records)
        finals.append(
            {
                "final": True,
                "method": method,
                "selected_step": best["step"],
                "steps": config.steps,
                "iid_acc": best["iid_acc"],
                "ood_acc": best["ood_acc"],
                "acc": best["acc"],
                "test_domain": test_domain,
                "config_hash": config.hash(),
            }
        )
    run.finish(finals)
    return finals[0]
