"""torch backbones of timm, torchvision and `python:` builders (crackhpc.models names), each as a
network from normalised NCHW images to its pooled pre-logit feature vector, with that vector's size.

- timm: created with num_classes=0, timm's own way of dropping the classifier: its forward is then
  forward_head(forward_features(x), pre_logits=True), the pooled features (head_hidden_size wide
  where the model has a hidden head layer, as MobileNetV3 does). Pretrained weights load from the
  located file through pretrained_cfg_overlay, so timm's own key filters still apply (a ViT's
  position embedding resampled to another input size).
- torchvision: the model's last layer that makes its 1000 ImageNet logits (a Linear, or SqueezeNet's
  1x1 convolution) replaced by an identity: what feeds it is the pre-logit vector.
- python: the user's (backbone, feature_size), or a whole classifier, stripped as torchvision's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CrackhpcError
from ..models import Name, default_input_size, load_builder
from ..weights import locate

IMAGENET_CLASSES = 1000
_AUX = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}  # auxiliary heads, training-only


def feature_size(net: nn.Module, input_size: int, label: str) -> int:
    """The width of `net`'s output on one image, checked to be a flat feature vector."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, input_size, input_size))
    net.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise CrackhpcError(f"{label}: gives {shape} for one image, not a feature vector (batch, features)")
    return int(out.shape[1])


def strip_classifier(net: nn.Module, label: str, outputs: int | None = IMAGENET_CLASSES) -> nn.Module:
    """`net` with its last Linear (or 1x1 convolution) of `outputs` outputs (any, if None) made an identity."""
    last = None
    for name, module in net.named_modules():
        width = module.out_features if isinstance(module, nn.Linear) else None
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            width = module.out_channels
        if width is not None and (outputs is None or width == outputs):
            last = name
    if last is None:
        raise CrackhpcError(f"{label}: no final Linear layer to replace with crackhpc's head")
    net.set_submodule(last, nn.Identity())
    return net


def build(name: Name, pretrained: bool, input_size: int) -> tuple[nn.Module, int, str]:
    """(backbone → features, feature size, weights id) of a timm, torchvision or python: model."""
    label = f"{name.library}:{name.name}"
    if name.library == "timm":
        net, weights_id = _timm(name, pretrained, input_size)
    elif name.library == "torchvision":
        net, weights_id = _torchvision(name, pretrained)
    else:
        return _python(name, pretrained, input_size)
    return net, feature_size(net, input_size, label), weights_id


def _timm(name: Name, pretrained: bool, input_size: int) -> tuple[nn.Module, str]:
    import timm

    kwargs: dict = {"num_classes": 0}
    weights_id = "random"
    if pretrained:
        path, wf = locate("torch", f"timm:{name.name}")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
        weights_id = wf.digest or path.name
    if input_size != default_input_size("torch", f"timm:{name.name}"):
        try:  # a ViT's patch grid (and position embedding) follows its image size; a CNN takes any
            return timm.create_model(name.name, pretrained=pretrained, img_size=input_size, **kwargs), weights_id
        except TypeError:
            pass
    return timm.create_model(name.name, pretrained=pretrained, **kwargs), weights_id


def _torchvision(name: Name, pretrained: bool) -> tuple[nn.Module, str]:
    import torchvision

    aux = _AUX.get(name.name)
    net = torchvision.models.get_model(name.name, weights=None, **({"aux_logits": False} if aux else {}))
    weights_id = "random"
    if pretrained:
        path, wf = locate("torch", f"torchvision:{name.name}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if aux:
            state = {k: v for k, v in state.items() if not k.startswith(aux)}
            if hasattr(net, "transform_input"):
                net.transform_input = True  # as torchvision sets it for these weights
        net.load_state_dict(state)
        weights_id = wf.digest or path.name
    return strip_classifier(net, f"torchvision:{name.name}"), weights_id


def _python(name: Name, pretrained: bool, input_size: int) -> tuple[nn.Module, int, str]:
    from .common import state_digest

    label = f"python:{name.name}"
    try:
        made = load_builder(name)(pretrained=pretrained)
    except Exception as exc:  # noqa: BLE001  (the user's code: whatever it raises is one line of the run's error)
        raise CrackhpcError(f"{label}: the builder raised {type(exc).__name__}: {exc}") from None
    if (
        isinstance(made, tuple)
        and len(made) == 2
        and isinstance(made[0], nn.Module)
        and isinstance(made[1], int)
        and not isinstance(made[1], bool)
    ):
        net, size = made
        if feature_size(net, input_size, label) != size:
            raise CrackhpcError(f"{label}: the backbone's features are not {size} wide as the builder says")
    elif isinstance(made, nn.Module):
        net = strip_classifier(made, label, outputs=None)
        size = feature_size(net, input_size, label)
    else:
        raise CrackhpcError(
            f"{label}: returned {type(made).__name__}; a builder returns (torch.nn.Module, feature_size: int) "
            "or a whole torch.nn.Module classifier"
        )
    digest = state_digest(t.detach().cpu().numpy() for t in net.state_dict().values())
    return net, size, f"python-{digest[:16]}"
