"""Residual backbones by name, weights from local files, and access to Φ and its residual blocks.

Every model built here has timm's API: ``forward_features(x)`` (the last feature map),
``forward_head(x, pre_logits=False)`` (global pooling, dropout on Φ, linear layer),
``num_features`` (the width of Φ), ``get_classifier()`` and ``reset_classifier(num_classes)``.

Names:
    ``timm/<name>``: any timm model; timm's ``drop_rate`` is the dropout on the pooled features.
    ``torchvision/<name>``: a torchvision ResNet whose ``fc`` becomes a VeryLargeDropoutHead.
    ``vldnet``: the small residual net of the embedded benchmark (28×28 images, Φ of width 512).

Weights never come from the network: ``load_weights`` reads a local ``.pth`` or ``.safetensors``
file with ``weights_only=True`` and refuses a file that does not fit the backbone.
"""

import os
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn

from vldlib.errors import ConfigError, WeightsError
from vldlib.heads import VeryLargeDropoutHead, check_drop_rate

BUILTIN_WEIGHTS = Path(__file__).parent / "weights"
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class BasicBlock(nn.Module):
    """Post-activation 3×3-3×3 residual block (He et al. 2016), as in torchvision's ResNet18."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResidualBottleneck(nn.Module):
    """x + f(x) with a bottleneck f (1×1 in, 3×3, 1×1 out) and no activation after the sum.

    Keeping the sum linear makes Φ an exact sum of per-block contributions (Veit et al. 2016),
    which the decomposition analysis checks to float tolerance. f starts with a convolution rather
    than a BatchNorm of the wide stream: the same function class at 15% less CPU time.
    """

    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.Conv2d(width, inner, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, 1, 1, bias=False),
            nn.BatchNorm2d(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, width, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class _TimmHeadApi(nn.Module):
    """timm's head methods for a model whose VeryLargeDropoutHead is the attribute ``head_name``."""

    head_name = "head"

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return getattr(self, self.head_name)(x.mean(dim=(2, 3)), pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.head_name).fc

    def reset_classifier(self, num_classes: int) -> None:
        getattr(self, self.head_name).reset(num_classes)


class VLDNet(_TimmHeadApi):
    """The embedded benchmark's backbone: a small residual net with a wide Φ.

    28×28 input → stem (16) → basic block (16, 28×28) → basic block (32, 14×14)
    → 1×1 projection to ``num_features`` at 7×7 → ``depth`` bottlenecks of inner width
    ``inner`` → average pool → Φ.
    Like a ResNet50's ``layer4`` (2048 wide, inner 512), the last stage is a wide residual stream
    read by narrow bottlenecks, which keeps Φ wide at a CPU-sized cost.

    Args:
        num_classes: outputs of the linear head (0: no classifier).
        drop_rate: λ, dropout on Φ during training.
        in_chans: input channels.
        num_features: width of Φ.
        inner: inner width of the last-stage bottlenecks.
        depth: number of blocks in the last stage.
    """

    def __init__(
        self,
        num_classes: int = 10,
        drop_rate: float = 0.0,
        in_chans: int = 1,
        num_features: int = 512,
        inner: int = 64,
        depth: int = 3,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        self.stage1 = BasicBlock(16, 16)
        self.stage2 = BasicBlock(16, 32, stride=2)
        self.entry = nn.Sequential(
            nn.Conv2d(32, num_features, 1, 2, bias=False), nn.BatchNorm2d(num_features)
        )
        self.stage3 = nn.Sequential(
            *[ResidualBottleneck(num_features, inner) for _ in range(depth)]
        )
        self.head = VeryLargeDropoutHead(num_features, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))  # (B, 32, 14, 14)
        return self.stage3(self.entry(x))  # (B, D, 7, 7)


class TorchvisionResNet(_TimmHeadApi):
    """A torchvision ResNet with timm's API; its ``fc`` is a VeryLargeDropoutHead.

    The trunk keeps torchvision's parameter names (``conv1``, ``layer1`` …), so torchvision's
    IMAGENET1K_V1/V2 files load as they are; the pre-trained ``fc`` is dropped and re-initialised.
    """

    head_name = "fc"

    def __init__(self, name: str, num_classes: int, drop_rate: float, in_chans: int = 3) -> None:
        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        for part in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, part, getattr(net, part))
        self.num_features = net.fc.in_features
        self.fc = VeryLargeDropoutHead(self.num_features, num_classes, drop_rate)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def list_backbones() -> list[str]:
    """Example names; any ``timm/<name>`` of ``timm.list_models()`` also works."""
    return ["vldnet", *(f"torchvision/{n}" for n in TORCHVISION_RESNETS), "timm/resnet50"]


