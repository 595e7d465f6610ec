"""Seed packs as networks: K models of one architecture fused into one block-diagonal one.

A convolution becomes one grouped convolution with ``groups = K`` (seed k's channels are
group k), on activations laid out ``[B, K*C, H, W]`` (the "channels" layout); a linear layer
becomes ``BlockLinear``: K independent matrices in one batched matrix multiply; networks
without convolutions (MLPs) use the "batch" layout, in which seed k's examples are block k
of the first dimension and nothing is ever transposed; a BatchNorm over ``C`` channels
becomes one over ``K*C``, so every seed keeps its own batch statistics; dropout becomes
``SeedDropout`` (seed k's mask from seed k's generator); element-wise layers, pooling and
flattening work unchanged on either layout. No layer mixes blocks.

Every packed parameter and buffer is its K per-seed tensors concatenated along the first
dimension under the plain model's name, so a seed's plain ``state_dict`` is a slice
(``SeedPack.seed_state``). These are the architectures' packed forms, kept beside them;
how a pack trains is ``study/pack.py``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from study.models import cnn, densenet, mlp, resnet_cifar, wrn
from study.models.dropout import SeedDropout


class NotPackable(ValueError):
    """A model contains a layer the pack does not know how to make block-diagonal."""


Layout = Literal["channels", "batch"]
"""How a pack lays out its activations: ``"channels"`` (``[B, K*C, ...]``: seed k's channels
are block k; what grouped convolutions need) or ``"batch"`` (``[K*B, ...]`` or
``[K, B, ...]``: seed k's examples are block k of the first dimension; networks without
convolutions, where it saves every transpose)."""


class BlockLinear(nn.Module):
    """K independent ``Linear(in_features, out_features)`` in one batched matrix multiply.

    ``weight`` is ``[K*out, in]`` (seed k's matrix is rows ``k*out .. (k+1)*out``) and
    ``bias`` is ``[K*out]``: the same names as ``nn.Linear`` and the K plain tensors stacked.
    Maps ``[B, K*in]`` to ``[B, K*out]`` in the channels layout, ``[K*B, in]`` (or
    ``[K, B, in]``) to ``[K, B, out]`` in the batch layout: the batched multiply's own
    output, not a view of it, because an MLP's in-place ReLU follows, and an in-place op on
    a view costs autograd a copy of the whole activation in the backward pass (0.2 ms of a
    3.3 ms step for the digits MLP in a pack of 20).
    """

    def __init__(
        self,
        k: int,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        layout: Layout = "channels",
    ):
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.layout = layout
        self.weight = nn.Parameter(torch.empty(k * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(k * out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        k, n_in, n_out = self.k, self.in_features, self.out_features
        if self.layout == "batch":
            seeds = x.reshape(k, -1, n_in)  # [K, B, in]
        else:
            seeds = x.reshape(x.shape[0], k, n_in).transpose(0, 1)  # [K, B, in], a view
        weight = self.weight.view(k, n_out, n_in).transpose(1, 2)
        if self.bias is None:
            out = torch.bmm(seeds, weight)
        else:
            out = torch.baddbmm(self.bias.view(k, 1, n_out), seeds, weight)
        if self.layout == "batch":
            return out
        return out.transpose(0, 1).reshape(x.shape[0], k * n_out)

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}, "
            f"layout={self.layout}"
        )


class _PackedDenseLayer(nn.Module):
    """DenseNet-BC's bottleneck on the packed layout: the concatenation is per seed."""

    def __init__(self, layer: densenet.Bottleneck, k: int):
        super().__init__()
        self.k = k
        self.bn1, self.conv1, self.bn2 = layer.bn1, layer.conv1, layer.bn2
        self.conv2, self.dropout = layer.conv2, layer.dropout

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.dropout(self.conv2(F.relu(self.bn2(out))))
        b, _, h, w = x.shape
        if x.is_contiguous(memory_format=torch.channels_last):
            # Concatenate in NHWC memory, so that the result stays channels-last as the
            # plain layer's does: the next BatchNorm and convolution then sum in its order.
            seeds = (
                x.permute(0, 2, 3, 1).reshape(b, h, w, self.k, -1),
                out.permute(0, 2, 3, 1).reshape(b, h, w, self.k, -1),
            )
            return torch.cat(seeds, dim=4).view(b, h, w, -1).permute(0, 3, 1, 2)
        seeds = (x.view(b, self.k, -1, h, w), out.view(b, self.k, -1, h, w))
        return torch.cat(seeds, dim=2).view(b, -1, h, w)


# Modules without parameters of their own whose forward is correct on the packed layout
# (element-wise, per channel, or flattening [B, K*C, H, W] into seed-major blocks).
_LAYOUT_SAFE: tuple[type[nn.Module], ...] = (
    nn.Sequential,
    nn.Identity,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    mlp.MLP,
    cnn.SmallCNN,
    wrn.WideResNet,
    wrn.PreActBlock,
    resnet_cifar.CifarResNet,
    resnet_cifar.BasicBlock,
    densenet.DenseNetBC,
    densenet.Transition,
)


def concat_seeds(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach() for t in tensors], dim=0)


