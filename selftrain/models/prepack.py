"""Frozen weights packed once, for a training run or a model's life in service, into the
layout oneDNN's matmul kernels read.

A bf16 matmul on the CPU first copies its weight matrix into oneDNN's blocked layout, on
every call. In LoRA training the base model's weights never change, yet each is used twice a
step, x·Wᵀ forward and g·W backward, and copied both times, from memory that the rest of the
step has long evicted from the cache. Here each frozen weight is packed once both ways (W for
the forward, Wᵀ for the backward) and the two matmuls read the packed copies. The kernels are
the same, and so were the results wherever measured (bench/RESULTS.md); the cost is the
packed copies' memory, twice the frozen weights'.

Generation gains too, more: at a decode step's few rows the copy of the weight costs more than
the product. There only the forward copy is made (`inference=True`), used while gradients are
off.

A packed copy is used only while its weight is the one it was taken from: the same tensor in
the same place, not changed in place since (`Tensor._version`), in the input's dtype, not
trained (unless gradients are off), and no autocast. Otherwise the layer runs its own forward.
A change through `.data` bypasses the version counter, so the copies are made where nothing
does that: `sft.run` packs its own model right before its training loop; the serving engine
and the agent (`agent.load_version`) and evaluation (`harness.evaluate_model`) pack models
loaded for answering, adapters already merged.
"""

from __future__ import annotations

import functools
import os

# Imported only where a model runs, never by the CLI at start-up.
import torch


@functools.lru_cache(maxsize=None)
def available(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU run bf16 linears on packed oneDNN weights."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    return (dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and hasattr(mkldnn, "_reorder_linear_weight") and hasattr(mkldnn, "_linear_pointwise")
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def _linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed, bias, "none", [], "")


class PackedWeight:
    """A frozen weight W [out, in] packed for x·Wᵀ (`linear`) and, unless `backward` is
    False (inference only), for g·W (`grad_input`)."""

    def __init__(self, weight: torch.Tensor, backward: bool = True):
        data = weight.detach()
        self.weight = weight
        self.place, self.version, self.dtype = data.data_ptr(), weight._version, data.dtype
        self.forward = torch.ops.mkldnn._reorder_linear_weight(data)
        self.backward = torch.ops.mkldnn._reorder_linear_weight(data.t().contiguous()) if backward else None

    def current(self, weight: torch.Tensor) -> bool:
        """Whether `weight` is still, unchanged, the tensor these copies were packed from."""
        return (weight is self.weight and weight.data_ptr() == self.place and weight._version == self.version
                and weight.dtype == self.dtype)

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return _linear(x, self.forward, bias)

    def grad_input(self, grad: torch.Tensor) -> torch.Tensor:
        return _linear(grad, self.backward, None)


class _FrozenLinear(torch.autograd.Function):
    """x·Wᵀ + b with W and b frozen: the gradient goes to x only, and nothing is saved."""

    @staticmethod
    def forward(ctx, x, packed, bias):
        ctx.packed = packed
        return packed.linear(x, bias)

    @staticmethod
    def backward(ctx, grad):
        return ctx.packed.grad_input(grad), None, None


def _usable(packed: PackedWeight, weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The copies are current and fit x; with gradients on, W and b are frozen and there is
    a backward copy."""
    if (not packed.current(weight) or x.dtype != packed.dtype or torch.is_autocast_enabled("cpu")
            or (bias is not None and bias.dtype != x.dtype)):
        return False
    return not torch.is_grad_enabled() or (
        packed.backward is not None and not weight.requires_grad and (bias is None or not bias.requires_grad))


def _packable(weight: torch.Tensor) -> bool:
    return weight.device.type == "cpu" and available(weight.dtype)


MEMORY_SHARE = 0.25  # the packed copies may take at most this share of the memory available


def available_memory() -> int:
    """Bytes of memory available to new allocations (Linux's MemAvailable), or 0 if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def use_packed_weights(model, memory: int | None = None, *, inference: bool = False) -> int:
    """Compute `model`'s frozen bf16 matmuls from packed weights: each group of fused LoRA
    layers (`fused.py`) from its stack, every other frozen `nn.Linear` (PEFT's base layers
    included) from its own weight. The copies take twice the packed weights' memory; if that
    is over `MEMORY_SHARE` of `memory` (default: what is available now), nothing is packed.
    With `inference`, every bf16 `nn.Linear` gets a forward copy only (half the memory), used
    while gradients are off (`torch.inference_mode`, `torch.no_grad`).
    A linear packed already is left as it is. Returns how many weights were packed; `unpack`
    undoes it."""
    groups = {}  # fused LoRA groups (training only): packed as their stacks, not member by member
    for module in model.modules():
        group = getattr(module.__dict__.get("forward"), "fused_group", None)
        if group is not None and group.packed is None and not inference and _packable(group.weight):
            groups[id(group)] = group
    grouped = {id(layer.base_layer) for group in groups.values() for layer in group.layers}
    linears = [module for module in model.modules()
               if type(module) is torch.nn.Linear and id(module) not in grouped
               and (inference or not module.weight.requires_grad)
               and _packable(module.weight) and "forward" not in module.__dict__]
    weights = [group.weight for group in groups.values()] + [module.weight for module in linears]
    need = (1 if inference else 2) * sum(w.numel() * w.element_size() for w in weights)
    if need > MEMORY_SHARE * (available_memory() if memory is None else memory):
        return 0
    for group in groups.values():
        group.pack()
    for module in linears:
        module.forward = _bound(module, PackedWeight(module.weight, backward=not inference))
    return len(weights)


def _bound(module: torch.nn.Linear, packed: PackedWeight):
    def forward(x):
        if _usable(packed, module.weight, x, module.bias):
            if not torch.is_grad_enabled():
                return packed.linear(x, module.bias)
            return _FrozenLinear.apply(x, packed, module.bias)
        return torch.nn.Linear.forward(module, x)
    forward.packed_weight = packed
    return forward


def packed_copies(linear: torch.nn.Linear, x: torch.Tensor) -> PackedWeight | None:
    """`linear`'s packed copies, if `use_packed_weights` made them and they may compute it
    for x now (for code that runs the linear's matmuls itself, like the blockwise loss)."""
    packed = getattr(linear.__dict__.get("forward"), "packed_weight", None)
    return packed if packed is not None and _usable(packed, linear.weight, x, linear.bias) else None


def unpack(model) -> None:
    for module in model.modules():
        forward = module.__dict__.get("forward")
        if hasattr(forward, "packed_weight"):
            del module.forward
        elif getattr(forward, "fused_group", None) is not None:
            forward.fused_group.packed = None
