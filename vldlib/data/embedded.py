"""The embedded benchmark: data that installs from package registries alone, rendered on the CPU.

- "AnimalStyles": 4 style domains (silhouette, sketch, texture, photo) drawn from 4 disjoint sets of
  the 10,000 animal silhouettes of the pip package animal-shape-mnist; 10 classes, 28x28 gray. It
  plays the part of PACS.
- "Debug": a tiny seeded random dataset for tests.
- `pretraining_data`: the larger, differently labelled distribution the embedded backbones are
  pre-trained on (MNIST, Fashion-MNIST and font-rendered letters). It plays the part of ImageNet.

Every random choice comes from a generator seeded by `seed_hash`, so the arrays are the same on
every machine; rendered arrays are cached as .npz files keyed by a version string.
"""

import gzip
import importlib.metadata
import importlib.resources
import logging
import os
import pickle
import string
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skimage.data
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from vldlib.data.domainbed import DomainDataset, MultiDomainData
from vldlib.data.sources import (
    atomic_write,
    cache_dir,
    fetch_fashion_mnist,
    fetch_mnist,
    read_idx,
)
from vldlib.data.splits import seed_hash
from vldlib.errors import DataError

logger = logging.getLogger(__name__)

SIZE = 28  # every embedded image is SIZE x SIZE gray

ANIMAL_PACKAGE = "animal-shape-mnist"
# Label order of the package's label file, checked by viewing samples of each label.
ANIMAL_CLASSES = (
    "bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra",
)  # fmt: skip
ANIMAL_STYLES = ("silhouette", "sketch", "texture", "photo")
ANIMALS_PER_CLASS = 250  # per domain: 4 domains x 10 classes x 250 = all 10,000 silhouettes
# Bump whenever rendering changes, so stale caches are never read.
ANIMAL_STYLES_VERSION = "1"

DIGIT_CLASSES = tuple("0123456789")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
LETTER_CLASSES = tuple(string.ascii_uppercase + string.ascii_lowercase)
LETTERS_PER_CLASS = {"train": 400, "eval": 100}
LETTERS_VERSION = "1"
# matplotlib's fonts that draw Latin letters; the others hold math symbols or empty boxes.
LETTER_FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf", "cmmi10.ttf",
)  # fmt: skip


class TensorDomain(DomainDataset):
    """One domain held in memory: `images` is uint8 (N, C, H, W)."""

    def __init__(
        self,
        name: str,
        images: torch.Tensor,
        targets: np.ndarray,
        source_index: np.ndarray | None = None,
    ) -> None:
        self.name = name
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        # Index of each image in the source collection, to check that domains are disjoint.
        self.source_index = source_index

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


@dataclass(frozen=True)
class EmbeddedSpec:
    """A registry entry for a dataset built in memory; it needs no data directory."""

    name: str
    domains: tuple[str, ...]
    n_classes: int
    source: str
    build: Callable[[], MultiDomainData]

    def load(self, data_dir: str | os.PathLike | None = None) -> MultiDomainData:
        if data_dir is not None:
            logger.debug("%s is built in memory; data_dir %s is not used", self.name, data_dir)
        return self.build()


def _cached_arrays(
    path: Path,
    make: Callable[[], dict[str, np.ndarray]],
    keys: tuple[str, ...],
) -> dict[str, np.ndarray]:
    """Load the arrays saved at `path`, or make and save them when the file is missing or bad."""
    if path.is_file():
        try:
            with np.load(path) as saved:
                return {key: saved[key] for key in keys}
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            logger.warning("cache file %s is unreadable (%s); rebuilding it", path, error)
    arrays = make()
    with atomic_write(path) as stream:
        np.savez_compressed(stream, **arrays)
    logger.info("cached %s", path)
    return arrays


# ----------------------------------------------------------------------------------------------
# AnimalStyles


