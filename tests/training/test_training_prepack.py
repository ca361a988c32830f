"""Packed frozen weights (models/prepack.py) must compute what the plain bf16 matmuls
compute, and only while the weight they were packed from is unchanged."""

import pytest

torch = pytest.importorskip("torch")

from selftrain.models import prepack  # noqa: E402

pytestmark = pytest.mark.skipif(not prepack.available(torch.bfloat16),
                                reason="this CPU or torch build has no oneDNN bf16 linear")


@pytest.fixture
def calls(monkeypatch):
    """How many matmuls ran on packed weights."""
    count = [0]
    linear = prepack._linear

    def counted(*args):
        count[0] += 1
        return linear(*args)

    monkeypatch.setattr(prepack, "_linear", counted)
    return count


def test_a_packed_linear_gives_the_plain_output_and_input_gradient(calls):
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(3, 7, 48, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(3, 7, 80, dtype=torch.bfloat16)
    plain = layer(x)
    plain.backward(grad)
    plain_grad, x.grad = x.grad, None
    model = torch.nn.Sequential(layer)
    assert prepack.use_packed_weights(model) == 1
    packed = model(x)
    packed.backward(grad)
    assert calls[0] == 2  # forward and backward both on packed copies
    torch.testing.assert_close(packed, plain, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad, plain_grad, rtol=1e-2, atol=1e-2)
    prepack.unpack(model)
    assert "forward" not in layer.__dict__


def test_a_changed_trained_or_autocast_weight_runs_the_plain_linear(calls):
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16, bias=False).to(torch.bfloat16).requires_grad_(False)
    model = torch.nn.Sequential(layer)
    prepack.use_packed_weights(model)
    x = torch.randn(5, 32, dtype=torch.bfloat16)
    before = model(x)
    assert calls[0] == 1
    with torch.no_grad():
        layer.weight.mul_(2)  # changed in place since it was packed
    torch.testing.assert_close(model(x), 2 * before, rtol=1e-2, atol=1e-2)
    assert calls[0] == 1

    model = torch.nn.Sequential(torch.nn.Linear(32, 16).to(torch.bfloat16).requires_grad_(False))
    prepack.use_packed_weights(model)
    model[0].weight.requires_grad_(True)  # now trained: it needs its own gradient
    model(x).sum().backward()
    assert model[0].weight.grad is not None and calls[0] == 1
    model[0].weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    model.float()  # new storage and dtype
    assert model(x.float()).dtype == torch.float32
    assert calls[0] == 1


def test_nothing_is_packed_when_the_copies_would_not_fit():
    model = torch.nn.Sequential(torch.nn.Linear(64, 64).to(torch.bfloat16).requires_grad_(False))
    copies = 2 * 64 * 64 * 2  # forward and backward copies of a bf16 [64 × 64] weight
    assert prepack.use_packed_weights(model, memory=int(copies / prepack.MEMORY_SHARE) - 1) == 0
    assert "forward" not in model[0].__dict__
    assert prepack.use_packed_weights(model, memory=int(copies / prepack.MEMORY_SHARE)) == 1
    assert prepack.use_packed_weights(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0  # fp32, trained


def test_fused_lora_layers_and_the_rest_of_a_bf16_model_give_the_same_loss_and_gradients(calls):
    from .test_training_fused import loss_and_grads, tiny

    from selftrain.training.fused import use_fused_lora

    model = tiny("qwen2", torch.bfloat16)  # q/k/v with biases
    use_fused_lora(model)
    ids = torch.randint(0, 64, (2, 24))
    plain_loss, plain = loss_and_grads(model, ids)
    # per layer: the q/k/v stack, o_proj's base, gate, up, down; and the output layer
    assert prepack.use_packed_weights(model) == 2 * 5 + 1
    packed_loss, packed = loss_and_grads(model, ids)
    # each forward and backward, less the first q/k/v backward: the embeddings take no gradient
    assert calls[0] == 2 * (2 * 5 + 1) - 1
    assert packed_loss == pytest.approx(plain_loss, rel=1e-2)
    assert plain.keys() == packed.keys()
    for name in plain:
        torch.testing.assert_close(packed[name], plain[name], rtol=2e-2, atol=2e-2 * float(plain[name].abs().max()))
    prepack.unpack(model)
    calls[0] = 0
    assert loss_and_grads(model, ids)[0] == plain_loss and calls[0] == 0


def test_the_blockwise_loss_on_a_packed_output_layer_gives_the_same_loss_and_gradient(calls, monkeypatch):
    import torch.nn.functional as F

    from selftrain.training import packing

    torch.manual_seed(0)
    head = torch.nn.Linear(32, 300, bias=False).to(torch.bfloat16).requires_grad_(False)
    hidden = torch.randn(23, 32, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, 300, (23,))
    monkeypatch.setattr(packing, "LOSS_BLOCK_BYTES", 5 * 300 * 4)  # 5 positions per block
    whole = F.cross_entropy((hidden @ head.weight.t()).float(), targets)
    whole.backward()
    expected, hidden.grad = hidden.grad, None
    prepack.use_packed_weights(torch.nn.Sequential(head))
    loss = packing.blockwise_cross_entropy(hidden, head, targets)
    loss.backward()
    assert calls[0] == 2 * 5  # five blocks, two matmuls each
    assert float(loss) == pytest.approx(float(whole), rel=1e-5)
    torch.testing.assert_close(hidden.grad, expected, rtol=1e-2, atol=1e-2 * float(expected.abs().max()))


def test_models_loaded_for_answering_write_the_same_tokens_from_packed_weights(tiny_model_dir, calls):
    from selftrain.evaluation.harness import _generate
    from selftrain.models.base import load_model
    from selftrain.models.generate import generate

    model, tok = load_model(str(tiny_model_dir), "bfloat16")
    prompts = ["def add(a, b):", "Write a function that reverses a list.", "x = 1"]
    plain = [g.text for g in generate(model, tok, prompts, max_new_tokens=12, batch_size=2)]
    assert calls[0] == 0
    # evaluation packs the model it is given: forward copies only, the caller's model otherwise as it was
    texts = _generate(model, tok, prompts, samples=1, temperature=0.0, seed=0, max_new_tokens=12,
                      batch_size=2, progress=None)
    assert [t[0] for t in texts] == plain and calls[0] > 0
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert all("forward" in m.__dict__ and m.__dict__["forward"].packed_weight.backward is None for m in linears)
    assert all(p.requires_grad for p in model.parameters())
    assert prepack.use_packed_weights(model, inference=True) == 0  # packed already: left as it is
    with torch.enable_grad():  # gradients on: a forward-only copy is not used
        calls[0] = 0
        linears[0](torch.randn(2, linears[0].in_features, dtype=torch.bfloat16))
    assert calls[0] == 0
    prepack.unpack(model)
    assert [g.text for g in generate(model, tok, prompts, max_new_tokens=12, batch_size=2)] == plain


def test_a_version_loaded_for_serving_is_packed(tiny_model_dir):
    from selftrain.agent import load_version
    from selftrain.config import Settings

    loaded = load_version(Settings(base_model=str(tiny_model_dir), dtype="bfloat16"), None, None)
    linears = [m for m in loaded.model.modules() if type(m) is torch.nn.Linear]
    assert linears and all("forward" in m.__dict__ for m in linears)
