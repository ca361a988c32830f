import pytest

from selftrain.data.curate import Example
from selftrain.errors import SelftrainError
from selftrain.training.sft import SFTConfig, lr_at, run, tokenize


@pytest.fixture(autouse=True)
def one_torch_thread(monkeypatch):
    """Tiny models gain nothing from a second thread; on a busy machine it costs a lot."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what the recipe's num_threads = 0 follows
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def examples(n):
    return [Example(i, f"Write a Python function `f{i}(x)` that returns x plus {i}.",
                    f"def f{i}(x):\n    return x + {i}", "Adds.", "math", "accepted") for i in range(n)]


def test_labels_cover_only_the_answer(tiny_model_dir):
    from selftrain.models.base import load_model

    _, tok = load_model(str(tiny_model_dir))
    (ids, labels), = tokenize(examples(1), tok, SFTConfig())
    n_prompt = labels.index(next(l for l in labels if l != -100))
    assert all(l == -100 for l in labels[:n_prompt])
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tok.eos_token_id
    prompt_text = tok.decode(ids[:n_prompt])
    assert prompt_text.endswith("<|im_start|>assistant\n")


def test_warmup_then_linear_decay():
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, 10) == 0.0


def test_training_lowers_eval_loss_and_saves_a_peft_adapter(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = examples(4) * 6  # the same few examples again: eval loss must fall
    config = SFTConfig(epochs=2, batch_size=4, learning_rate=5e-3, eval_steps=5, eval_fraction=0.2)
    steps = []
    result = run(config, data, str(tiny_model_dir), tmp_path / "adapter", on_step=steps.append)
    assert result.eval_loss < result.initial_eval_loss
    assert result.steps == len(steps) == 10 and result.n_train + result.n_eval == 24
    assert result.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert {"loss", "learning_rate", "tokens_per_s", "tokens", "seconds", "epoch"} <= set(steps[0])
    assert result.summary["steps"] == 10 and result.summary["initial_loss"] == steps[0]["loss"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert loaded.peft_config["default"].r == 8 and loaded.peft_config["default"].lora_alpha == 32


def test_too_few_examples(tiny_model_dir, tmp_path):
    with pytest.raises(SelftrainError, match="at least 2 usable examples"):
        run(SFTConfig(), examples(1), str(tiny_model_dir), tmp_path / "a")


def test_missing_target_module_is_named_before_training(tiny_model_dir, tmp_path):
    with pytest.raises(SelftrainError, match="c_attn do not exist in this model"):
        run(SFTConfig(lora_target_modules=["c_attn"]), examples(4), str(tiny_model_dir), tmp_path / "a")
    assert not (tmp_path / "a").exists()
