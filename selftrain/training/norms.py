"""RMSNorm forward and backward in half the passes over memory, for frozen norm weights.

transformers' RMSNorm (Llama, Mistral, Qwen2, Qwen3) is eight operators forward (a cast to
fp32, pow, mean, add, rsqrt, multiply, a cast back, the weight's multiply) and autograd
records each, so the backward is about ten more; on a [300 × 576] bf16 input every one is a
pass over memory. A decoder has two norms per layer and one at the end: 61 in SmolLM2,
~6% of a LoRA step. `_RMSNorm` computes the same forward (the same operations in the same
order and precision, so the same bits) in five passes, and its gradient with respect to the
input, by hand, in five:

    n = x·r, r = 1/√(mean(x²) + ε);  y = w ⊙ bf16(n)
    ∂x = r·(g − n·mean(g ⊙ n)),  g = ∂y ⊙ w   (in fp32, as autograd computes it)

The norm's weight gets no gradient: in LoRA training it is frozen (a norm whose weight is
trained, or that runs under autocast or in another dtype, runs transformers' forward).
"""

from __future__ import annotations

# Imported only inside training runs, never by the CLI at start-up.
import torch

# Norms whose forward is w * (x·rsqrt(mean(x²) + ε)).to(x.dtype), computed in fp32.
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        wide = x.float()
        r = wide.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
        normed = wide.mul_(r)
        ctx.save_for_backward(normed, r, weight)
        return normed.to(x.dtype).mul_(weight)

    @staticmethod
    def backward(ctx, grad):
        normed, r, weight = ctx.saved_tensors
        g = torch.mul(grad, weight).float()
        c = torch.linalg.vecdot(g, normed, dim=-1).unsqueeze(-1).div_(-normed.shape[-1])
        return g.addcmul_(normed, c).mul_(r).to(grad.dtype), None, None


def use_fast_norms(model) -> int:
    """Compute `model`'s RMSNorms (`RMS_NORMS`) with `_RMSNorm` while their weight is frozen
    and in the input's dtype, without autocast; returns how many. `restore_norms` undoes it."""
    norms = [m for m in model.modules()
             if type(m).__name__ in RMS_NORMS and hasattr(m, "variance_epsilon") and "forward" not in m.__dict__]
    for norm in norms:
        norm.forward = _bound(norm)
    return len(norms)


def _bound(norm):
    def forward(x):
        weight = norm.weight
        if weight.requires_grad or weight.dtype != x.dtype or torch.is_autocast_enabled("cpu"):
            return type(norm).forward(norm, x)
        return _RMSNorm.apply(x, weight, norm.variance_epsilon)
    forward.fast_norm = True
    return forward


def restore_norms(model) -> None:
    for module in model.modules():
        if getattr(module.__dict__.get("forward"), "fast_norm", False):
            del module.forward
