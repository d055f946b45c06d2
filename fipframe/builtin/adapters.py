"""Built-in architectures: MLP, LeNet-300-100, a small CNN, torchvision VGG11/16, ResNet-18, ViT.

All are plain ``torch.nn.Module``s traversed through :class:`ArchitectureAdapter`. torchvision is
imported only when a VGG or ResNet is built. For small inputs (MNIST's 28x28) the VGGs pad to
32x32 and use a compact 512 -> classes head (the usual CIFAR variant), and ResNet-18 uses the
CIFAR stem (3x3 convolution, no max-pool); the ImageNet forms are one config field away.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from fipframe.core.adapter import ArchitectureAdapter
from fipframe.core.configs import PluginConfig, Width
from fipframe.core.sparsity import attention_groups, block_groups, sequential_groups
from fipframe.errors import ConfigError
from fipframe.plugins import hookimpl
from fipframe.registry import Spec

_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class AdapterConfig(PluginConfig):
    traversable: tuple[str, ...] = Field(("*",), description="globs of parameters the path moves")
    frozen: tuple[str, ...] = Field((), description="globs excluded from traversable")


def _adapt(
    model: nn.Module, cfg: AdapterConfig, num_classes: int, groups: Any = sequential_groups
) -> ArchitectureAdapter:
    return ArchitectureAdapter(
        model,
        traversable=cfg.traversable,
        frozen=cfg.frozen,
        num_classes=num_classes,
        prune_groups=groups,
    )


def mlp(
    in_features: int, hidden: list[int], num_classes: int, act: str = "relu", dropout: float = 0.0
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), _ACT[act]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class MLPConfig(AdapterConfig):
    kind: Literal["mlp"] = "mlp"
    hidden: list[Width] = Field([400, 400], min_length=0, description="hidden layer widths")
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)


def build_mlp(
    cfg: MLPConfig, *, input_shape: tuple[int, ...], num_classes: int
) -> ArchitectureAdapter:
    model = mlp(math.prod(input_shape), cfg.hidden, num_classes, cfg.activation, cfg.dropout)
    return _adapt(model, cfg, num_classes)


class LeNet300Config(AdapterConfig):
    kind: Literal["lenet300"] = "lenet300"


def build_lenet300(
    cfg: LeNet300Config, *, input_shape: tuple[int, ...], num_classes: int
) -> ArchitectureAdapter:
    return _adapt(mlp(math.prod(input_shape), [300, 100], num_classes), cfg, num_classes)


class SmallCNNConfig(AdapterConfig):
    kind: Literal["small_cnn"] = "small_cnn"
    channels: list[Width] = Field([32, 64], min_length=1, description="channels per conv block")
    hidden: Width = Field(128, description="width of the hidden linear layer")
    batch_norm: bool = False


def build_small_cnn(
    cfg: SmallCNNConfig, *, input_shape: tuple[int, ...], num_classes: int
) -> ArchitectureAdapter:
    c, h, w = input_shape
    layers: list[nn.Module] = []
    for out in cfg.channels:
        layers.append(nn.Conv2d(c, out, 3, padding=1))
        if cfg.batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c, h, w = out, h // 2, w // 2
    layers += [
        nn.Flatten(),
        nn.Linear(c * h * w, cfg.hidden),
        nn.ReLU(),
        nn.Linear(cfg.hidden, num_classes),
    ]
    return _adapt(nn.Sequential(*layers), cfg, num_classes)


class _PadTo(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dh, dw = max(0, self.size - x.shape[-2]), max(0, self.size - x.shape[-1])
        if not dh and not dw:
            return x
        return nn.functional.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class VGGConfig(AdapterConfig):
    kind: Literal["vgg11", "vgg16"]
    batch_norm: bool = True
    head: Literal["compact", "torchvision"] = Field(
        "compact", description="compact: 512 -> classes; torchvision: the 4096-wide classifier"
    )


class VGG11Config(VGGConfig):
    kind: Literal["vgg11"] = "vgg11"


class VGG16Config(VGGConfig):
    kind: Literal["vgg16"] = "vgg16"


def build_vgg(
    cfg: VGGConfig, *, input_shape: tuple[int, ...], num_classes: int
) -> ArchitectureAdapter:
    from torchvision import models

    name = cfg.kind + ("_bn" if cfg.batch_norm else "")
    net: Any = getattr(models, name)(weights=None, num_classes=num_classes)
    if input_shape[0] != 3:
        net.features[0] = nn.Conv2d(input_shape[0], 64, 3, padding=1)
    if cfg.head == "compact":
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier = nn.Linear(512, num_classes)
    model = nn.Sequential(_PadTo(32), net) if min(input_shape[1:]) < 32 else net
    return _adapt(model, cfg, num_classes)


class ResNet18Config(AdapterConfig):
    kind: Literal["resnet18"] = "resnet18"
    stem: Literal["cifar", "imagenet"] = Field(
        "cifar", description="cifar: 3x3 conv, no max-pool (small images); imagenet: 7x7 + pool"
    )


def build_resnet18(
    cfg: ResNet18Config, *, input_shape: tuple[int, ...], num_classes: int
) -> ArchitectureAdapter:
    from torchvision import models

    net = models.resnet18(weights=None, num_classes=num_classes)
    if cfg.stem == "cifar":
        net.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif input_shape[0] != 3:
        net.conv1 = nn.Conv2d(input_shape[0], 64, 7, stride=2, padding=3, bias=False)
    return _adapt(net, cfg, num_classes, block_groups)


class ViTConfig(AdapterConfig):
    kind: Literal["vit"] = "vit"
    patch_size: Width = Field(7, description="side of the square patches (divides the image)")
    layers: Width = Field(2, description="encoder blocks")
    heads: Width = Field(4, description="attention heads per block")
    hidden: Width = Field(64, description="token width (a multiple of heads)")
    mlp: Width = Field(128, description="width of each block's MLP")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ViTConfig:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


def build_vit(
    cfg: ViTConfig, *, input_shape: tuple[int, ...], num_classes: int
) -> ArchitectureAdapter:
    """torchvision's VisionTransformer in a small configuration (any channel count)."""
    from torchvision.models import VisionTransformer

    c, h, w = input_shape
    if h != w or h % cfg.patch_size:
        raise ConfigError(
            f"model.patch_size: {cfg.patch_size} must divide the square image side "
            f"(inputs are {h}x{w})"
        )
    net = VisionTransformer(
        image_size=h,
        patch_size=cfg.patch_size,
        num_layers=cfg.layers,
        num_heads=cfg.heads,
        hidden_dim=cfg.hidden,
        mlp_dim=cfg.mlp,
        dropout=cfg.dropout,
        num_classes=num_classes,
    )
    if c != 3:
        net.conv_proj = nn.Conv2d(c, cfg.hidden, cfg.patch_size, stride=cfg.patch_size)
    return _adapt(net, cfg, num_classes, attention_groups)


@hookimpl
def fipframe_register_adapters() -> list[Spec]:
    return [
        Spec("mlp", MLPConfig, build_mlp, "fully connected network (Flatten first)"),
        Spec("lenet300", LeNet300Config, build_lenet300, "LeNet-300-100"),
        Spec("small_cnn", SmallCNNConfig, build_small_cnn, "conv-relu-pool blocks + 2 linear"),
        Spec("vgg11", VGG11Config, build_vgg, "torchvision VGG11 (BN by default)"),
        Spec("vgg16", VGG16Config, build_vgg, "torchvision VGG16 (BN by default)"),
        Spec("resnet18", ResNet18Config, build_resnet18, "torchvision ResNet-18"),
        Spec("vit", ViTConfig, build_vit, "torchvision VisionTransformer, small configuration"),
    ]


@hookimpl(trylast=True)
def fipframe_resolve_adapter(
    model: Any, traversable: tuple[str, ...], frozen: tuple[str, ...]
) -> ArchitectureAdapter | None:
    if isinstance(model, nn.Module):
        return ArchitectureAdapter(model, traversable=traversable, frozen=frozen)
    return None
