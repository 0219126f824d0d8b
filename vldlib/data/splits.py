"""Seeded index splits: the 80/20 in/out split of each training domain, and subsets."""

import hashlib

import numpy as np

from vldlib.errors import DataError


def seed_hash(*args: object) -> int:
    """An int in [0, 2**31) derived from `args`, the same in every process and Python version.

    Built on SHA-256 of the arguments' `repr` because Python's `hash()` of a string changes from
    one process to the next.
    """
    digest = hashlib.sha256(repr(args).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def split_indices(
    n: int,
    holdout_fraction: float,
    seed: int,
    domain: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Split range(n) into (train_idx, val_idx), both sorted int64 arrays.

    Args:
        n: number of samples in the domain; at least 2, so both parts are non-empty.
        holdout_fraction: share of samples held out for validation, in (0, 1). The paper uses 0.2.
        seed: the run's split seed.
        domain: the domain's index, so that each domain gets its own permutation.
    """
    if n < 2:
        raise DataError(
            f"cannot split a domain of {n} sample(s) into train and validation parts; "
            "the domain needs at least 2 images (check the dataset folder or the subsample size)"
        )
    if not 0.0 < holdout_fraction < 1.0:
        raise DataError(
            f"holdout_fraction must lie strictly between 0 and 1, got {holdout_fraction}; "
            "use e.g. 0.2 (the paper's 80/20 split)"
        )
    n_val = min(max(round(n * holdout_fraction), 1), n - 1)
    order = np.random.default_rng(seed_hash("split", seed, domain)).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def subsample(n: int, size: int | None, seed: int, domain: int) -> np.ndarray:
    """A sorted, seeded subset of range(n) with `size` elements (all n when `size` is None)."""
    if size is None:
        return np.arange(n, dtype=np.int64)
    if not 0 < size <= n:
        raise DataError(
            f"cannot draw a subset of {size} samples from a domain of {n}; "
            f"choose a size between 1 and {n}, or None to keep every sample"
        )
    rng = np.random.default_rng(seed_hash("subsample", seed, domain))
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)
