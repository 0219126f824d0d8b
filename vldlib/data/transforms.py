"""Image transforms: the paper's DomainBed augmentation (§2.1) and its analogue for gray images.

Every transform takes a PIL image or a uint8 tensor (C, H, W) and returns a float32 tensor
(C, image_size, image_size). Random draws come only from torch's global RNG, so the training loop
can replay a sample's augmentation exactly by seeding torch before the call.
"""

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from vldlib.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Gray images are mapped to [-1, 1]; there is no ImageNet statistic for them.
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)


class _ExpectChannels:
    """Rejects an image whose channel count differs from the dataset's, before any other step."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 3 or image.shape[0] != self.channels:
            raise DataError(
                f"transform expects a {self.channels}-channel image (C, H, W), got shape "
                f"{tuple(image.shape)}; convert the image first (PIL: .convert('RGB') or "
                "'L') or build the transform with the dataset's `channels`"
            )
        return image


def _check_args(image_size: int, channels: int) -> None:
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")


def _to_float(channels: int) -> list[Callable]:
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GRAY_MEAN, GRAY_STD)
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def eval_transform(image_size: int, channels: int) -> Callable:
    """Resize to (image_size, image_size) and normalise; no randomness."""
    _check_args(image_size, channels)
    return v2.Compose(
        [
            # PIL images become tensors first, so PIL and tensor inputs resize the same way.
            v2.ToImage(),
            _ExpectChannels(channels),
            v2.Resize((image_size, image_size), antialias=True),
            *_to_float(channels),
        ]
    )


def train_transform(image_size: int, channels: int, augment: bool = True) -> Callable:
    """The training-domain augmentation; `augment=False` returns `eval_transform` instead.

    RGB: RandomResizedCrop(scale 0.7-1), horizontal flip, ColorJitter(0.3, 0.3, 0.3, 0.3),
    RandomGrayscale(0.1), ImageNet normalisation. Gray: the same crop and flip, brightness and
    contrast jitter of 0.3 (hue, saturation and grayscale mean nothing on one channel), then
    normalisation to [-1, 1].
    """
    if not augment:
        return eval_transform(image_size, channels)
    _check_args(image_size, channels)
    if channels == 3:
        color = [v2.ColorJitter(0.3, 0.3, 0.3, 0.3), v2.RandomGrayscale(p=0.1)]
    else:
        color = [v2.ColorJitter(brightness=0.3, contrast=0.3)]
    return v2.Compose(
        [
            v2.ToImage(),
            _ExpectChannels(channels),
            v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            *color,
            *_to_float(channels),
        ]
    )
