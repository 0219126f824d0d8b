"""Datasets by name: the DomainBed image folders and the embedded benchmark, one registry."""

import os

from vldlib.data.domainbed import (
    DOMAINBED_SPECS,
    DatasetSpec,
    DomainDataset,
    MultiDomainData,
    verify_images,
)
from vldlib.data.embedded import EMBEDDED_SPECS, pretraining_data, pretraining_eval_data
from vldlib.data.sources import cache_dir, fetch_fashion_mnist, fetch_mnist, read_idx
from vldlib.data.splits import seed_hash, split_indices, subsample
from vldlib.data.transforms import eval_transform, train_transform
from vldlib.errors import DataError

__all__ = [
    "DATASETS",
    "DomainDataset",
    "MultiDomainData",
    "cache_dir",
    "domain_index",
    "eval_transform",
    "fetch_fashion_mnist",
    "fetch_mnist",
    "get_dataset",
    "list_datasets",
    "pretraining_data",
    "pretraining_eval_data",
    "read_idx",
    "seed_hash",
    "split_indices",
    "subsample",
    "train_transform",
    "verify_images",
]

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in DOMAINBED_SPECS + EMBEDDED_SPECS}


def get_dataset(name: str, data_dir: str | os.PathLike | None = None) -> MultiDomainData:
    """Load a registered dataset; only the DomainBed folder datasets need `data_dir`."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name].load(data_dir)


def list_datasets() -> list[dict]:
    """One record per registered dataset: name, domains, n_classes and source (how to get it)."""
    return [
        {
            "name": spec.name,
            "domains": list(spec.domains),
            "n_classes": spec.n_classes,
            "source": spec.source,
        }
        for spec in DATASETS.values()
    ]


def domain_index(data: MultiDomainData, domain: int | str) -> int:
    """The index of a domain given by index or by name; DataError when there is no such domain."""
    valid = ", ".join(f"{i}={name}" for i, name in enumerate(data.domains))
    if isinstance(domain, str) and domain in data.domains:
        return data.domains.index(domain)
    # bool is an int subclass; True as a domain is surely a mistake.
    if isinstance(domain, int) and not isinstance(domain, bool):
        if 0 <= domain < len(data.domains):
            return domain
    raise DataError(f"{data.name} has no domain {domain!r}; valid domains: {valid}")
