"""LoRA layers that read the same input, computed together by one hand-written autograd step.

PEFT computes each adapted linear on its own: the frozen matmul, a dropout mask, the two
rank-r matmuls, a multiply by the scaling and an add, each a separate operator with its own
autograd node, and again in the backward pass. For the attention's query, key and value
projections, which all read the same hidden states, that is three frozen matmuls, three masks
and nine rank-r matmuls per layer forward, and about twice that backward. Here a group of
such layers (`SHARED_INPUT`) runs as:

    out = x · Wᵀ + b  +  (x ⊙ keep) · Aᵀ · (f·B)ᵀ

with W and b the members' frozen weights stacked (each member's weight becomes a view of
the stack, so nothing is held twice), A the adapters' A matrices stacked, B their B
matrices on a block diagonal, each times its f = scaling / (1 − p) (the inverted dropout's
rescaling moved onto the small B), and `keep` one dropout mask for the group's input
(members are grouped only when their dropout has the same p). That is one frozen matmul
and two rank-r matmuls forward, five matmuls backward, and the elementwise work of one
masked copy forward and one backward. Layers in no group (o_proj) run the same
computation alone.

The one change in what is computed: the members of a group share their dropout mask (their
input's features are dropped together), as LitGPT's fused QKV LoRA does; each adapter still
sees its input dropped with probability p. With p = 0 the result is PEFT's, up to rounding.
A layer is fused only in plain LoRA (one active adapter, not merged, no DoRA or other
variant, no bias on B, `fan_in_fan_out` off); anything else runs PEFT's own forward, checked
at every call. The adapters stay PEFT's parameters, so saving, loading and the optimizer see
nothing different.
"""

from __future__ import annotations

# Imported only inside training runs, never by the CLI at start-up.
import torch
import torch.nn.functional as F

from selftrain.training.precision import drop_threshold, random_lanes

SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """An integer mask the size of `dtype`'s elements: all bits set where an element is
    kept, zero where it is dropped (probability p, up to 2⁻¹⁶). The random lanes are
    `precision.FastDropout`'s, each compared with the threshold t by clamping it to
    {t − 1, t} and subtracting it from t − 1: two integer operations, and the mask is
    applied with a bitwise and (`masked`), several times cheaper than a boolean mask and
    `masked_fill` on this CPU (bench/RESULTS.md)."""
    threshold = drop_threshold(p)
    lanes = random_lanes(shape).clamp_(threshold - 1, threshold)
    keep = torch.sub(threshold - 1, lanes)  # -1 (every bit set) where kept, 0 where dropped
    return keep if dtype.itemsize == 2 else keep.to(_INTS[dtype.itemsize])


