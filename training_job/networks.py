"""Networks in plain torch (torchvision does not import beside the pinned CPU torch).

Every network takes ``(N, 1, H, W)`` float images in [0, 1] and standardises each image itself
(zero mean, unit variance), so brightness and contrast differences between acquisitions are
removed inside the graph and the ONNX export needs no preprocessing beyond the shared resize.
Each exposes ``features(x)`` (the last convolutional map) and ``classifier`` (one linear layer
after global average pooling), which is what a class-activation map needs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand, out channels) per stage; the Lite family keeps stem and head fixed.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                           (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "efficientnet_lite1": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80),
                           (4, 5, 1, 6, 112), (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "efficientnet_lite2": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
                           (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)),
}
ARCHITECTURES = ("compact", "resnet", "resnet_small", *EFFICIENTNET_LITE)


class Standardise(nn.Module):
    """Per-image intensity normalisation: the model sees the same input whatever the exposure."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / (std + 1e-3)


class Classifier(nn.Module):
    """Shared head: features -> global average pool -> dropout -> linear."""

    def __init__(self, body: nn.Module, channels: int, num_classes: int, dropout: float):
        super().__init__()
        self.standardise = Standardise()
        self.body = body
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.standardise(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x).mean(dim=(2, 3))))

    def features_and_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last feature map, and the spatial mean and standard deviation of each stage's output map
        (``(N, 2 * sum of the stages' channels)``), which the out-of-distribution guard measures: the
        intermediate stages see texture, edges and grey-level structure that the last, class-tuned map
        has averaged away (Lee et al. 2018 score several layers for the same reason)."""
        h = self.standardise(x)
        stages = []
        for index, module in enumerate(self.body.steps()):
            h = module(h)
            if index in self.body.guard_stages:
                stages += [h.mean(dim=(2, 3)), h.std(dim=(2, 3))]
        return h, torch.cat(stages, dim=1)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Stages(nn.Sequential):
    """A plain sequence of layers whose outputs at ``guard_stages`` the out-of-distribution guard reads."""

    def __init__(self, *layers: nn.Module, guard_stages: tuple[int, ...]):
        super().__init__(*layers)
        self.guard_stages = guard_stages

    def steps(self) -> list[nn.Module]:
        return list(self)


def compact(num_classes: int, width: int = 32, dropout: float = 0.2) -> Classifier:
    """A small VGG-style CNN for 28-64 px inputs (PneumoniaMNIST)."""
    w = width
    body = Stages(
        conv_bn(1, w), conv_bn(w, w), nn.MaxPool2d(2),
        conv_bn(w, 2 * w), conv_bn(2 * w, 2 * w), nn.MaxPool2d(2),
        conv_bn(2 * w, 4 * w), conv_bn(4 * w, 4 * w), guard_stages=(2, 5, 7),
    )
    return Classifier(body, 4 * w, num_classes, dropout)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3, 1, act=False)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


def resnet(num_classes: int, width: int = 32, dropout: float = 0.2) -> Classifier:
    """A ResNet-10-style network for 128-224 px inputs, trained from scratch."""
    w = width
    stages, cin = [], w
    for i, cout in enumerate((w, 2 * w, 4 * w, 8 * w)):
        stages += [BasicBlock(cin, cout, 1 if i == 0 else 2)]
        cin = cout
    body = Stages(conv_bn(1, w, 5, 2), nn.MaxPool2d(3, 2, 1), *stages, guard_stages=(2, 3, 4, 5))
    return Classifier(body, 8 * w, num_classes, dropout)


def resnet_small(num_classes: int, width: int = 32, dropout: float = 0.2) -> Classifier:
    """A CIFAR-style ResNet for 28-64 px inputs (He et al. 2016, section 4.2): a 3x3 stem without pooling,
    then three stages of two basic blocks (w, 2w, 4w channels; about 0.7 M parameters at width 32), so a
    28 px image keeps a 7x7 map at the end where ``resnet``'s stride-4 stem would leave 1x1."""
    w = width
    blocks, cin = [], w
    for i, cout in enumerate((w, 2 * w, 4 * w)):
        blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
        cin = cout
    return Classifier(Stages(conv_bn(1, w), *blocks, guard_stages=(2, 4, 6)), 4 * w, num_classes, dropout)


class MBConv(nn.Module):
    """EfficientNet-Lite's inverted residual (no squeeze-excitation, ReLU6), in efficientnet_pytorch's key layout."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLiteBody(nn.Module):
    def __init__(self, stages: tuple[tuple[int, int, int, int, int], ...]):
        super().__init__()
        self._conv_stem = nn.Conv2d(1, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin, ends = [], 32, []
        for repeats, kernel, stride, expand, cout in stages:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
                cin = cout
            ends.append(len(blocks))  # steps() counts the stem first
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)
        self.guard_stages = tuple(ends[1:5])  # stages 2-5 (24-120 channels); the 1280-wide head would dwarf them

    def steps(self) -> list:
        return [lambda x: F.relu6(self._bn0(self._conv_stem(x))), *self._blocks,
                lambda x: F.relu6(self._bn1(self._conv_head(x)))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps():
            x = step(x)
        return x


def efficientnet_lite(variant: str, num_classes: int, dropout: float = 0.2) -> Classifier:
    """EfficientNet-Lite0/1/2 (3.4 / 4.1 / 4.8 M parameters with a 3-class head), meant to start
    from ImageNet weights."""
    return Classifier(EfficientNetLiteBody(EFFICIENTNET_LITE[variant]), 1280, num_classes, dropout)


class Head(NamedTuple):
    """A linear classifier's weight and bias, as :class:`Exported` reads them from ``model.classifier``."""
    weight: torch.Tensor
    bias: torch.Tensor


class Ensemble(nn.Module):
    """Networks of one architecture, each trained alone from its own seed; the logits are their mean. Their
    errors are less correlated than one network's across seeds, so the mean holds up better on acquisitions
    none of them saw (bench/RESULTS.md, "seed ensembles").

    It presents :class:`Classifier`'s interface to export and the guard: the members' last maps side by side
    and a classifier over them whose weights are each member's divided by the count, so a class-activation
    map is the members' mean map and its spatial mean plus the bias is exactly the mean logit.
    """

    def __init__(self, members: list[Classifier]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)

    def features_and_statistics(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' last maps side by side, and the first member's stage statistics: the guard's distance
        is on one network's features, as bench/ood_guard.py measured it, and its covariance stays the size
        of one network's (``members`` times the features would square it)."""
        features, statistics = zip(*(member.features_and_statistics(x) for member in self.members), strict=True)
        return torch.cat(features, dim=1), statistics[0]

    @property
    def classifier(self) -> Head:
        count = len(self.members)
        return Head(torch.cat([m.classifier.weight for m in self.members], dim=1) / count,
                    torch.stack([m.classifier.bias for m in self.members]).mean(dim=0))


def build(architecture: str, num_classes: int, width: int = 32, dropout: float = 0.2,
          members: int = 1) -> Classifier | Ensemble:
    """The network, or an :class:`Ensemble` of ``members`` of it (to load a trained one's weights into)."""
    if members > 1:
        return Ensemble([build(architecture, num_classes, width, dropout) for _ in range(members)])
    if members < 1:
        raise ValueError(f"an ensemble needs at least one member, got {members}")
    if architecture == "compact":
        return compact(num_classes, width, dropout)
    if architecture == "resnet":
        return resnet(num_classes, width, dropout)
    if architecture == "resnet_small":
        return resnet_small(num_classes, width, dropout)
    if architecture in EFFICIENTNET_LITE:
        return efficientnet_lite(architecture, num_classes, dropout)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


def load_pretrained(model: Classifier, state: dict[str, torch.Tensor]) -> list[str]:
    """Initialise the body from a checkpoint in efficientnet_pytorch's layout (ImageNet EfficientNet-Lite).

    RGB stem filters are summed over their colour channels, which is exactly what an RGB network
    computes on a gray image copied to three channels; the ImageNet classifier is dropped.
    Returns the body keys that found no weights (empty when the checkpoint fits).
    """
    if not isinstance(model.body, EfficientNetLiteBody):
        raise ValueError("pretrained weights are available for the efficientnet_lite networks only")
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    if "_conv_stem.weight" in state and state["_conv_stem.weight"].shape[1] == 3:
        # ImageNet inputs were (x - 0.449) / 0.226 per channel; ours are standardised per image,
        # which only rescales the activations that the following BatchNorm re-learns.
        state["_conv_stem.weight"] = state["_conv_stem.weight"].sum(dim=1, keepdim=True)
    try:
        missing, unexpected = model.body.load_state_dict(state, strict=False)
    except RuntimeError as error:  # size mismatch: the weights of another Lite variant
        raise ValueError(f"pretrained checkpoint does not fit this network: {str(error).splitlines()[1:3]}") from None
    if unexpected:
        raise ValueError(f"pretrained checkpoint has keys this network lacks: {unexpected[:5]}")
    return [k for k in missing if not k.endswith("num_batches_tracked")]


class Exported(nn.Module):
    """Export wrapper: logits, per-class activation maps and stage statistics, the ONNX outputs inference uses.

    ``cams[n, k]`` is the classifier's class-``k`` weights applied at every position of the last
    feature map (a 1x1 convolution), so its spatial mean plus the bias is exactly logit ``k``.
    ``features[n]`` are the stage statistics of :meth:`Classifier.features_and_statistics`, which the
    out-of-distribution guard (``ood.py``) measures its distance on.
    """

    def __init__(self, model: Classifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features, statistics = self.model.features_and_statistics(x)
        weight = self.model.classifier.weight[:, :, None, None]
        cams = F.conv2d(features, weight)
        return cams.mean(dim=(2, 3)) + self.model.classifier.bias, cams, statistics
