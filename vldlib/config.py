"""The fine-tuning protocol as one frozen dataclass whose defaults are the paper's values.

Profiles override sizes, never logic: ``paper`` is the defaults (ImageNet ResNet50 on DomainBed),
``cpu`` is the embedded benchmark that the book runs on two cores, ``smoke`` is the same at a size
for tests. Overrides are validated: an unknown key, a wrong type or an out-of-range value is a
ConfigError naming the key and what it accepts.
"""

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from vldlib.errors import ConfigError
from vldlib.heads import check_drop_rate


@dataclass(frozen=True)
class Config:
    """One fine-tuning run. Defaults: Zhang & Bottou (2024) §4 and App. A, and their code."""

    # --- data (§4: DomainBed, leave one domain out)
    dataset: str = "PACS"
    data_dir: str | None = None
    test_env: int = 0  # index of the held-out domain
    holdout_fraction: float = 0.2  # i.i.d. validation: 20% of each training domain
    split_seed: int = 0  # the authors' code keeps one 80/20 split for every seed
    train_domain_size: int | None = None  # images kept per training domain; None keeps all
    test_domain_size: int | None = None  # held-out images evaluated; None evaluates all
    image_size: int | None = None  # None: the dataset's own (224 for DomainBed)
    augment: bool = True  # DomainBed's augmentation on the training domains
    augment_val: bool = True  # DomainBed's default also augments the 20% validation split
    # --- model (§3.1)
    backbone: str = "torchvision/resnet50"
    weights: str | None = None  # local file; the paper's "ResNet #2" is IMAGENET1K_V2
    dropout: float = 0.9  # λ, dropout on the penultimate representation Φ(x)
    # --- optimisation (§4, App. A)
    steps: int = 10_000
    lr: float = 1e-3  # grid {1e-3, 5e-4}
    weight_decay: float = 1e-4  # grid {1e-4, 5e-5, 1e-5}
    momentum: float = 0.9
    lr_milestones: tuple[int, ...] = (5000,)  # lr × lr_gamma at each milestone
    lr_gamma: float = 0.1
    last_layer_lr_factor: float = 1.0  # Fig. 6 uses 10
    batch_size_per_domain: int = 32  # 32 per training domain: 96 images per step
    freeze_bn: bool = True  # BatchNorm running statistics stay at their pre-trained values
    # --- evaluation and selection (training-domain validation, Gulrajani & Lopez-Paz 2020)
    eval_every: int = 300
    eval_batch_size: int = 256  # on CUDA the fast path evaluates at least 1024 at once
    # --- baselines along the same trajectory (§4.1: ★ weight averaging, ▲ ensembles, 1296×)
    trajectory_baselines: bool = True  # evaluate both at every evaluation, in the same run
    average_start: int = 300  # the authors' ``ma_start_iter``
    average_every: str = "eval"  # "eval": every eval step (paper's text); "step": the code's
    ensemble_mode: str = "prob"  # "prob": mean probabilities; "logit": summed logits (the code)
    # --- run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # --- execution: how fast, never what (``auto``: on for CUDA, off for CPU; see train.FastPath)
    num_workers: int | None = None  # data-loading processes; None: 0 on CPU, a core each on CUDA
    amp: str = "auto"  # auto | bf16 | off: bfloat16 autocast of forward passes
    channels_last: str = "auto"  # auto | on | off: NHWC memory format for convolutions
    compile: bool = False  # torch.compile the training forward pass
    cache_images: str = "auto"  # auto | on | off: decode training images once, if they fit

    def __post_init__(self) -> None:
        check_drop_rate(self.dropout)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be a finite number, got {value}")
        positive = ("steps", "lr", "eval_every", "eval_batch_size", "batch_size_per_domain")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "momentum", "num_workers", "test_env", "last_layer_lr_factor"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        if list(self.lr_milestones) != sorted(set(self.lr_milestones)) or any(
            m <= 0 for m in self.lr_milestones
        ):
            raise ConfigError(f"lr_milestones must be increasing and > 0: {self.lr_milestones}")
        for name in ("train_domain_size", "test_domain_size"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                raise ConfigError(f"{name} must be >= 2 or None, got {getattr(self, name)}")
        if self.average_every not in ("eval", "step"):
            raise ConfigError(f"average_every must be 'eval' or 'step', got {self.average_every!r}")
        if self.ensemble_mode not in ("prob", "logit"):
            raise ConfigError(
                f"ensemble_mode must be 'prob' or 'logit', got {self.ensemble_mode!r}"
            )
        for name, valid in SWITCHES.items():
            if getattr(self, name) not in valid:
                raise ConfigError(
                    f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}"
                )
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def hash(self) -> str:
        """A short hash of everything that changes the results (not where data or runs live, nor
        how fast they run: see ``EXECUTION_FIELDS``)."""
        d = {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


asdict = dataclasses.asdict

# Where data lives and how fast a run goes, not what it computes: left out of ``Config.hash`` so
# that a run's identity survives a move to another machine or a new speed option. bf16 autocast
# changes rounding, not the method: its results stay within seed noise of fp32 (tests/test_train).
EXECUTION_FIELDS = frozenset(
    {
        "data_dir",
        "device",
        "num_workers",
        "eval_batch_size",
        "amp",
        "channels_last",
        "compile",
        "cache_images",
    }
)
# The values of the fast path's switches; ``auto`` turns each on for CUDA and off for CPU.
SWITCHES = {
    "amp": ("auto", "bf16", "off"),
    "channels_last": ("auto", "on", "off"),
    "cache_images": ("auto", "on", "off"),
}

# Sizes for the embedded benchmark; the design history in book/design.md says how each was chosen.
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": dict(
        dataset="AnimalStyles",
        backbone="vldnet",
        weights="rich",
        train_domain_size=250,
        test_domain_size=1000,
        steps=900,
        lr_milestones=(450,),
        eval_every=50,
        average_start=50,
        lr=1e-2,
    ),
    "smoke": dict(
        dataset="AnimalStyles",
        backbone="vldnet",
        weights="rich",
        train_domain_size=40,
        test_domain_size=64,
        steps=6,
        lr_milestones=(3,),
        eval_every=3,
        average_start=3,
        batch_size_per_domain=8,
        lr=1e-2,
    ),
}


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def _check_type(name: str, value: Any, tp: Any) -> Any:
    """Return ``value`` if it has type ``tp`` (ints pass for floats, lists for tuples)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(name, value, inner[0])
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list of ints, got {value!r}")
        return tuple(_check_type(name, v, int) for v in value)
    ok = isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise ConfigError(f"{name} must be of type {tp.__name__}, got {value!r}")
    return value


def parse_value(name: str, text: str) -> Any:
    """Parse a command-line string for field ``name`` (``none`` for None, ``1,2`` for tuples)."""
    tp = _field_types().get(name)
    if tp is None:
        raise ConfigError(f"unknown config key {name!r}; valid keys: {', '.join(config_keys())}")
    if text.lower() in ("none", "null") and type(None) in typing.get_args(tp):
        return None
    base = tp
    if typing.get_origin(tp) in (types.UnionType, typing.Union):
        base = next(a for a in typing.get_args(tp) if a is not type(None))
    try:
        if typing.get_origin(base) is tuple:
            return tuple(int(v) for v in text.split(",") if v.strip())
        if base is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return base(text)
    except ValueError:
        is_tuple = typing.get_origin(base) is tuple
        kind = "a comma-separated list of ints" if is_tuple else f"a {base.__name__}"
        raise ConfigError(f"{name} expects {kind}, got {text!r}") from None


def config_keys() -> list[str]:
    return [f.name for f in fields(Config)]


def make_config(profile: str = "paper", **overrides: Any) -> Config:
    """The config of a profile with overrides, validated.

    Args:
        profile: ``paper``, ``cpu`` or ``smoke``.
        **overrides: field values; unknown names and wrong types raise ConfigError.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    values = dict(PROFILES[profile])
    types_ = _field_types()
    for name, value in overrides.items():
        if name not in types_:
            raise ConfigError(
                f"unknown config key {name!r}; valid keys: {', '.join(config_keys())}"
            )
        values[name] = _check_type(name, value, types_[name])
    return Config(**values)


def load_config(d: dict[str, Any]) -> Config:
    """Rebuild a Config from ``config.json`` contents, validating every key."""
    return make_config("paper", **d)