def _packed_leaf(name: str, modules: list[nn.Module], k: int, layout: Layout) -> nn.Module | None:
    """The packed replacement of the K modules found at ``name`` (None: keep as is)."""
    first = modules[0]
    if type(first) is nn.Conv2d:
        conv = nn.Conv2d(
            k * first.in_channels,
            k * first.out_channels,
            first.kernel_size,  # type: ignore[arg-type]
            first.stride,  # type: ignore[arg-type]
            first.padding,  # type: ignore[arg-type]
            first.dilation,  # type: ignore[arg-type]
            groups=k * first.groups,
            bias=first.bias is not None,
            padding_mode=first.padding_mode,
            device=first.weight.device,
            dtype=first.weight.dtype,
        )
        _load_stacked(conv, modules)
        return conv
    if type(first) is nn.BatchNorm2d:
        bn = nn.BatchNorm2d(
            k * first.num_features,
            eps=first.eps,
            momentum=first.momentum,
            affine=first.affine,
            track_running_stats=first.track_running_stats,
            device=first.weight.device if first.affine else None,
        )
        _load_stacked(bn, modules)
        return bn
    if type(first) is nn.Linear:
        bias = first.bias is not None
        linear = BlockLinear(k, first.in_features, first.out_features, bias, layout=layout)
        linear.to(device=first.weight.device, dtype=first.weight.dtype)
        _load_stacked(linear, modules)
        return linear
    if type(first) is nn.Dropout:
        return SeedDropout(first.p, k, layout=layout)
    if type(first) is densenet.Bottleneck:
        return None  # its children are packed; the layer itself is wrapped afterwards
    if isinstance(first, _LAYOUT_SAFE):
        if any(True for _ in first.parameters(recurse=False)) or list(first.buffers(False)):
            raise NotPackable(f"module {name or 'model'} ({type(first).__name__}) holds tensors")
        return None
    raise NotPackable(f"module {name or 'model'} ({type(first).__name__}) cannot be packed")


def _load_stacked(packed: nn.Module, modules: list[nn.Module]) -> None:
    """Give ``packed`` the K modules' parameters and buffers, stacked along dimension 0."""
    plain = [dict(m.state_dict()) for m in modules]
    state = {
        key: concat_seeds([p[key] for p in plain]) if value.dim() else value.detach().clone()
        for key, value in plain[0].items()
    }
    packed.load_state_dict(state)


def _layout(model: nn.Module) -> Layout:
    """The batch layout for networks without convolutions or batch norms, else channels."""
    spatial = (nn.Conv2d, nn.BatchNorm2d, densenet.Bottleneck)
    return "channels" if any(isinstance(m, spatial) for m in model.modules()) else "batch"


