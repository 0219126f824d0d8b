"""The sweeps as data: one grid per figure of the paper, and the embedded benchmark's grid.

A grid is a profile, fixed overrides and axes; its runs are the product of the axes, first axis
slowest. An axis whose values are dicts is a set of recipes: each dict overrides several fields at
once (Fig. 8's naive and advanced fine-tuning). Each run is identified by ``Config.hash()``, so
grids that share runs (Fig. 3 holds every run of Fig. 2) share their run folders and compute
them once.

The paper's protocol (§4, App. A; research notes §2.1): 4 datasets × 4 held-out domains ×
lr {1e-3, 5e-4} × weight decay {1e-4, 5e-5, 1e-5} × 3 seeds, ResNet50 IMAGENET1K_V2 ("ResNet #2").
"""

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vldlib.config import PROFILES, Config, make_config
from vldlib.data import DATASETS
from vldlib.errors import ConfigError

RESNET50_V1 = "resnet50-0676ba61.pth"  # torchvision IMAGENET1K_V1, "ResNet #1"
RESNET50_V2 = "resnet50-11ad3fa6.pth"  # torchvision IMAGENET1K_V2, "ResNet #2", the default
PAPER_DATASETS = ("VLCS", "PACS", "OfficeHome", "TerraIncognita")
LRS = (1e-3, 5e-4)
WEIGHT_DECAYS = (1e-4, 5e-5, 1e-5)
SEEDS = (0, 1, 2)
DROPOUT_RATES = (0.0, 0.5, 0.9, 0.95)  # Fig. 3
# The hyper-parameters that one point of the paper's scatter plots chooses per held-out domain:
# 2 lr × 3 weight decays = 6 choices per domain, 6^4 = 1296 four-domain averages.
HPARAM_FIELDS = ("lr", "weight_decay")
# Profile fields that may change without a run leaving its figure (a schedule revision).
SCHEDULE_FIELDS = frozenset({"steps", "lr_milestones", "eval_every", "average_start"})


@dataclass(frozen=True)
class Grid:
    """A named sweep: ``profile`` defaults, ``fixed`` overrides and the product of ``axes``."""

    name: str
    figure: str  # what the grid reproduces, one line
    profile: str
    axes: dict[str, tuple[Any, ...]]
    fixed: dict[str, Any] = field(default_factory=dict)

    def points(self) -> list[dict[str, Any]]:
        """The overrides of every run, in a stable order (first axis slowest)."""
        points = []
        for values in itertools.product(*self.axes.values()):
            point = dict(self.fixed)
            for name, value in zip(self.axes, values, strict=True):
                point |= value if isinstance(value, Mapping) else {name: value}
            points.append(point)
        return points

    def configs(self, **overrides: Any) -> list[Config]:
        """Every run's config; ``overrides`` (e.g. ``data_dir``, ``weights``) apply to all."""
        return [make_config(self.profile, **(p | overrides)) for p in self.points()]

    def fields(self) -> list[str]:
        """The config fields that the axes vary (a recipe axis contributes its dicts' keys)."""
        names: list[str] = []
        for name, values in self.axes.items():
            keys = [k for v in values for k in v] if isinstance(values[0], Mapping) else [name]
            names += [k for k in dict.fromkeys(keys) if k not in names]
        return names

    def matches(self, config: Mapping[str, Any]) -> bool:
        """Whether a stored config (``config.json``'s dict) is one of this grid's runs.

        Compares the axes, the fixed overrides and the profile's fields, except the schedule (a
        revised schedule keeps its figure; ``collect`` shows it as its own row). Weight files are
        compared by file name, so a run keeps its figure when the weights move.
        """
        wanted = PROFILES[self.profile] | self.fixed
        skip = SCHEDULE_FIELDS | set(self.fields())
        wanted = {k: v for k, v in wanted.items() if k not in skip}
        if any(not _same(k, config.get(k), v) for k, v in wanted.items()):
            return False
        for name, values in self.axes.items():
            if isinstance(values[0], Mapping):
                ok = any(all(_same(k, config.get(k), v) for k, v in r.items()) for r in values)
            else:
                ok = any(_same(name, config.get(name), v) for v in values)
            if not ok:
                return False
        return True


def _same(name: str, stored: Any, wanted: Any) -> bool:
    if name == "weights" and stored is not None and wanted is not None:
        return Path(str(stored)).name == Path(str(wanted)).name
    if isinstance(wanted, tuple):
        return stored is not None and tuple(stored) == wanted
    return stored == wanted


