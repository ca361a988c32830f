"""bf16 training of LoRA adapters without losing small updates, and a cheaper dropout.

On a CPU with bf16 matmul units (AVX512-BF16, AMX) the frozen base runs in bf16. PEFT
keeps the adapters in fp32 by default, so every adapted layer converts its bf16 input
to fp32 and its fp32 output back — copies that cost more than the rank-8 matmuls
themselves. Here the adapters run in bf16 like the base, and the optimizer steps an
fp32 master copy (bf16 has an 8-bit mantissa: an update below 1/256 of a weight would
vanish if applied to the bf16 value directly). This is the usual mixed-precision
scheme (Micikevicius et al. 2018, "Mixed Precision Training"), without loss scaling,
which bf16's fp32-sized exponent makes unnecessary.

Dropout: `nn.Dropout` draws one fp32 Bernoulli sample per element, which measured at
~7% of a LoRA step here. `FastDropout` draws 64 random bits per 4 elements and compares
16-bit lanes with a threshold: the same distribution up to 2⁻¹⁶ in p.
"""

from __future__ import annotations

# Imported only inside training runs, never by the CLI at start-up.
import torch


class MasterWeights:
    """fp32 master copies of the trainable parameters when they run in a lower precision.
    The optimizer steps the masters; after each step they are copied into the model. With
    dtype float32 the parameters are their own masters and every call is a no-op."""

    def __init__(self, params, dtype: torch.dtype):
        self.params = list(params)
        self.shadow = dtype != torch.float32
        if not self.shadow:
            for p in self.params:
                p.data = p.data.float()
            self.masters = self.params
            return
        self.masters = []
        self._grads = None  # fp32 gradient buffers, made at the first step
        for p in self.params:
            self.masters.append(p.detach().clone().float().requires_grad_(True))
            p.data = p.data.to(dtype)

    def grads_to_masters(self) -> None:
        """Move the parameters' gradients onto the masters, in fp32 (one batched copy into
        gradient buffers kept from step to step)."""
        if not self.shadow:
            return
        if self._grads is None:
            self._grads = [torch.zeros_like(master) for master in self.masters]
        sources, targets = [], []
        for p, master, grad in zip(self.params, self.masters, self._grads):
            master.grad = None if p.grad is None else grad
            if p.grad is not None:
                sources.append(p.grad)
                targets.append(grad)
                p.grad = None
        if sources:
            torch._foreach_copy_(targets, sources)

    @torch.no_grad()
    def masters_to_params(self) -> None:
        if self.shadow:
            torch._foreach_copy_(self.params, self.masters)

    def restore_fp32(self) -> None:
        """Give the model its fp32 parameters back (to save a full-precision adapter)."""
        if not self.shadow:
            return
        for p, master in zip(self.params, self.masters):
            p.data = master.detach().clone()


def random_lanes(shape: torch.Size) -> torch.Tensor:
    """int16 values uniform over the whole range, one per element of `shape`: 64 random
    bits drawn per 4 elements."""
    n = shape.numel()
    words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    return words.view(torch.int16)[:n].view(shape)


def drop_threshold(p: float) -> int:
    """The lane value below which an element is dropped: probability p, up to 2⁻¹⁶."""
    return -32768 + round(p * 65536)


class FastDropout(torch.nn.Module):
    """Inverted dropout with cheap random bits; the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = drop_threshold(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = (random_lanes(x.shape) >= self.threshold).to(x.dtype)
        return x * keep.mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model) -> int:
    """Replace every LoRA dropout of `model` by `FastDropout`; returns how many."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, layer in list(dropouts.items()):
                if isinstance(layer, torch.nn.Dropout) and layer.p > 0:
                    dropouts[name] = FastDropout(layer.p)
                    replaced += 1
    return replaced
