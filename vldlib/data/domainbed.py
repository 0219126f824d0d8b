"""The multi-domain data model, and the DomainBed image-folder datasets (PACS, VLCS, ...).

A dataset is a tuple of domains that share one label space; `--test-env i` holds out domain i.
Folder datasets are read from the layout DomainBed's download script leaves on disk:
`<data_dir>/<folder>/<domain>/<class>/<image>`. vldlib never downloads them at run time.
"""

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor
from tqdm import tqdm

from vldlib.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DOMAINBED_IMAGE_SIZE = 224
# Decoded training images are kept in memory up to this size (PACS, 9,991 images of 227 × 227,
# takes 1.5 GiB); a dataset of larger photos is read from disk at every step instead.
IMAGE_CACHE_BYTES = 16 << 30


class DomainDataset(torch.utils.data.Dataset):
    """One domain, raw samples: `dataset[i]` is (image, label).

    The image is a PIL RGB image (folder datasets) or a uint8 tensor (C, H, W) (embedded datasets);
    transforms are applied by the caller. `targets` holds every label as int64, `name` the domain.
    """

    name: str
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class MultiDomainData:
    """A dataset split into domains with a shared label space."""

    name: str  # registry name, e.g. "PACS" or "AnimalStyles"
    domains: tuple[str, ...]  # fixed order: domain i is what --test-env i holds out
    classes: tuple[str, ...]  # label i is classes[i]
    channels: int  # 3 for folder datasets, 1 for the embedded benchmark
    image_size: int  # training resolution
    envs: tuple[DomainDataset, ...]  # one dataset per domain, same order as `domains`
    source: str  # one line: where the data came from


class DatasetSpec(Protocol):
    """What the registry holds for each dataset: a description, and how to load it.

    `source` says where the data comes from and how to get it.
    """

    name: str
    domains: tuple[str, ...]
    n_classes: int
    source: str

    def load(self, data_dir: str | os.PathLike | None) -> MultiDomainData: ...


# ----------------------------------------------------------------------------------------------
# Image folders


