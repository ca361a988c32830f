"""DPO through TRL on the tiny Llama: it trains, saves an adapter, and refuses too few pairs."""

import pytest

from selftrain.errors import SelftrainError
from selftrain.training import dpo


def _pairs(n):
    return [(f"Write function f{i}.", f"def f{i}(x):\n    return x\n", "No.") for i in range(n)]


def test_dpo_refuses_too_few_pairs(tiny_model_dir, tmp_path):
    with pytest.raises(SelftrainError, match="at least 8 preference pairs"):
        dpo.run(dpo.DPOConfig(), _pairs(2), str(tiny_model_dir), tmp_path / "a")


def test_dpo_trains_a_lora_adapter(tiny_model_dir, tmp_path):
    config = dpo.DPOConfig(batch_size=4, lora_r=2, dtype="float32", max_length=64, eval_fraction=0.25)
    result = dpo.run(config, _pairs(8), str(tiny_model_dir), tmp_path / "a")
    assert (tmp_path / "a" / "adapter_config.json").exists()
    assert result.n_train == 6 and result.n_eval == 2 and result.history
    assert 0.0 <= result.eval_accuracy <= 1.0