def masked(t: torch.Tensor, keep: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """`t` with the elements `keep` drops set to zero (`t` itself, changed, if `inplace`)."""
    bits = t.view(keep.dtype)
    result = bits.bitwise_and_(keep) if inplace else torch.bitwise_and(bits, keep)
    return result.view(t.dtype)


class _LoraLinears(torch.autograd.Function):
    """Linears sharing an input x [..., I], each with a LoRA adapter; returns one output per
    member (views of one [..., ΣO] result). Gradients flow to x and to the A and B matrices;
    the frozen weight and bias get none."""

    @staticmethod
    def forward(ctx, x, weight, packed, bias, keep, factors, splits, ranks, *adapters):
        n = len(splits)
        lora_a, lora_b = adapters[:n], adapters[n:]
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        a_all = torch.cat(lora_a) if n > 1 else lora_a[0]  # [Σr, I]
        scaled = [b * f for b, f in zip(lora_b, factors)]
        b_all = torch.block_diag(*scaled) if n > 1 else scaled[0]  # [ΣO, Σr]
        out = packed.linear(rows, bias) if packed is not None else F.linear(rows, weight, bias)
        if keep is not None:
            keep = keep.view(rows.shape)
        kept = masked(rows, keep) if keep is not None else rows
        down = kept @ a_all.t()  # [T, Σr]
        out.addmm_(down, b_all.t())
        ctx.save_for_backward(weight, kept, keep, down, a_all, b_all)
        ctx.factors, ctx.splits, ctx.ranks, ctx.shape, ctx.packed = factors, splits, ranks, shape, packed
        out = out.view(*shape[:-1], out.shape[-1])
        return tuple(out.split(splits, dim=-1)) if n > 1 else out

    @staticmethod
    def backward(ctx, *grads):
        weight, kept, keep, down, a_all, b_all = ctx.saved_tensors
        grad = (torch.cat(grads, dim=-1) if len(grads) > 1 else grads[0]).reshape(down.shape[0], -1)
        grad_down = grad @ b_all  # [T, Σr]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = ctx.packed.grad_input(grad) if ctx.packed is not None else grad @ weight
            lora_x = grad_down @ a_all
            if keep is not None:
                masked(lora_x, keep, inplace=True)
            grad_x = grad_x.add_(lora_x).view(ctx.shape)
        grad_a = (grad_down.t() @ kept).split(ctx.ranks)
        blocks = (grad.t() @ down).split(ctx.splits)  # member i's gradient: block (i, i)
        grad_b = [block.split(ctx.ranks, dim=1)[i] * factor
                  for i, (block, factor) in enumerate(zip(blocks, ctx.factors))]
        return (grad_x, None, None, None, None, None, None, None, *grad_a, *grad_b)


def _stacked(params: list) -> torch.Tensor:
    """The frozen `params` stacked along their first dimension, each parameter then made a
    view of its rows: one copy in memory, and a change to a member's weight (PEFT merging an
    adapter into it) is a change to the stack."""
    if len(params) == 1:
        return params[0].detach()
    stack = torch.cat([p.detach() for p in params])
    start = 0
    for p in params:
        p.data = stack[start:start + p.shape[0]]
        start += p.shape[0]
    return stack


def _plain_lora(layer) -> bool:
    """Whether `layer` (a PEFT LoRA Linear) is, right now, x·Wᵀ + b + s·B·A·dropout(x)."""
    active = layer.active_adapters
    if len(active) != 1 or layer.merged or layer.disable_adapters or layer.fan_in_fan_out:
        return False
    name = active[0]
    return (name in layer.lora_A and name not in layer.lora_variant
            and isinstance(layer.base_layer, torch.nn.Linear) and layer.lora_B[name].bias is None)


class FusedGroup:
    """The forward of a group of LoRA Linears that read the same input. The first member
    called computes every member's output and keeps the others' for their own call with
    the same input tensor. If a member is called with another input first, the members do
    not share their input in this model, and each runs PEFT's forward from then on."""

    def __init__(self, layers: list):
        self.layers = layers
        self.shared = True
        self.pending: dict[int, torch.Tensor] = {}
        self.input = None
        bases = [layer.base_layer for layer in layers]
        self.splits = tuple(base.out_features for base in bases)
        self.weight = _stacked([base.weight for base in bases])
        biases = [base.bias for base in bases]
        if all(b is None for b in biases):
            self.bias = None
        elif all(b is not None for b in biases):
            self.bias = _stacked(biases)
        else:
            self.bias = torch.cat([b.detach() if b is not None else torch.zeros(n, dtype=self.weight.dtype)
                                   for b, n in zip(biases, self.splits)])
        # Where each member's weight lives: if the model is moved or cast afterwards, the stack
        # is stale and the members run PEFT's forward.
        self.places = [base.weight.data_ptr() for base in bases]
        self.packed = None  # prepack.PackedWeight of the stack, once `pack` is called

    def pack(self) -> None:
        """Compute the frozen matmuls from packed copies of the stack (`prepack.py`)."""
        from selftrain.models.prepack import PackedWeight

        self.packed = PackedWeight(self.weight)

    def forward(self, index: int, x: torch.Tensor, *args, **kwargs):
        layer = self.layers[index]
        if self.pending:
            if x is self.input and index in self.pending:
                out = self.pending.pop(index)
                if not self.pending:
                    self.input = None
                return out
            self.shared = False
            self.pending, self.input = {}, None
        if args or kwargs or not self.shared or not self.runs_fused(x):
            return type(layer).forward(layer, x, *args, **kwargs)
        outs = self.compute(x)
        if len(self.layers) == 1:
            return outs
        self.pending = {i: out for i, out in enumerate(outs) if i != index}
        self.input = x
        return outs[index]

    def runs_fused(self, x: torch.Tensor) -> bool:
        """Plain LoRA in every member, everything in x's dtype, no autocast, the weights where
        the stack has them."""
        if torch.is_autocast_enabled("cpu") or x.dtype != self.weight.dtype:
            return False
        for layer, place in zip(self.layers, self.places):
            if not _plain_lora(layer) or layer.base_layer.weight.data_ptr() != place:
                return False
            name = layer.active_adapters[0]
            if layer.lora_A[name].weight.dtype != x.dtype or layer.lora_B[name].weight.dtype != x.dtype:
                return False
        return True

    def compute(self, x: torch.Tensor):
        name = self.layers[0].active_adapters[0]
        dropout = self.layers[0].lora_dropout[name]  # the members' dropouts have one p (use_fused_lora)
        p = getattr(dropout, "p", 0.0) if dropout.training else 0.0
        keep = keep_mask(x.shape, p, x.dtype) if p > 0 else None
        lora_a = [layer.lora_A[name].weight for layer in self.layers]
        lora_b = [layer.lora_B[name].weight for layer in self.layers]
        ranks = tuple(a.shape[0] for a in lora_a)
        factors = tuple(layer.scaling[name] / (1.0 - p) for layer in self.layers)
        packed = self.packed if self.packed is not None and self.packed.current(self.weight) else None
        return _LoraLinears.apply(x, self.weight, packed, self.bias, keep, factors, self.splits,
                                  ranks, *lora_a, *lora_b)


def use_fused_lora(model) -> int:
    """Route `model`'s LoRA Linears through `FusedGroup`s: the members of each
    `SHARED_INPUT` group that are all adapted together, every other adapted Linear alone.
    Returns how many groups; `unfuse` restores PEFT's forward."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    groups = 0
    for parent in model.modules():
        children = {name: child for name, child in parent.named_children() if isinstance(child, LoraLinear)}
        if not children:
            continue
        sets = []
        for names in SHARED_INPUT:
            members = [children[n] for n in names if n in children]
            if (len(members) == len(names) and len({m.base_layer.in_features for m in members}) == 1
                    and len({m.base_layer.weight.dtype for m in members}) == 1
                    and len({_dropout_p(m) for m in members}) == 1):
                sets.append(members)
                for n in names:
                    del children[n]
        sets += [[child] for child in children.values()]
        for members in sets:
            if not all(_plain_lora(m) for m in members):
                continue
            group = FusedGroup(members)
            for index, member in enumerate(members):
                member.forward = _bound(group, index)
            groups += 1
    return groups


def _dropout_p(layer) -> float:
    return getattr(layer.lora_dropout[layer.active_adapters[0]], "p", 0.0) if _plain_lora(layer) else -1.0


def _bound(group: FusedGroup, index: int):
    def forward(x, *args, **kwargs):
        return group.forward(index, x, *args, **kwargs)
    forward.fused_group = group
    return forward


def unfuse(model) -> None:
    for module in model.modules():
        if hasattr(module.__dict__.get("forward"), "fused_group"):
            del module.forward
