"""torchvision backbones split into (backbone → feature vector, 2-class head), and the
frozen backbone's one-off feature pass."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.fx.experimental.optimization import fuse

from ..weights import locate

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """uint8 NHWC batches → ImageNet-normalised float NCHW, channels_last (faster convolutions)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(STD).view(1, 3, 1, 1)))
        self.register_buffer("shift", (torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        return (x * self.scale - self.shift).contiguous(memory_format=torch.channels_last)


def build(name: str, pretrained: bool, num_classes: int = 2) -> tuple[nn.Module, nn.Module, str]:
    """(backbone, head, weights_id); the caller seeds torch for a reproducible random init."""
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


@torch.no_grad()
def extract(backbone: nn.Module, images: np.ndarray, device: torch.device, batch: int = 64,
            autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    # In eval mode BatchNorm is a fixed affine map, so it folds into the convolution before it:
    # the same features with one pass less over every activation. `inplace` spares a copy of the
    # whole network (VGG16: 0.5 GB); the fused convolutions are new modules all the same.
    backbone = fuse(backbone.eval(), inplace=True).to(device)
    if device.type == "cpu":
        backbone = backbone.to(memory_format=torch.channels_last)
    chunks = []
    for start in range(0, len(images), batch):
        # a writable copy: torch warns on wrapping the image cache's read-only memory map
        x = torch.from_numpy(np.array(images[start:start + batch])).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            chunks.append(backbone(x).float().cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
