"""torchvision backbones split into (backbone → feature vector, 2-class head)."""
from __future__ import annotations

import torch
from torch import nn

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
