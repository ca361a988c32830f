"""The fused LoRA layers (training/fused.py) must compute what PEFT computes: the same outputs
and gradients without dropout, and with dropout the same function of one shared mask."""

import pytest


def tiny(model_type: str, dtype, **lora):
    """A 2-layer causal LM with LoRA on q/k/v/o (B initialised away from zero, so every
    gradient is non-trivial); Qwen2 has biases on q/k/v (made non-zero here)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = (LlamaForCausalLM(LlamaConfig(**shape)) if model_type == "llama"
             else Qwen2ForCausalLM(Qwen2Config(**shape))).to(dtype)
    for module in model.modules():  # transformers initialises biases to zero
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.5)
    model = get_peft_model(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], **lora}))
    for name, p in model.named_parameters():
        if p.requires_grad:
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
            p.data = p.data.to(dtype)
    return model.train()


def loss_and_grads(model, ids):
    import torch

    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model_type, lora", [
    ("llama", {}),
    ("qwen2", {}),
    ("llama", {"rank_pattern": {"k_proj": 2}, "alpha_pattern": {"v_proj": 32}}),  # members differ
    ("llama", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}),
])
def test_fused_layers_give_peft_s_loss_and_gradients(model_type, lora):
    import torch

    from selftrain.training.fused import unfuse, use_fused_lora

    model = tiny(model_type, torch.float32, **lora)
    ids = torch.randint(0, 64, (2, 24))
    plain_loss, plain = loss_and_grads(model, ids)
    mlp = "gate_proj" in lora.get("target_modules", ())
    # per layer: q/k/v together, o alone (and with the MLP adapted: gate/up together, down alone)
    assert use_fused_lora(model) == 2 * (4 if mlp else 2)
    attention = model.get_base_model().model.layers[0].self_attn
    stack = attention.q_proj.forward.fused_group.weight
    assert attention.v_proj.base_layer.weight.untyped_storage().data_ptr() == stack.untyped_storage().data_ptr()
    fused_loss, fused = loss_and_grads(model, ids)
    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert plain.keys() == fused.keys() and len(plain) == 2 * 2 * (7 if mlp else 4)
    for name in plain:
        assert torch.allclose(fused[name], plain[name], rtol=1e-4, atol=1e-7), name
    with torch.no_grad():  # evaluation: no graph, the same logits
        model.eval()
        fused_logits = model(input_ids=ids).logits
        unfuse(model)
        assert torch.allclose(model(input_ids=ids).logits, fused_logits, atol=1e-5)
    use_fused_lora(model)
    with torch.no_grad():  # a weight given new storage (as .to() does): the stale stack is not used
        attention.k_proj.base_layer.weight.data = attention.k_proj.base_layer.weight * 2
        changed = model(input_ids=ids).logits
        unfuse(model)
        assert torch.allclose(model(input_ids=ids).logits, changed, atol=1e-5)
        assert not torch.allclose(changed, fused_logits, atol=1e-4)


def test_in_bf16_the_fused_layers_are_as_close_to_fp32_as_peft_s():
    """bf16 rounds differently in a different order of operations; what matters is that the
    fused result is no further from the exact (fp32) one than PEFT's own bf16 result."""
    import torch

    from selftrain.training.fused import use_fused_lora

    ids = torch.randint(0, 64, (2, 24))
    model = tiny("llama", torch.bfloat16)
    bf16_loss, bf16 = loss_and_grads(model, ids)
    use_fused_lora(model)
    fused_loss, fused = loss_and_grads(model, ids)
    exact_loss, exact = loss_and_grads(tiny("llama", torch.float32), ids)

    def error(grads):
        return sum(float((grads[n] - exact[n]).norm() / exact[n].norm()) for n in exact) / len(exact)

    assert abs(fused_loss - exact_loss) <= 2 * abs(bf16_loss - exact_loss) + 1e-3
    assert error(fused) < 0.05 and error(fused) <= 2 * error(bf16)