def animal_shapes() -> tuple[np.ndarray, np.ndarray]:
    """The package's 10,000 silhouettes, uint8 (10000, 28, 28), and their labels, int64 (10000,).

    Read from the package's files: importing the package would import TensorFlow.
    """
    try:
        folder = importlib.resources.files("animal_shape_mnist") / "data" / "Animal Shape"
        # Pickle is the package's own format; the package is installed code already.
        images, labels = (
            pickle.loads(gzip.decompress((folder / f"animal_{kind}_version_3.gz").read_bytes()))
            for kind in ("data", "label")
        )
        images = np.asarray(images, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int64)
    except (ModuleNotFoundError, OSError, EOFError, pickle.UnpicklingError, ValueError) as error:
        raise DataError(
            f"cannot read the animal silhouettes of the pip package {ANIMAL_PACKAGE} ({error}); "
            f"install it with `pip install {ANIMAL_PACKAGE}==0.39`"
        ) from error
    if images.shape != (10_000, SIZE, SIZE) or np.bincount(labels).tolist() != [1000] * 10:
        raise DataError(
            f"{ANIMAL_PACKAGE}: unexpected data, images {images.shape} and label counts "
            f"{np.bincount(labels).tolist()}; install version 0.39 "
            f"(`pip install {ANIMAL_PACKAGE}==0.39`)"
        )
    return images, labels


