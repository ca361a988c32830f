"""Packed batches: a step's examples laid end to end in one row, with no padding and no
attention between them, and the loss computed only where it is taken.

Padding a batch of short examples to a common length wastes most of the compute on
positions that are thrown away; laying the examples end to end wastes none. Two things
keep a packed row equivalent to the separate examples:

- positions restart at 0 for every example (`position_ids`), so rotary/absolute
  position embeddings see each example as if it were alone;
- attention stays inside each example. Transformers would build a block-diagonal mask
  from the position ids, but a masked SDPA call computes (and differentiates) the whole
  T×T score matrix; attending within each example separately computes only Σ Lᵢ². That
  is `segment_attention`, registered with transformers' `AttentionInterface` and
  selected per model with `use_segment_attention`.

The logits (a hidden×vocab matmul per position: 49k columns for SmolLM2) are computed
only at answer positions; the prompt positions would only be discarded by the loss. For
the architectures in `BLOCKWISE_LOSS_MODELS` the loss goes further: it is computed from the
decoder's hidden states a block of positions at a time (`blockwise_cross_entropy`), so the
[answer positions × vocabulary] fp32 logits never exist whole. At 2 examples of ~400
tokens they would be ~130 MB, allocated fresh every step; glibc serves that with mmap and
every page faults on first touch, which made the loss run at ~1 GB/s (bench/RESULTS.md).
Other models use their `logits_to_keep` argument.
"""

from __future__ import annotations

import functools
import inspect
import threading
from dataclasses import dataclass

# Imported only inside training runs, never by the CLI at start-up.
import torch
import torch.nn.functional as F

ATTENTION_NAME = "selftrain_segments"
IGNORE = -100


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # [1, T] long: the examples end to end
    position_ids: torch.Tensor  # [1, T] long: 0, 1, ... restarting at each example
    loss_positions: torch.Tensor  # [K] long: positions whose next token is an answer token
    targets: torch.Tensor  # [K] long: that next token
    segment_lengths: tuple[int, ...]  # length of each example, in order

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[1])


def pack(rows: list[tuple[list[int], list[int]]]) -> PackedBatch:
    """Lay (input_ids, labels) rows end to end. A label of -100 marks a position that is
    not learned (the prompt); position i predicts token i+1 of the same example only, so
    an example's last token never predicts the next example's first."""
    ids: list[int] = []
    positions: list[int] = []
    loss_positions: list[int] = []
    targets: list[int] = []
    for input_ids, labels in rows:
        start = len(ids)
        ids += input_ids
        positions += range(len(input_ids))
        for i in range(len(input_ids) - 1):
            if labels[i + 1] != IGNORE:
                loss_positions.append(start + i)
                targets.append(labels[i + 1])
    return PackedBatch(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]),
                       loss_positions=torch.tensor(loss_positions, dtype=torch.long),
                       targets=torch.tensor(targets, dtype=torch.long),
                       segment_lengths=tuple(len(r[0]) for r in rows))


MATH_ATTENTION_MAX = 1024  # longest segment for the matmul path (its saved scores grow as L²)