def _pack_network(models: Sequence[nn.Module], layout: Layout) -> nn.Module:
    """One block-diagonal network computing the K models (same architecture) side by side."""
    k = len(models)
    names = [n for n, _ in models[0].named_modules()]
    for m in models[1:]:
        if [n for n, _ in m.named_modules()] != names:
            raise NotPackable("the models of a pack must have the same architecture")
    net = copy.deepcopy(models[0])
    dense_layers = []
    for name in names:
        group = [m.get_submodule(name) for m in models]
        replacement = _packed_leaf(name, group, k, layout)
        if type(group[0]) is densenet.Bottleneck:
            dense_layers.append(name)
        if replacement is not None:
            _replace(net, name, replacement)
    for name in dense_layers:  # after their children were packed
        _replace(net, name, _PackedDenseLayer(net.get_submodule(name), k))  # type: ignore[arg-type]
    return net


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, module)


class SeedPack(nn.Module):
    """K models of one architecture as one block-diagonal network.

    ``forward`` takes each seed's batch, ``[K, B, C, H, W]``, and returns each seed's logits
    ``[K, B, classes]``; ``forward_shared`` gives all seeds the same batch ``[B, C, H, W]``
    (evaluation). ``seed_state(k)`` is seed k's ``state_dict`` in the plain model's format.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("a seed pack needs at least one model")
        self.k = len(models)
        self.layout = _layout(models[0])
        self.net = _pack_network(models, self.layout)

    def forward(self, x: Tensor) -> Tensor:
        k, b = x.shape[:2]
        if k != self.k:
            raise ValueError(f"a pack of {self.k} seeds got batches for {k}")
        if self.layout == "batch":
            return self.net(x.flatten(0, 1)).view(k, b, -1)
        packed = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])
        return self.net(packed).view(b, k, -1).transpose(0, 1)

    def forward_shared(self, x: Tensor) -> Tensor:
        b, ones = x.shape[0], [1] * (x.dim() - 1)
        if self.layout == "batch":
            return self.net(x.repeat(self.k, *ones)).view(self.k, b, -1)
        packed = x.repeat(1, self.k, *ones[1:])
        return self.net(packed).view(b, self.k, -1).transpose(0, 1)

    def seed_state(self, k: int) -> dict[str, Tensor]:
        """Seed k's weights and buffers as the plain model's ``state_dict`` (copies)."""
        return {
            key: seed_slice(value.detach(), k, self.k).clone()
            for key, value in self.net.state_dict().items()
        }

    def set_dropout_generators(self, generators: Sequence[torch.Generator | None]) -> None:
        """Seed k's dropout masks come from ``generators[k]`` (None: torch's global one)."""
        for module in self.net.modules():
            if isinstance(module, SeedDropout):
                module.generators = list(generators)


def seed_slice(value: Tensor, k: int, size: int) -> Tensor:
    """Seed k's part of a packed tensor; 0-d tensors (BN's batch counter) are shared."""
    if value.dim() == 0:
        return value
    return value.view(size, value.shape[0] // size, *value.shape[1:])[k]


class _SeedLoop(nn.Module):
    """The ``SeedPack`` interface over models that cannot be packed (a teacher's, say)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.k = len(models)
        self.models = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([m(xk) for m, xk in zip(self.models, x, strict=True)])

    def forward_shared(self, x: Tensor) -> Tensor:
        return torch.stack([m(x) for m in self.models])


def frozen_pack(models: Sequence[nn.Module]) -> nn.Module:
    """Models of a pack as one network (a ``SeedPack``, or a loop over them where they do
    not pack) in eval mode without gradients: a student pack's teachers."""
    try:
        frozen: nn.Module = SeedPack(models)
    except NotPackable:
        frozen = _SeedLoop(models)
    return frozen.eval().requires_grad_(False)
