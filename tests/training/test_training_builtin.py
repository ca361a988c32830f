"""The recipe on the real built-in SmolLM2: packing changes no example's loss, and a short
run with checkpoints saves an adapter that exports to a standalone merged model."""

import pytest

from selftrain.data.curate import Example

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    from selftrain.models.base import resolve_base_model

    return resolve_base_model("smollm2-135m-instruct", tmp_path_factory.mktemp("model-cache"))


def examples():
    tasks = [("slugify(text)", "lower-cases text and joins its words with '-'",
              "def slugify(text):\n    return '-'.join(text.lower().split())"),
             ("is_even(n)", "returns True when n is even", "def is_even(n):\n    return n % 2 == 0"),
             ("clamp(x, lo, hi)", "limits x to the range [lo, hi]",
              "def clamp(x, lo, hi):\n    return max(lo, min(hi, x))"),
             ("last(items)", "returns the last item or None for an empty list",
              "def last(items):\n    return items[-1] if items else None")]
    return [Example(i, f"Write a Python function `{sig}` that {what}.", code, "", "misc", "accepted")
            for i, (sig, what, code) in enumerate(tasks)]


@pytest.mark.parametrize("dtype, rel, abs_", [("float32", 1e-3, 0.0), ("bfloat16", 5e-2, 0.03)])
def test_packed_losses_equal_unpacked_losses_on_the_real_model(builtin, dtype, rel, abs_):
    """Exact in fp32. In bf16 the rounding differs with the matmul shapes: transformers'
    own SDPA and eager attention disagree by up to 3% on these same examples, and on AMX
    (oneDNN picks its bf16 kernels by shape) the same example alone and packed differs by up
    to 0.012 (6% of a loss of 0.18, the mean over ~10 answer tokens); so bf16 gets an
    absolute floor too. fp32 is the check that packing keeps examples apart."""
    import torch
    import torch.nn.functional as F

    from selftrain.models.base import load_model
    from selftrain.training.packing import pack, use_segment_attention
    from selftrain.training.sft import SFTConfig, collate, tokenize

    model, tok = load_model(builtin, dtype)
    model.eval()
    rows = tokenize(examples(), tok, SFTConfig())
    with torch.no_grad():
        alone = [float(model(**collate([row], tok.pad_token_id)).loss) for row in rows]
        assert use_segment_attention(model, 512)
        batch = pack(rows)
        logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                       segment_lengths=batch.segment_lengths, logits_to_keep=batch.loss_positions).logits[0]
    token_losses = F.cross_entropy(logits.float(), batch.targets, reduction="none")
    packed, start = [], 0
    for _, labels in rows:
        n = sum(1 for label in labels[1:] if label != -100)
        packed.append(float(token_losses[start:start + n].mean()))
        start += n
    assert packed == pytest.approx(alone, rel=rel, abs=abs_)


def test_short_run_with_checkpoints_then_merged_export(builtin, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from selftrain.training.export import export_adapter
    from selftrain.training.sft import SFTConfig, run

    steps = []
    result = run(SFTConfig(epochs=2, batch_size=2, max_length=256, save_steps=1, eval_fraction=0.25),
                 examples() * 2, builtin, tmp_path / "adapter", on_step=steps.append,
                 checkpoint_dir=tmp_path / "ckpt")
    assert result.steps == len(steps) == 6 and result.summary["steps"] == 6
    assert all(r["tokens_per_s"] > 0 and r["tokens"] > 0 for r in steps)
    assert not (tmp_path / "ckpt").exists()
    merged = export_adapter(tmp_path / "adapter", builtin, tmp_path / "merged", merged=True)
    model = AutoModelForCausalLM.from_pretrained(merged)
    assert model.dtype == torch.bfloat16 and not hasattr(model, "peft_config")