@functools.lru_cache(maxsize=64)
def _causal_bias(length: int, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """[groups·L, L]: 0 where a query may look, -inf above the diagonal, once per grouped head."""
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    return torch.zeros(length, length, dtype=dtype).masked_fill(future, float("-inf")).repeat(groups, 1)


def causal_attention(query, key, value, scale: float, dropout: float = 0.0) -> torch.Tensor:
    """Causal attention of one sequence. query: [B, H, L, D], key/value: [B, H_kv, L, D]
    (H a multiple of H_kv, grouped-query attention); returns [B, H, L, D].

    For short sequences two plain batched matmuls beat SDPA's CPU flash kernel about 2×
    (measured at L = 214, 9 heads of 64: bench/RESULTS.md): its blocking is tuned for long
    sequences. The query heads that share a key/value head are stacked into one matrix, so
    keys and values are never copied per head and each matmul is larger. Scores are bf16
    like transformers' own eager attention; softmax accumulates in fp32 internally."""
    b, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    if dropout or b != 1 or length > MATH_ATTENTION_MAX:
        if groups > 1:
            key = key[:, :, None].expand(b, kv_heads, groups, length, dim).reshape(b, heads, length, dim)
            value = value[:, :, None].expand(b, kv_heads, groups, length, dim).reshape(b, heads, length, dim)
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scale, is_causal=True)
    q = query[0].reshape(kv_heads, groups * length, dim)  # heads h = kv·groups + j, as repeat_kv lays them out
    scores = torch.baddbmm(_causal_bias(length, groups, query.dtype), q, key[0].transpose(1, 2), alpha=scale)
    out = torch.bmm(torch.softmax(scores, dim=-1), value[0])
    return out.view(1, heads, length, dim)


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                      scaling: float | None = None, segment_lengths: tuple[int, ...] | None = None,
                      **kwargs):
    """Causal attention within each packed example. query: [B, H, T, D], key/value:
    [B, H_kv, T, D]; returns ([B, T, H, D], None) like transformers' SDPA backend.

    Without `segment_lengths` (a plain forward, e.g. generation on the training model)
    this is ordinary SDPA with the mask transformers passes."""
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if not segment_lengths:
        groups = query.shape[1] // key.shape[1]
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        causal = attention_mask is None and query.shape[2] > 1
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                             dropout_p=dropout, scale=scale, is_causal=causal)
        return out.transpose(1, 2).contiguous(), None
    outs, start = [], 0
    for length in segment_lengths:
        end = start + length
        outs.append(causal_attention(query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                     scale, dropout))
        start = end
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def use_segment_attention(model, max_length: int) -> bool:
    """Switch `model` (a transformers model, possibly wrapped by PEFT) to segment attention.
    False (the model is left as it is) when its architecture does not route attention
    through AttentionInterface, or needs what plain causal attention does not do: logit
    soft-capping, or a sliding window shorter than `max_length`."""
    from transformers import AttentionInterface

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
    if (not getattr(base, "_supports_attention_backend", False)
            or getattr(config, "attn_logit_softcapping", None) or (window and window < max_length)):
        return False
    if ATTENTION_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTENTION_NAME, segment_attention)
    config._attn_implementation = ATTENTION_NAME
    for module in base.modules():  # sub-configs (if any) carry their own copy
        sub = getattr(module, "config", None)
        if sub is not None and getattr(sub, "_attn_implementation", None) not in (None, ATTENTION_NAME):
            sub._attn_implementation = ATTENTION_NAME
    return True


# Causal LMs whose forward is exactly `lm_head(decoder(...).last_hidden_state)`: no logit
# scaling or soft-capping that the blockwise loss would skip.
BLOCKWISE_LOSS_MODELS = frozenset({"llama", "mistral", "qwen2", "qwen3"})
LOSS_BLOCK_BYTES = 16 << 20  # fp32 logits per block (one buffer, kept between steps: `_loss_buffers`)