def test_with_dropout_a_group_computes_peft_s_formula_with_one_mask(monkeypatch):
    """out_i = x·W_iᵀ + b_i + s·((x ⊙ keep)/(1 − p))·A_iᵀ·B_iᵀ for every member, one `keep`
    for the group, and gradients those of that formula."""
    import torch

    from selftrain.training import fused

    model = tiny("qwen2", torch.float32)
    for module in model.modules():
        if hasattr(module, "lora_dropout"):
            module.lora_dropout["default"] = torch.nn.Dropout(0.25)
    fused.use_fused_lora(model)
    masks, draw = [], fused.keep_mask

    def recorded(shape, p, dtype):
        masks.append(draw(shape, p, dtype))
        return masks[-1]

    monkeypatch.setattr(fused, "keep_mask", recorded)
    attention = model.get_base_model().model.layers[0].self_attn
    layers = [attention.q_proj, attention.k_proj, attention.v_proj]
    x = torch.randn(1, 10, 32, requires_grad=True)
    outs = [layer(x) for layer in layers]
    assert len(masks) == 1  # one mask, drawn by the first member called
    weights = [torch.randn_like(out) for out in outs]
    sum((out * w).sum() for out, w in zip(outs, weights)).backward()
    got = [x.grad.clone()] + [p.grad.clone() for layer in layers
                              for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)]

    keep = (masks[0] != 0).float()
    assert 0.1 < 1 - float(keep.mean()) < 0.4
    x.grad = None
    for layer in layers:
        layer.zero_grad(set_to_none=True)
    want_outs = []
    for layer in layers:
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        base = torch.nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias)
        want_outs.append(base + layer.scaling["default"] * ((x * keep / 0.75) @ a.t()) @ b.t())
    sum((out * w).sum() for out, w in zip(want_outs, weights)).backward()
    want = [x.grad] + [p.grad for layer in layers
                       for p in (layer.lora_A["default"].weight, layer.lora_B["default"].weight)]
    for out, expected in zip(outs, want_outs):
        assert torch.allclose(out, expected, atol=1e-5)
    for g, expected in zip(got, want):
        assert torch.allclose(g, expected, rtol=1e-4, atol=1e-6)


def test_members_called_on_different_inputs_each_run_peft_s_forward():
    """A model whose q/k/v do not read one tensor (as in cross-attention) is not fused
    wrongly: the group notices and every member runs on its own input from then on."""
    import torch

    from selftrain.training.fused import use_fused_lora

    model = tiny("llama", torch.float32)
    attention = model.get_base_model().model.layers[0].self_attn
    inputs = [torch.randn(1, 6, 32) for _ in range(3)]
    layers = [attention.q_proj, attention.k_proj, attention.v_proj]
    want = [type(layer).forward(layer, x) for layer, x in zip(layers, inputs)]
    use_fused_lora(model)
    for _ in range(2):
        got = [layer(x) for layer, x in zip(layers, inputs)]
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-6)
    assert attention.q_proj.forward.fused_group.shared is False


def test_a_merged_or_disabled_adapter_runs_peft_s_forward():
    import torch

    from selftrain.training.fused import use_fused_lora

    model = tiny("llama", torch.float32).eval()
    ids = torch.randint(0, 64, (1, 12))
    use_fused_lora(model)
    with torch.no_grad():
        with_adapter = model(input_ids=ids).logits
        with model.disable_adapter():
            without = model(input_ids=ids).logits
        model.merge_adapter()  # changes q/k/v's weights in place: views of the group's stack
        merged = model(input_ids=ids).logits
        model.unmerge_adapter()
        unmerged = model(input_ids=ids).logits  # fused again, on the restored stack
    assert not torch.allclose(with_adapter, without, atol=1e-4)
    assert torch.allclose(merged, with_adapter, atol=1e-5)
    assert torch.allclose(unmerged, with_adapter, atol=1e-5)


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_the_keep_mask_drops_the_configured_share_with_a_bitwise_and(dtype_name):
    import torch

    from selftrain.training.fused import keep_mask, masked

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    keep = keep_mask(torch.Size([1000, 1000]), 0.1, dtype)
    assert keep.dtype.itemsize == dtype.itemsize and set(keep.unique().tolist()) == {-1, 0}
    assert float((keep == 0).float().mean()) == pytest.approx(0.1, abs=0.002)
    x = torch.randn(1000, 1000, dtype=dtype)
    assert torch.equal(masked(x, keep), x.masked_fill(keep == 0, 0))
    assert not torch.equal(x, x.masked_fill(keep == 0, 0))
    y = x.clone()
    assert masked(y, keep, inplace=True).data_ptr() == y.data_ptr() and torch.equal(y, x.masked_fill(keep == 0, 0))
