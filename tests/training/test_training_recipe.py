"""The recipe's promises beyond one clean run: a killed run resumes exactly, a diverging
run stops without an adapter, bad inputs are refused before training, and every speed
lever trains the same model."""

import pytest

from selftrain.data.curate import Example
from selftrain.errors import SelftrainError
from selftrain.training import checkpoint
from selftrain.training.sft import SFTConfig, TrainingDiverged, run


def examples(n):
    return [Example(i, f"Write a Python function `f{i}(x)` that returns x plus {i}.",
                    f"def f{i}(x):\n    return x + {i}", "Adds.", "math", "accepted") for i in range(n)]


def adapter_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_last_checkpoint_and_ends_the_same(tiny_model_dir, tmp_path):
    import torch

    config = SFTConfig(epochs=2, batch_size=3, learning_rate=5e-3, eval_steps=3, save_steps=2,
                       eval_fraction=0.2, lora_dropout=0.1)  # dropout: the RNG state must come back too
    data = examples(15)
    straight = run(config, data, str(tiny_model_dir), tmp_path / "straight")

    def kill_at_step_5(record):
        if record["step"] == 5:
            raise Killed()

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Killed):
        run(config, data, str(tiny_model_dir), tmp_path / "killed", on_step=kill_at_step_5, checkpoint_dir=ckpt)
    assert (ckpt / checkpoint.FILE).exists() and not (tmp_path / "killed").exists()
    assert not (ckpt / (checkpoint.FILE + ".tmp")).exists()

    resumed_steps = []
    resumed = run(config, data, str(tiny_model_dir), tmp_path / "resumed", on_step=resumed_steps.append,
                  checkpoint_dir=ckpt)
    assert resumed.resumed_from_step == 4 and [r["step"] for r in resumed_steps] == list(range(5, 9))
    assert [r.get("loss") for r in resumed.history] == pytest.approx([r.get("loss") for r in straight.history])
    assert resumed.eval_loss == pytest.approx(straight.eval_loss)
    a, b = adapter_tensors(tmp_path / "straight"), adapter_tensors(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not ckpt.exists()  # removed once the adapter is saved


def test_a_checkpoint_of_other_inputs_is_not_resumed(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    config = SFTConfig(epochs=1, batch_size=2, save_steps=1, eval_steps=10)
    with pytest.raises(Killed):
        run(config, examples(8), str(tiny_model_dir), tmp_path / "a", checkpoint_dir=ckpt,
            on_step=lambda r: (_ for _ in ()).throw(Killed()) if r["step"] == 2 else None)
    other = run(SFTConfig(epochs=1, batch_size=2, save_steps=1, eval_steps=10, learning_rate=1e-3),
                examples(8), str(tiny_model_dir), tmp_path / "b", checkpoint_dir=ckpt)
    assert other.resumed_from_step == 0


@pytest.fixture(scope="module")
def broken_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with one NaN weight: every loss it computes is NaN."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    out = tmp_path_factory.mktemp("broken")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def test_nan_loss_raises_an_alert_and_saves_nothing(broken_model_dir, tmp_path):
    alerts = []
    with pytest.raises(TrainingDiverged, match="loss became nan at step 1; no adapter was saved"):
        run(SFTConfig(epochs=1, batch_size=2), examples(6), str(broken_model_dir), tmp_path / "a",
            on_alert=lambda kind, message, step: alerts.append((kind, step)), checkpoint_dir=tmp_path / "c")
    assert alerts == [("nan_loss", 1)]
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("config, data, message", [
    (SFTConfig(max_length=4096), examples(4), "'max_length' is 4096 tokens, over this model's context of 1024"),
    (SFTConfig(), examples(1), "has 1 usable example(s); training needs at least 2 usable examples"),
    (SFTConfig(max_length=16), examples(4), "(4 had a prompt filling max_length)"),
    (SFTConfig(lora_target_modules=["c_attn"]), examples(4), "c_attn do not exist in this model"),
    (SFTConfig(report_to="tensorboard"), examples(4), "needs the tensorboard package"),
])
def test_bad_input_is_one_sentence_before_training(tiny_model_dir, tmp_path, config, data, message):
    steps = []
    with pytest.raises(SelftrainError) as info:
        run(config, data, str(tiny_model_dir), tmp_path / "a", on_step=steps.append)
    assert message in str(info.value) and str(info.value).count(". ") == 0
    assert steps == [] and not (tmp_path / "a").exists()


@pytest.mark.parametrize("levers", [
    dict(packing=False, answer_logits_only=False, mixed_precision="fp32-adapters", fast_dropout=False),
    dict(packing=True, answer_logits_only=False, mixed_precision="fp32-adapters", fast_dropout=False),
    dict(packing=True, answer_logits_only=True, mixed_precision="autocast", fast_dropout=False),
    dict(packing=True, answer_logits_only=True, mixed_precision="master", fast_dropout=False),
    dict(blockwise_loss=False),
    dict(fused_lora=False),
    dict(packed_weights=False),
])
def test_every_speed_lever_measures_the_same_losses(tiny_model_dir, tmp_path, levers):
    """Without dropout the levers change only rounding: the initial eval loss (one forward
    pass) and the first steps agree with the fully packed, bf16 default."""
    base = dict(epochs=1, batch_size=3, lora_dropout=0.0, learning_rate=1e-3, eval_steps=100)
    default = run(SFTConfig(**base), examples(10), str(tiny_model_dir), tmp_path / "d")
    lever = run(SFTConfig(**base, **levers), examples(10), str(tiny_model_dir), tmp_path / "l")
    assert lever.initial_eval_loss == pytest.approx(default.initial_eval_loss, rel=2e-2)
    first = [r["loss"] for r in lever.history[1:3]]
    assert first == pytest.approx([r["loss"] for r in default.history[1:3]], rel=2e-2)


def test_fast_dropout_drops_the_configured_share():
    import torch

    from selftrain.training.precision import FastDropout

    torch.manual_seed(0)
    x = torch.ones(1000, 100, dtype=torch.bfloat16)
    y = FastDropout(0.1).train()(x)
    assert float((y == 0).float().mean()) == pytest.approx(0.1, abs=0.005)
    assert float(y.float().mean()) == pytest.approx(1.0, abs=0.01)  # inverted: expectation kept
    assert torch.equal(FastDropout(0.1).eval()(x), x)


def test_master_weights_take_the_gradients_in_fp32_and_give_back_the_stepped_values():
    import torch

    from selftrain.training.precision import MasterWeights

    params = [torch.nn.Parameter(torch.full((3,), 0.5)), torch.nn.Parameter(torch.ones(2))]
    masters = MasterWeights(params, torch.bfloat16)
    assert [p.dtype for p in params] == [torch.bfloat16] * 2
    for step in range(2):  # the second step reuses the gradient buffers
        params[0].grad = torch.full((3,), 1.0 + step, dtype=torch.bfloat16)
        params[1].grad = None  # e.g. a layer the step did not use
        masters.masters[1].grad = torch.ones(2)
        masters.grads_to_masters()
        assert params[0].grad is None and masters.masters[1].grad is None
        assert masters.masters[0].grad.dtype == torch.float32
        assert torch.equal(masters.masters[0].grad, torch.full((3,), 1.0 + step))
    with torch.no_grad():
        masters.masters[0].sub_(0.25)
    masters.masters_to_params()
    assert torch.equal(params[0].detach(), torch.full((3,), 0.25, dtype=torch.bfloat16))
    assert torch.equal(params[1].detach(), torch.ones(2, dtype=torch.bfloat16))


def test_thread_count_follows_the_setting_then_the_environment_then_a_timing(monkeypatch):
    from selftrain.training.threads import available_cores, training_threads

    assert training_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert training_threads(0) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert 1 <= training_threads(0, "float32") <= available_cores()