def _open_rgb(path: str) -> Image.Image:
    """Open and fully decode one image as RGB; a broken file raises DataError."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        # PIL reports unknown formats (UnidentifiedImageError) and truncated files as OSError,
        # and some malformed headers as SyntaxError or ValueError.
        raise DataError(
            f"cannot read image {path} ({error}); remove or replace the file, or list every "
            "unreadable file with `python -m vldlib datasets --verify NAME --data-dir DIR`"
        ) from error


class FolderDomain(DomainDataset):
    """The images of one domain folder, `<domain>/<class>/**/<image>`, sorted by path."""

    def __init__(self, name: str, paths: Sequence[str], targets: Sequence[int]) -> None:
        self.name = name
        self.paths = list(paths)
        self.targets = np.asarray(targets, dtype=np.int64)
        self.decoded: dict[int, torch.Tensor] = {}  # see `decode_into_memory`

    def __getitem__(self, index: int) -> tuple[Image.Image | torch.Tensor, int]:
        image = self.decoded.get(index)
        return (_open_rgb(self.paths[index]) if image is None else image), int(self.targets[index])


def _decoded_bytes(path: str) -> int:
    """Bytes of the decoded RGB image, read from the file's header; 0 if unreadable (decoding
    the file later names it)."""
    try:
        with Image.open(path) as image:
            return 3 * image.width * image.height
    except (OSError, ValueError, SyntaxError):
        return 0


def decode_into_memory(
    pools: Iterable[tuple[DomainDataset, np.ndarray]], budget_bytes: int = IMAGE_CACHE_BYTES
) -> bool:
    """Decode the images of every (folder domain, indices) pool once and serve them from memory.

    Each image is kept as the uint8 (C, H, W) tensor that the transforms make of the file, so a
    cached run computes exactly what an uncached one does. All or nothing: when the decoded
    images (with those already kept) would exceed ``budget_bytes``, nothing is added and False
    is returned. Domains already in memory (the embedded datasets) are skipped.
    """
    pools = [(env, indices) for env, indices in pools if isinstance(env, FolderDomain)]
    todo = [(env, int(i)) for env, indices in pools for i in indices if int(i) not in env.decoded]
    envs = {id(env): env for env, _ in pools}.values()
    held = sum(t.numel() for env in envs for t in env.decoded.values())
    with ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool:
        needed = sum(pool.map(lambda item: _decoded_bytes(item[0].paths[item[1]]), todo))
        if held + needed > budget_bytes:
            logger.info(
                "training images need %.1f GiB decoded (budget %.1f GiB): read from disk",
                (held + needed) / 2**30,
                budget_bytes / 2**30,
            )
            return False
        # PIL releases the GIL while decoding, so threads decode in parallel.
        images = pool.map(lambda item: pil_to_tensor(_open_rgb(item[0].paths[item[1]])), todo)
        for (env, i), image in zip(todo, images, strict=True):
            env.decoded[i] = image
    logger.info("decoded %d training images into memory (%.2f GiB)", len(todo), needed / 2**30)
    return True


def _class_folders(domain_dir: Path) -> list[str]:
    # Hidden folders (.ipynb_checkpoints, .git) are tooling, not classes.
    return sorted(e.name for e in os.scandir(domain_dir) if e.is_dir() and e.name[0] != ".")


def _image_files(class_dir: Path) -> list[str]:
    """Image paths under `class_dir`, recursively, found by extension without opening them."""
    found = []
    for root, _, files in os.walk(class_dir):
        found.extend(os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


def _describe_mismatch(reference: list[str], other: list[str]) -> str:
    missing = sorted(set(reference) - set(other))
    extra = sorted(set(other) - set(reference))
    parts = [f"lacks {missing}"] if missing else []
    parts += [f"has extra {extra}"] if extra else []
    return " and ".join(parts)


@dataclass(frozen=True)
class FolderSpec:
    """A DomainBed dataset stored as image folders."""

    name: str
    folder: str  # the dataset's folder under data_dir, as DomainBed's downloader names it
    domains: tuple[str, ...]
    n_classes: int
    classes: tuple[str, ...] | None = None  # recorded when the list is short enough to check

    @property
    def source(self) -> str:
        return (
            f"image folders at <data_dir>/{self.folder}/{{{','.join(self.domains)}}}/<class>/, "
            "made by DomainBed's download script (python -m domainbed.scripts.download "
            "--data_dir DIR) or a manual download; never downloaded at run time"
        )

    def load(self, data_dir: str | os.PathLike | None) -> MultiDomainData:
        """Scan the folders (file names only) and return the dataset; DataError on a bad layout."""
        root = self._dataset_dir(data_dir)
        per_domain = {}
        for domain in self.domains:
            domain_dir = root / domain
            if not domain_dir.is_dir():
                present = sorted(p.name for p in root.iterdir() if p.is_dir())
                raise DataError(
                    f"{self.name}: domain folder {domain_dir} is missing (found {present}); "
                    f"{self.name} needs the domains {list(self.domains)}: re-run the download "
                    "or restore that folder"
                )
            per_domain[domain] = _class_folders(domain_dir)
        classes = self._check_classes(per_domain)

        envs = []
        for domain in self.domains:
            paths, targets = [], []
            for label, cls in enumerate(classes):
                files = _image_files(root / domain / cls)
                paths += files
                targets += [label] * len(files)
            if not paths:
                raise DataError(
                    f"{self.name}: domain folder {root / domain} holds no images (looked for "
                    f"{', '.join(IMAGE_EXTENSIONS)} under its class folders); the download is "
                    "incomplete: download or extract that domain again"
                )
            envs.append(FolderDomain(domain, paths, targets))
        logger.info("%s: %s images in %s", self.name, "/".join(str(len(e)) for e in envs), root)
        return MultiDomainData(
            name=self.name,
            domains=self.domains,
            classes=classes,
            channels=3,
            image_size=DOMAINBED_IMAGE_SIZE,
            envs=tuple(envs),
            source=f"image folders under {root}",
        )

    def _dataset_dir(self, data_dir: str | os.PathLike | None) -> Path:
        layout = f"<data_dir>/{self.folder}/<domain>/<class>/<image>"
        if data_dir is None:
            raise DataError(
                f"{self.name} is read from image folders and needs a data directory: pass "
                f"data_dir (CLI: --data-dir DIR) pointing at the folder that holds {self.folder}/"
            )
        data_dir = Path(data_dir).expanduser()
        if not data_dir.is_dir():
            raise DataError(
                f"data directory {data_dir} does not exist; pass the folder that holds "
                f"{self.folder}/ (layout {layout})"
            )
        root = data_dir / self.folder
        if not root.is_dir():
            raise DataError(
                f"{self.name} not found: expected {root} with the layout {layout}, domains "
                f"{list(self.domains)}. Produce it with DomainBed's download script "
                f"(python -m domainbed.scripts.download --data_dir {data_dir}) or a manual "
                "download; vldlib never downloads data at run time"
            )
        return root

    def _check_classes(self, per_domain: dict[str, list[str]]) -> tuple[str, ...]:
        first, *others = self.domains
        reference = per_domain[first]
        for domain in others:
            if per_domain[domain] != reference:
                difference = _describe_mismatch(reference, per_domain[domain])
                raise DataError(
                    f"{self.name}: the class folders differ between domains: compared with "
                    f"'{first}', domain '{domain}' {difference}; every domain needs the same "
                    "class folders: rename, add or remove folders"
                )
        if self.classes is not None and tuple(reference) != self.classes:
            raise DataError(
                f"{self.name}: class folders {reference} do not match the expected classes "
                f"{list(self.classes)} ({_describe_mismatch(list(self.classes), reference)}); "
                "check the download or rename the folders"
            )
        if len(reference) != self.n_classes:
            raise DataError(
                f"{self.name}: found {len(reference)} class folders in each domain, expected "
                f"{self.n_classes}; the download is incomplete or has extra folders: "
                "download it again"
            )
        return tuple(reference)


DOMAINBED_SPECS = (
    FolderSpec(
        "PACS",
        "PACS",
        ("art_painting", "cartoon", "photo", "sketch"),
        7,
        ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
    ),
    FolderSpec(
        "VLCS",
        "VLCS",
        ("Caltech101", "LabelMe", "SUN09", "VOC2007"),
        5,
        ("bird", "car", "chair", "dog", "person"),
    ),
    FolderSpec("OfficeHome", "office_home", ("Art", "Clipart", "Product", "Real World"), 65),
    FolderSpec(
        "TerraIncognita",
        "terra_incognita",
        ("location_100", "location_38", "location_43", "location_46"),
        10,
        tuple("bird bobcat cat coyote dog empty opossum rabbit raccoon squirrel".split()),
    ),
    FolderSpec(
        "DomainNet",
        "domain_net",
        ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
        345,
    ),
)


def verify_images(data: MultiDomainData) -> list[str]:
    """Decode every image of a folder dataset; return the paths that fail (empty when all read).

    Embedded datasets hold decoded arrays and always pass.
    """
    paths = [p for env in data.envs if isinstance(env, FolderDomain) for p in env.paths]
    bad = []
    for path in tqdm(paths, desc=f"verify {data.name}", unit="img"):
        try:
            _open_rgb(path)
        except DataError:
            bad.append(path)
    if bad:
        logger.warning("%s: %d of %d images are unreadable", data.name, len(bad), len(paths))
    return bad