def create_model(
    backbone: str, num_classes: int, drop_rate: float = 0.9, in_chans: int = 3
) -> nn.Module:
    """Build a backbone with a dropout-then-linear head, randomly initialised.

    Args:
        backbone: ``vldnet``, ``torchvision/<resnet>`` or ``timm/<name>``.
        num_classes: outputs of the classifier.
        drop_rate: λ, dropout on the pooled representation Φ(x).
        in_chans: input channels.
    """
    drop_rate = check_drop_rate(drop_rate)
    if backbone == "vldnet":
        return VLDNet(num_classes, drop_rate, in_chans)
    family, _, name = backbone.partition("/")
    if family == "torchvision" and name in TORCHVISION_RESNETS:
        return TorchvisionResNet(name, num_classes, drop_rate, in_chans)
    if family == "timm" and name in timm.list_models():
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, in_chans=in_chans
        )
    raise ConfigError(
        f"unknown backbone {backbone!r}: use 'vldnet', 'torchvision/<name>' with <name> in "
        f"{', '.join(TORCHVISION_RESNETS)}, or 'timm/<name>' with a name from timm.list_models()"
    )


def classifier_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the classifier, which a pre-trained file's weights never fill."""
    if isinstance(model, VLDNet):
        return "head."
    if isinstance(model, TorchvisionResNet):
        return "fc."
    return model.pretrained_cfg.get("classifier", "fc") + "."


def resolve_weights(weights: str | os.PathLike | None) -> Path | None:
    """Map a weights argument to a file: a path, or ``rich``/``plain`` for the shipped vldnets."""
    if weights is None:
        return None
    if str(weights) in ("rich", "plain"):
        return BUILTIN_WEIGHTS / f"vldnet_{weights}.safetensors"
    return Path(weights)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: give the path of a local file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad header, or a pickle that asks for code
        raise WeightsError(
            f"cannot read weights file {path}: {type(e).__name__}: {str(e).splitlines()[0]}. "
            "It may be truncated, corrupt, or a pickle that needs code to load (refused); "
            "re-export it as a plain state_dict (.pth) or .safetensors"
        ) from None
    for key in ("state_dict", "model"):  # common wrappers around a state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return state


def load_weights(model: nn.Module, weights: str | os.PathLike | None) -> nn.Module:
    """Load pre-trained trunk weights into ``model``, keeping its freshly initialised classifier.

    Every trunk parameter and buffer must be present with the right shape; otherwise the file is
    for another architecture and a WeightsError says which keys differ.
    """
    path = resolve_weights(weights)
    if path is None:
        return model
    state = read_state_dict(path)
    head = classifier_prefix(model)
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        name = type(model).__name__
        raise WeightsError(
            f"weights file {path} does not fit the {name} backbone: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} with "
            f"another shape {wrong[:3]}. Pass weights trained for this architecture"
        )
    model.load_state_dict(state, strict=False)
    return model


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the model's state dict as safetensors (no pickle), atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)


def last_stage_blocks(model: nn.Module) -> list[nn.Module]:
    """The residual blocks after the last resolution change (a ResNet's ``layer4``)."""
    if isinstance(model, VLDNet):
        return list(model.stage3)
    if hasattr(model, "layer4"):
        return list(model.layer4)
    raise ConfigError(f"{type(model).__name__} has no known last residual stage")


def forward_with_blocks(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward pass returning Φ(x) (pooled, before dropout) and each last-stage block's
    pooled output, in order. The last block's pooled output is Φ(x) itself."""
    outputs: list[torch.Tensor] = []
    hooks = [
        b.register_forward_hook(lambda _m, _i, out: outputs.append(out.mean(dim=(2, 3))))
        for b in last_stage_blocks(model)
    ]
    try:
        phi = model.forward_features(x).mean(dim=(2, 3))
    finally:
        for h in hooks:
            h.remove()
    return phi, outputs


def set_batchnorm_eval(model: nn.Module) -> None:
    """Freeze BatchNorm running statistics (paper: ``freeze_bn``); affine parameters still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