def _disjoint_domains(labels: np.ndarray, n_domains: int, per_class: int) -> list[np.ndarray]:
    """Source indices of each domain: disjoint, `per_class` images of every class, sorted."""
    rng = np.random.default_rng(seed_hash("AnimalStyles", "domains"))
    chosen: list[list[np.ndarray]] = [[] for _ in range(n_domains)]
    for label in range(labels.max() + 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        for domain in range(n_domains):
            chosen[domain].append(members[domain * per_class : (domain + 1) * per_class])
    return [np.sort(np.concatenate(parts)) for parts in chosen]


def _gray(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("L"))


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    """`image` resized by `scale` (never below SIZE pixels a side), as floats in [0, 1]."""
    height, width = image.shape
    new_size = (max(SIZE, round(width * scale)), max(SIZE, round(height * scale)))
    resized = Image.fromarray(image).resize(new_size, Image.Resampling.BOX)
    return np.asarray(resized, dtype=np.float32) / 255


def _random_crop(rng: np.random.Generator, images: list[np.ndarray]) -> np.ndarray:
    image = images[rng.integers(len(images))]
    top = rng.integers(image.shape[0] - SIZE + 1)
    left = rng.integers(image.shape[1] - SIZE + 1)
    return image[top : top + SIZE, left : left + SIZE]


def _render_silhouette(shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return shapes


def _render_sketch(shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dark outline on white paper: the silhouette minus its erosion, a stroke about 1 px wide."""
    cross = np.zeros((1, 3, 3), dtype=bool)  # the leading axis keeps images apart
    cross[0] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    edge = shapes - ndimage.grey_erosion(shapes, footprint=cross)
    # Ink darkness varies a little from drawing to drawing.
    ink = rng.uniform(0.8, 1.0, size=(len(shapes), 1, 1)).astype(np.float32)
    return 1 - ink * edge


def _render_texture(shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The animal filled with a crop of a CC0 texture (brick, grass, gravel), on a dark ground."""
    textures = [
        _scaled(texture(), scale)
        for texture in (skimage.data.brick, skimage.data.grass, skimage.data.gravel)
        for scale in (0.15, 0.2, 0.25, 0.3)
    ]
    out = np.empty_like(shapes)
    for i, alpha in enumerate(shapes):
        crop = _random_crop(rng, textures)
        # Stretch the crop's contrast so the fill stays brighter than the ground.
        crop = (crop - crop.min()) / (np.ptp(crop) + 1e-6)
        fill = 0.35 + 0.65 * crop
        ground = rng.uniform(0.0, 0.15)
        out[i] = alpha * fill + (1 - alpha) * ground
    return out


def _render_photo(shapes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A lightly textured animal over a crop of a natural photo from scikit-image.

    The ground is normalised to a fixed contrast and the animal's tone is set 0.35-0.5 away from
    the ground's mean under it, brighter or darker at random: visible, yet no longer the only
    bright region (a plain |ground - shape| blend left a similar domain at chance level).
    """
    photos = [
        _scaled(_gray(photo()), scale)
        for photo in (
            skimage.data.camera,
            skimage.data.astronaut,
            skimage.data.coffee,
            skimage.data.chelsea,
            skimage.data.rocket,
        )
        for scale in (0.1, 0.15, 0.2, 0.25)
    ]
    out = np.empty_like(shapes)
    for i, alpha in enumerate(shapes):
        crop = _random_crop(rng, photos)
        ground = np.clip(0.5 + 0.15 * (crop - crop.mean()) / (crop.std() + 1e-6), 0, 1)
        under = float((ground * alpha).sum() / (alpha.sum() + 1e-6))
        sign = rng.choice((-1.0, 1.0))
        if not 0.0 <= under + sign * 0.5 <= 1.0:
            sign = -sign  # no room on that side of the ground's tone
        tone = under + sign * rng.uniform(0.35, 0.5)
        grain = rng.normal(0.0, 0.03, size=(SIZE, SIZE))
        out[i] = np.clip(alpha * (tone + grain) + (1 - alpha) * ground, 0, 1)
    return out


_RENDERERS = {
    "silhouette": _render_silhouette,
    "sketch": _render_sketch,
    "texture": _render_texture,
    "photo": _render_photo,
}


def render_animal_styles() -> dict[str, np.ndarray]:
    """Render the 4 domains: `images_<d>` uint8 (2500, 1, 28, 28), `labels_<d>`, `index_<d>`."""
    images, labels = animal_shapes()
    arrays = {}
    domains = _disjoint_domains(labels, len(ANIMAL_STYLES), ANIMALS_PER_CLASS)
    for style, index in zip(ANIMAL_STYLES, domains, strict=True):
        rng = np.random.default_rng(seed_hash("AnimalStyles", style))
        shapes = images[index].astype(np.float32) / 255  # also the alpha mask of each animal
        rendered = _RENDERERS[style](shapes, rng)
        arrays[f"images_{style}"] = np.round(rendered * 255).astype(np.uint8)[:, None]
        arrays[f"labels_{style}"] = labels[index]
        arrays[f"index_{style}"] = index
    return arrays


def animal_styles() -> MultiDomainData:
    """The AnimalStyles benchmark, rendered once and then read from the cache."""
    try:
        version = importlib.metadata.version(ANIMAL_PACKAGE)
    except importlib.metadata.PackageNotFoundError as error:
        raise DataError(
            f"AnimalStyles needs the pip package {ANIMAL_PACKAGE}: "
            f"`pip install {ANIMAL_PACKAGE}==0.39`"
        ) from error
    keys = tuple(
        f"{kind}_{style}" for style in ANIMAL_STYLES for kind in ("images", "labels", "index")
    )
    path = cache_dir() / f"animalstyles-v{ANIMAL_STYLES_VERSION}-{version}.npz"
    arrays = _cached_arrays(path, render_animal_styles, keys)
    envs = tuple(
        TensorDomain(
            style,
            torch.from_numpy(arrays[f"images_{style}"]),
            arrays[f"labels_{style}"],
            arrays[f"index_{style}"],
        )
        for style in ANIMAL_STYLES
    )
    return MultiDomainData(
        name="AnimalStyles",
        domains=ANIMAL_STYLES,
        classes=ANIMAL_CLASSES,
        channels=1,
        image_size=SIZE,
        envs=envs,
        source=f"pip {ANIMAL_PACKAGE}=={version}, rendered by vldlib (v{ANIMAL_STYLES_VERSION})",
    )


# ----------------------------------------------------------------------------------------------
# Debug


DEBUG_DOMAINS = ("debug0", "debug1", "debug2")
DEBUG_PER_DOMAIN = 60
DEBUG_SIZE = 16


def debug_data() -> MultiDomainData:
    """3 domains x 60 random RGB images of 16x16, 2 classes; class 1 is brighter, so learnable."""
    generator = torch.Generator().manual_seed(seed_hash("Debug"))
    envs = []
    for d, domain in enumerate(DEBUG_DOMAINS):
        targets = torch.arange(DEBUG_PER_DOMAIN) % 2
        noise = torch.randint(
            -40, 41, (DEBUG_PER_DOMAIN, 3, DEBUG_SIZE, DEBUG_SIZE), generator=generator
        )
        # Class sets the brightness; the domain shifts every image by the same amount.
        images = 90 + 70 * targets[:, None, None, None] + 15 * d + noise
        envs.append(TensorDomain(domain, images.clamp(0, 255).to(torch.uint8), targets.numpy()))
    return MultiDomainData(
        name="Debug",
        domains=DEBUG_DOMAINS,
        classes=("dark", "bright"),
        channels=3,
        image_size=DEBUG_SIZE,
        envs=tuple(envs),
        source="synthetic, seeded (vldlib.data.embedded.debug_data)",
    )


def _to_pil(image: Image.Image | torch.Tensor) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = image.permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).convert("RGB")


def preview_grid(data: MultiDomainData, per_class: int = 2, tile: int = 84) -> Image.Image:
    """A labelled grid of each domain's first `per_class` images per class: one row per domain.

    Args:
        data: any dataset of the registry.
        per_class: images shown per class and domain.
        tile: side of each image in the grid, in pixels.
    """
    cell, margin, header = tile + 2, 80, 14
    width = margin + cell * per_class * len(data.classes)
    grid = Image.new("RGB", (width, header + cell * len(data.envs)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(data.classes):
        draw.text((margin + c * per_class * cell + 2, 1), name, fill="black")
    for row, env in enumerate(data.envs):
        top = header + row * cell
        draw.text((2, top + cell // 2 - 5), env.name, fill="black")
        for c in range(len(data.classes)):
            for k, i in enumerate(np.flatnonzero(env.targets == c)[:per_class]):
                image = _to_pil(env[int(i)][0]).resize((tile, tile), Image.Resampling.NEAREST)
                grid.paste(image, (margin + (c * per_class + k) * cell + 1, top + 1))
    return grid


EMBEDDED_SPECS = (
    EmbeddedSpec(
        "AnimalStyles",
        ANIMAL_STYLES,
        len(ANIMAL_CLASSES),
        f"pip package {ANIMAL_PACKAGE}==0.39 (installed with vldlib); styles rendered locally "
        "and cached",
        animal_styles,
    ),
    EmbeddedSpec(
        "Debug", DEBUG_DOMAINS, 2, "synthetic random images, generated in memory", debug_data
    ),
)


# ----------------------------------------------------------------------------------------------
# Pre-training distribution


def _font_dir() -> Path:
    # Imported here only: matplotlib is slow to import and needed just for its font files.
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _render_glyph(
    rng: np.random.Generator,
    font: ImageFont.FreeTypeFont,
    char: str,
) -> np.ndarray:
    """One character, randomly stroked, rotated, scaled and shifted, MNIST-like: (28, 28) uint8."""
    canvas = Image.new("L", (96, 96), 0)
    stroke = int(rng.integers(0, 4))
    ImageDraw.Draw(canvas).text(
        (48, 48), char, font=font, fill=255, anchor="mm", stroke_width=stroke, stroke_fill=255
    )
    canvas = canvas.rotate(rng.uniform(-15, 15), resample=Image.Resampling.BILINEAR)
    glyph = canvas.crop(canvas.getbbox())
    # MNIST fits each digit into a 20-px box; the box size varies here for scale diversity.
    box = rng.uniform(14, 22)
    ratio = box / max(glyph.size)
    glyph = glyph.resize(
        (max(1, round(glyph.width * ratio)), max(1, round(glyph.height * ratio))),
        Image.Resampling.LANCZOS,
    )
    out = Image.new("L", (SIZE, SIZE), 0)
    shift = rng.integers(-2, 3, size=2)
    out.paste(glyph, ((SIZE - glyph.width) // 2 + shift[0], (SIZE - glyph.height) // 2 + shift[1]))
    return np.asarray(out)


def render_letters(per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Letters A-Z, a-z in matplotlib's fonts: `images` uint8 (52 * per_class, 28, 28), `labels`."""
    paths = [_font_dir() / name for name in LETTER_FONTS if (_font_dir() / name).is_file()]
    if not paths:
        raise DataError(
            f"no letter fonts found in {_font_dir()}; reinstall matplotlib "
            "(`pip install --force-reinstall matplotlib==3.11.2`)"
        )
    fonts = [ImageFont.truetype(str(path), 56) for path in paths]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(LETTER_CLASSES), dtype=np.int64), per_class)
    fonts_used = rng.integers(len(fonts), size=len(labels))
    images = np.stack(
        [
            _render_glyph(rng, fonts[f], LETTER_CLASSES[label])
            for label, f in zip(labels, fonts_used, strict=True)
        ]
    )
    return {"images": images, "labels": labels}


def _letters(split: str) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir() / f"letters-v{LETTERS_VERSION}-{split}.npz"
    per_class = LETTERS_PER_CLASS[split]
    arrays = _cached_arrays(
        path,
        lambda: render_letters(per_class, seed_hash("letters", split)),
        ("images", "labels"),
    )
    return arrays["images"], arrays["labels"]


def _pretraining(
    kind: str, split: str, root: Path | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    if kind not in ("plain", "rich"):
        raise DataError(
            f"unknown pre-training data kind {kind!r}; use 'plain' (MNIST) or 'rich' "
            "(MNIST + Fashion-MNIST + letters)"
        )
    prefix = "train" if split == "train" else "t10k"
    mnist = fetch_mnist(root / "mnist" if root is not None else None)
    sources = [
        (
            read_idx(mnist / f"{prefix}-images-idx3-ubyte"),
            read_idx(mnist / f"{prefix}-labels-idx1-ubyte"),
            DIGIT_CLASSES,
        )
    ]
    if kind == "rich":
        fashion = fetch_fashion_mnist(root / "fashion-mnist" if root is not None else None)
        sources.append(
            (
                read_idx(fashion / f"{prefix}-images-idx3-ubyte.gz"),
                read_idx(fashion / f"{prefix}-labels-idx1-ubyte.gz"),
                FASHION_CLASSES,
            )
        )
        sources.append((*_letters(split), LETTER_CLASSES))

    # Each source's labels follow the previous sources' classes.
    images, labels, classes = [], [], ()
    for source_images, source_labels, names in sources:
        images.append(source_images)
        labels.append(source_labels.astype(np.int64) + len(classes))
        classes += names
    return (
        torch.from_numpy(np.concatenate(images)[:, None]),
        torch.from_numpy(np.concatenate(labels)),
        classes,
    )


def pretraining_data(
    kind: str, root: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The pre-training set: (images uint8 (N, 1, 28, 28), labels int64 (N,), class names).

    Args:
        kind: "plain": MNIST train, 10 classes. "rich": MNIST train + Fashion-MNIST train +
            font-rendered letters A-Z and a-z (400 each), 72 classes.
        root: the folder holding `mnist/` and `fashion-mnist/`; default `cache_dir()`.
    """
    return _pretraining(kind, "train", root)


def pretraining_eval_data(
    kind: str, root: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The pre-training test set, laid out as `pretraining_data`.

    MNIST t10k, Fashion-MNIST t10k and a separately seeded letter set (100 per class).
    """
    return _pretraining(kind, "eval", root)