def _paper(name: str, figure: str, axes: dict[str, tuple], **fixed: Any) -> Grid:
    """A paper grid: datasets × held-out domains × ``axes`` × lr × weight decay × seeds."""
    return Grid(
        name,
        figure,
        "paper",
        {
            "dataset": fixed.pop("datasets", PAPER_DATASETS),
            "test_env": fixed.pop("test_envs", (0, 1, 2, 3)),
            **axes,
            "lr": fixed.pop("lrs", LRS),
            "weight_decay": WEIGHT_DECAYS,
            "seed": SEEDS,
        },
        {"weights": RESNET50_V2} | fixed,
    )


GRIDS: dict[str, Grid] = {
    g.name: g
    for g in (
        Grid(
            "cpu",
            "embedded benchmark: AnimalStyles, ERM vs VLD on every held-out domain, 5 seeds",
            "cpu",
            {"test_env": (0, 1, 2, 3), "dropout": (0.0, 0.9), "seed": (0, 1, 2, 3, 4)},
        ),
        Grid(
            "smoke",
            "the embedded benchmark at test size: a minute on two cores",
            "smoke",
            {"test_env": (0, 1), "dropout": (0.0, 0.9), "seed": (0,)},
        ),
        _paper(
            "fig2",
            "Fig. 2: ERM vs VLD (λ 0.9) vs weight averaging and ensembles",
            {"dropout": (0.0, 0.9)},
        ),
        _paper("fig3", "Fig. 3: dropout rates 0, 0.5, 0.9, 0.95", {"dropout": DROPOUT_RATES}),
        _paper(
            "fig4",
            "Fig. 4: DomainNet dropout rates (30k steps, lr {3e-3, 5e-3})",
            {"dropout": DROPOUT_RATES},
            datasets=("DomainNet",),
            test_envs=(0, 1, 2, 3, 4, 5),
            lrs=(3e-3, 5e-3),
            steps=30_000,
            lr_milestones=(15_000, 25_000),
            eval_every=1000,
        ),
        # deviation from paper: BatchNorm statistics train (frozen ones fit nothing from scratch)
        _paper(
            "fig5",
            "Fig. 5: VLCS from a random initialisation, lr {5e-3, 1e-2}",
            {"dropout": DROPOUT_RATES},
            datasets=("VLCS",),
            lrs=(5e-3, 1e-2),
            weights=None,
            freeze_bn=False,
        ),
        _paper(
            "fig6",
            "Fig. 6: 10× last-layer lr, with and without VLD",
            {
                "last_layer_lr_factor": (1.0, 10.0),
                "dropout": (0.0, 0.9),
            },
        ),
        _paper("fig7", "Fig. 7: weight averaging and ensembles of VLD models", {"dropout": (0.9,)}),
        _paper(
            "fig8",
            "Fig. 8: ResNet #1 (V1) vs #2 (V2), naive vs advanced fine-tuning",
            {
                "weights": (RESNET50_V1, RESNET50_V2),
                "recipe": (
                    {"dropout": 0.0, "last_layer_lr_factor": 1.0},
                    {"dropout": 0.9, "last_layer_lr_factor": 10.0},
                ),
            },
        ),
    )
}


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise ConfigError(f"unknown grid {name!r}; valid grids: {', '.join(GRIDS)}")
    return GRIDS[name]


def with_weights_dir(
    grid: Grid, configs: Sequence[Config], weights_dir: str | None
) -> list[Config]:
    """Point the configs' torchvision weight file names at files in ``weights_dir``."""
    names = {RESNET50_V1, RESNET50_V2}
    if not any(c.weights in names for c in configs):
        return list(configs)
    if weights_dir is None:
        raise ConfigError(
            f"grid {grid.name} needs torchvision's ResNet50 files ({', '.join(sorted(names))}): "
            "pass --weights DIR, the folder that holds them"
        )
    folder = Path(weights_dir).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--weights expects the folder holding {RESNET50_V2}, got {folder}")
    return [
        replace(c, weights=str(folder / c.weights)) if c.weights in names else c for c in configs
    ]


def domains_of(config: Config) -> tuple[str, ...]:
    """The dataset's domain names, from the registry (no data is read)."""
    return tuple(DATASETS[config.dataset].domains)
