"""Packing is only a speed-up if it changes nothing: each example's loss must be the same
packed with others as alone."""

import pytest

from selftrain.data.curate import Example
from selftrain.training.sft import SFTConfig, collate, tokenize


def examples(n):
    return [Example(i, f"Write a Python function `f{i}(x)` that returns x plus {i}." + " Be brief." * i,
                    f"def f{i}(x):\n    return x + {i}" + "\n# done" * (i % 3), "Adds.", "math", "accepted")
            for i in range(n)]


@pytest.fixture(scope="module")
def model_and_rows(tiny_model_dir):
    import torch

    from selftrain.models.base import load_model

    torch.manual_seed(0)
    model, tok = load_model(str(tiny_model_dir), "float32")
    model.eval()
    rows = tokenize(examples(4), tok, SFTConfig())
    assert len({len(ids) for ids, _ in rows}) > 1  # different lengths: a real test of the boundaries
    return model, tok, rows


def per_example_packed_losses(model, rows):
    import torch.nn.functional as F

    from selftrain.training.packing import pack

    batch = pack(rows)
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                   segment_lengths=batch.segment_lengths, logits_to_keep=batch.loss_positions).logits[0]
    token_losses = F.cross_entropy(logits.float(), batch.targets, reduction="none")
    counts = [sum(1 for label in labels[1:] if label != -100) for _, labels in rows]
    out, start = [], 0
    for n in counts:
        out.append(float(token_losses[start:start + n].mean()))
        start += n
    return out


def test_packed_losses_equal_unpacked_losses(model_and_rows):
    import torch

    from selftrain.training.packing import use_segment_attention

    model, tok, rows = model_and_rows
    with torch.no_grad():
        alone = [float(model(**collate([row], tok.pad_token_id)).loss) for row in rows]
        assert use_segment_attention(model, 512)
        try:
            packed = per_example_packed_losses(model, rows)
        finally:
            model.config._attn_implementation = "sdpa"
    assert packed == pytest.approx(alone, rel=1e-4, abs=1e-5)


def test_concatenation_without_segments_would_leak_between_examples(model_and_rows):
    """The check above can fail: plain causal attention over the same packed row gives
    other losses for every example after the first."""
    import torch

    from selftrain.training.packing import pack

    model, tok, rows = model_and_rows
    batch = pack(rows)
    with torch.no_grad():
        alone = [float(model(**collate([row], tok.pad_token_id)).loss) for row in rows]
        leaked_logits = model(input_ids=batch.input_ids).logits[0, batch.loss_positions]
    import torch.nn.functional as F

    n0 = sum(1 for label in rows[0][1][1:] if label != -100)
    second = F.cross_entropy(leaked_logits[n0:].float(), batch.targets[n0:], reduction="none")
    n1 = sum(1 for label in rows[1][1][1:] if label != -100)
    assert float(second[:n1].mean()) != pytest.approx(alone[1], rel=1e-4)


def test_pack_never_predicts_across_examples():
    from selftrain.training.packing import pack

    rows = [([1, 2, 3], [-100, 2, 3]), ([4, 5, 6, 7], [-100, -100, 6, 7])]
    batch = pack(rows)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3]]
    # position 2 (token 3) would predict token 4 of the next example: not a loss position
    assert batch.loss_positions.tolist() == [0, 1, 4, 5]
    assert batch.targets.tolist() == [2, 3, 6, 7]
    assert batch.segment_lengths == (3, 4)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 3e-2)])
def test_matmul_attention_equals_sdpa_with_grouped_heads(dtype, tolerance):
    import torch
    import torch.nn.functional as F

    from selftrain.training.packing import causal_attention

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    q = torch.randn(1, 6, 37, 16, dtype=dt, requires_grad=True)
    k = torch.randn(1, 2, 37, 16, dtype=dt, requires_grad=True)
    v = torch.randn(1, 2, 37, 16, dtype=dt, requires_grad=True)
    out = causal_attention(q, k, v, scale=0.25)
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(3, 1),
                                         v.float().repeat_interleave(3, 1), is_causal=True, scale=0.25)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    assert torch.allclose(out.float(), ref, atol=tolerance, rtol=tolerance)
    for mine, theirs in zip(grads, ref_grads):
        assert torch.allclose(mine.float(), theirs.float(), atol=tolerance * 10, rtol=tolerance)


def test_blockwise_loss_equals_the_loss_on_whole_logits(tiny_model_dir, monkeypatch):
    """The blockwise loss (several blocks here) gives the same loss and the same LoRA
    gradients as the cross-entropy of the whole logits."""
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, TaskType, get_peft_model

    from selftrain.models.base import load_model
    from selftrain.training import packing

    torch.manual_seed(0)
    model, tok = load_model(str(tiny_model_dir), "float32")
    model = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert packing.use_segment_attention(model, 512)
    assert packing.blockwise_loss_parts(model) is not None
    batch = packing.pack(tokenize(examples(4), tok, SFTConfig()))
    vocab = model.get_base_model().get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(packing, "LOSS_BLOCK_BYTES", 5 * vocab * 4)  # 5 positions per block
    assert batch.targets.numel() > 10

    def grads():
        out = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
        model.zero_grad()
        return out

    blockwise, n = packing.packed_loss(model, batch)
    blockwise.backward()
    blockwise_grads = grads()
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, segment_lengths=batch.segment_lengths,
                   logits_to_keep=batch.loss_positions).logits[0]
    whole = F.cross_entropy(logits.float(), batch.targets)
    whole.backward()
    whole_grads = grads()
    assert n == batch.targets.numel()
    assert blockwise.item() == pytest.approx(whole.item(), rel=1e-5)
    assert blockwise_grads.keys() == whole_grads.keys() and len(blockwise_grads) == 8
    for name, grad in blockwise_grads.items():
        assert grad.abs().sum() > 0
        torch.testing.assert_close(grad, whole_grads[name], rtol=1e-4, atol=1e-6)


def test_blockwise_loss_only_where_the_output_layer_is_plain_and_frozen(tiny_model_dir):
    from selftrain.models.base import load_model
    from selftrain.training.packing import blockwise_loss_parts

    model, _ = load_model(str(tiny_model_dir), "float32")
    head = model.get_output_embeddings()
    assert head.weight.requires_grad  # a plain model trains every weight: no blockwise loss
    assert blockwise_loss_parts(model) is None
    head.weight.requires_grad_(False)
    decoder, output = blockwise_loss_parts(model)
    assert decoder is model.get_decoder() and output is head
    model.config.model_type = "gemma2"  # soft-caps its logits: the loss must see them
    assert blockwise_loss_parts(model) is None
