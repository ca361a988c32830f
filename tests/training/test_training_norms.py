"""The hand-written RMSNorm (training/norms.py) computes transformers' forward bit for bit and
its input gradient as precisely, and stays in place through the model's train/eval switches."""

import pytest

torch = pytest.importorskip("torch")

from selftrain.training import norms  # noqa: E402


@pytest.fixture
def norm():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    layer = LlamaRMSNorm(96, eps=1e-5).to(torch.bfloat16).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(96) + 0.5)
    return layer


def test_forward_is_transformers_bits_and_the_gradient_as_precise(norm):
    x = (torch.randn(2, 37, 96) * 3).to(torch.bfloat16).requires_grad_(True)
    grad = torch.randn(2, 37, 96, dtype=torch.bfloat16)
    reference = norm(x)
    reference.backward(grad)
    reference_grad, x.grad = x.grad, None

    model = torch.nn.Sequential(norm)
    assert norms.use_fast_norms(model) == 1
    fast = model(x)
    assert isinstance(fast.grad_fn, norms._RMSNorm._backward_cls)
    assert torch.equal(fast, reference)
    fast.backward(grad)

    # The exact gradient, in float64, of w ⊙ x·rsqrt(mean(x²) + ε).
    exact_x = x.detach().double().requires_grad_(True)
    exact = norm.weight.double() * exact_x * torch.rsqrt(exact_x.pow(2).mean(-1, keepdim=True) + 1e-5)
    exact.backward(grad.double())
    scale = exact_x.grad.abs().max()
    fast_error = float((x.grad.double() - exact_x.grad).abs().max() / scale)
    reference_error = float((reference_grad.double() - exact_x.grad).abs().max() / scale)
    assert fast_error <= max(1.5 * reference_error, 1e-3)
    torch.testing.assert_close(x.grad, reference_grad, rtol=2e-2, atol=2e-2 * float(scale))

    norms.restore_norms(model)
    assert "forward" not in norm.__dict__


def test_a_trained_weight_autocast_or_another_dtype_runs_transformers_norm(norm):
    model = torch.nn.Sequential(norm)
    norms.use_fast_norms(model)
    x = torch.randn(4, 96, dtype=torch.bfloat16, requires_grad=True)
    norm.weight.requires_grad_(True)
    out = model(x)
    assert not isinstance(out.grad_fn, norms._RMSNorm._backward_cls)
    out.sum().backward()
    assert norm.weight.grad is not None  # the weight gets its gradient
    norm.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not isinstance(model(x).grad_fn, norms._RMSNorm._backward_cls)
    out = model(x.detach().float().requires_grad_(True))
    assert not isinstance(out.grad_fn, norms._RMSNorm._backward_cls)


def test_norms_stay_fast_through_train_and_eval(tiny_model_dir):
    """transformers' hub kernels, on by default, reset the forward of the layers they manage
    at every train/eval switch; models are loaded with them off."""
    from selftrain.models.base import load_model

    model, _ = load_model(str(tiny_model_dir), "bfloat16")
    model.requires_grad_(False)
    model.get_input_embeddings().weight.requires_grad_(True)  # something to differentiate
    count = norms.use_fast_norms(model)
    assert count == 2 * model.config.num_hidden_layers + 1
    model.train()
    model.eval()
    model.train()
    used = [0]
    apply = norms._RMSNorm.apply

    def counted(*args):
        used[0] += 1
        return apply(*args)

    norms._RMSNorm.apply = counted
    try:
        model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss.backward()
    finally:
        norms._RMSNorm.apply = apply
    assert used[0] == count
