"""Shared fixtures: generated data so no test needs a download."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


def make_pacs_tree(root: Path, per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """A DomainBed-layout PACS folder whose classes are learnable: class k puts a bright square at
    position k of a 7-slot ring; each domain has its own background tint and file format."""
    rng = np.random.default_rng(seed)
    for d, domain in enumerate(PACS_DOMAINS):
        for k, cls in enumerate(PACS_CLASSES):
            folder = root / "PACS" / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
                img[..., d % 3] += 50  # domain style
                angle = 2 * np.pi * k / len(PACS_CLASSES)
                cy = int(size / 2 + size / 3 * np.sin(angle))
                cx = int(size / 2 + size / 3 * np.cos(angle))
                img[max(cy - 4, 0) : cy + 4, max(cx - 4, 0) : cx + 4] = 250
                ext = "png" if d % 2 else "jpg"
                Image.fromarray(img).save(folder / f"{i}.{ext}")
    return root


@pytest.fixture(scope="session")
def pacs_dir(tmp_path_factory) -> Path:
    return make_pacs_tree(tmp_path_factory.mktemp("domainbed"))