def blockwise_loss_parts(model):
    """(decoder, output projection) when `model`'s loss may be computed blockwise, else None:
    a known architecture whose output projection has no bias and is not being trained."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if (getattr(base.config, "model_type", None) not in BLOCKWISE_LOSS_MODELS
            or not isinstance(head, torch.nn.Linear) or head.bias is not None or head.weight.requires_grad):
        return None
    return base.get_decoder(), head


class _BlockwiseCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weightᵀ` against `targets`, `rows` positions at a time.

    The gradient with respect to `hidden`, (softmax − one-hot) @ weight / n, is computed in the
    forward pass block by block and kept (n × hidden size), so neither pass holds the whole
    logits. Each block's fp32 logits are the only buffer its softmax needs: the max is taken
    out, then exp, sum and the scaling to probabilities / n all run in place. The rounding
    follows the plain path: logits in the weight's dtype, softmax in fp32, the gradient cast
    back to the hidden states' dtype before its matmul. `weight` gets no gradient (callers
    check it is frozen); `packed` (a `prepack.PackedWeight` of it, or None) computes both
    matmuls from packed copies."""

    @staticmethod
    def forward(ctx, hidden, weight, packed, targets, rows):
        n = hidden.shape[0]
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float32)
        wide, narrow = _loss_buffers(min(rows, n), weight.shape[0], hidden.dtype)
        for start in range(0, n, rows):
            target = targets[start:start + rows, None]
            block = hidden[start:start + rows]
            raw = packed.linear(block) if packed is not None else block @ weight.t()
            logits = raw if raw.dtype == torch.float32 else wide[:len(block)].copy_(raw)
            top = logits.amax(dim=-1, keepdim=True)
            total -= logits.gather(1, target).sub_(top).sum()
            sums = logits.sub_(top).exp_().sum(dim=-1, keepdim=True)
            total += sums.log().sum()
            if grad is not None:
                probs = logits.mul_(sums.reciprocal_().mul_(1.0 / n))  # softmax / n
                probs.scatter_add_(1, target, torch.full(target.shape, -1.0 / n))
                if hidden.dtype != torch.float32:
                    probs = narrow[:len(block)].copy_(probs)
                grad[start:start + rows] = packed.grad_input(probs) if packed is not None else probs @ weight
        ctx.save_for_backward(grad)
        return total / max(n, 1)

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None, None


_buffers = threading.local()


def _loss_buffers(rows: int, vocab: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """At least `rows` rows of fp32 logits and of their copy in `dtype`, kept from one step to
    the next (per thread): a fresh buffer of this size costs a page fault per 4 KB on first
    touch, more than the pass that fills it (bench/RESULTS.md)."""
    kept = getattr(_buffers, "tensors", None)
    if kept is None or kept[0].shape[0] < rows or kept[0].shape[1] != vocab or kept[1].dtype != dtype:
        with torch.inference_mode(False):  # usable in place by training after an eval
            _buffers.tensors = (torch.empty(rows, vocab, dtype=torch.float32), torch.empty(rows, vocab, dtype=dtype))
    return _buffers.tensors


def blockwise_cross_entropy(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the logits `head(hidden)` ([n, d] @ [d, V]) against `targets`;
    from the head's packed weight when `prepack.use_packed_weights` packed it."""
    from selftrain.models.prepack import packed_copies

    rows = max(1, LOSS_BLOCK_BYTES // (head.weight.shape[0] * 4))
    return _BlockwiseCrossEntropy.apply(hidden, head.weight, packed_copies(head, hidden), targets, rows)


def accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def packed_loss(model, batch: PackedBatch, *, logits: str = "blockwise") -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the batch's answer tokens, number of those tokens).

    `logits` says where the vocabulary projection runs: "blockwise" — at the answer
    positions, a block at a time from the hidden states (callers check
    `blockwise_loss_parts`); "answers" — at the answer positions through the model's
    `logits_to_keep`; "all" — everywhere. Logits are upcast to fp32 for the softmax (bf16
    log-softmax over a 49k vocabulary loses the small probabilities the loss depends on)."""
    kwargs = {"input_ids": batch.input_ids, "position_ids": batch.position_ids,
              "segment_lengths": batch.segment_lengths, "use_cache": False}
    n = int(batch.targets.numel())
    if logits == "blockwise" and n:
        decoder, head = blockwise_loss_parts(model)
        hidden = decoder(**kwargs).last_hidden_state[0, batch.loss_positions]
        return blockwise_cross_entropy(hidden, head, batch.targets), n
    if logits == "all":
        out = model(**kwargs).logits[0, batch.loss_positions]
    else:
        out = model(**kwargs, logits_to_keep=batch.loss_positions).logits[0]
    if n == 0:
        return out.sum() * 0.0, 0
    return F.cross_entropy(out.float(), batch.targets), n
