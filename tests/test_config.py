import tomllib

import pytest

from selftrain.config import Settings, load_settings, render_default_toml
from selftrain.errors import SelftrainError


def test_defaults_are_the_specs(tmp_path):
    s = load_settings(tmp_path, env={})
    assert (s.learning_threshold, s.quality_threshold, s.min_examples) == (100, 0.7, 10)
    assert (s.improvement_threshold, s.check_interval) == (0.05, 3600)
    assert (s.lora_r, s.lora_alpha, s.lora_dropout) == (8, 32, 0.1)
    assert (s.epochs, s.batch_size, s.warmup_steps, s.weight_decay, s.max_length) == (3, 2, 100, 0.01, 512)
    assert s.resolved_database_url == f"sqlite:///{(tmp_path / 'selftrain.db').resolve()}"


def test_file_then_environment_override(tmp_path):
    (tmp_path / "selftrain.toml").write_text("epochs = 5\nlora_target_modules = ['c_attn']\n")
    s = load_settings(tmp_path, env={"SELFTRAIN_EPOCHS": "7", "SELFTRAIN_ALLOW_UNSAFE_EXECUTION": "true"})
    assert s.epochs == 7 and s.allow_unsafe_execution is True
    assert s.lora_target_modules == ["c_attn"]


def test_workspace_from_environment(tmp_path):
    assert load_settings(env={"SELFTRAIN_WORKSPACE": str(tmp_path)}).workspace == tmp_path


def test_default_file_lists_every_setting_at_its_default(tmp_path):
    text = render_default_toml()
    parsed = tomllib.loads(text)
    assert parsed["learning_threshold"] == 100 and parsed["lora_target_modules"] == []
    (tmp_path / "selftrain.toml").write_text(text)
    assert load_settings(tmp_path, env={}) == Settings(workspace=tmp_path)


@pytest.mark.parametrize("content, message", [
    ("epochs = 'three'", "Setting 'epochs' in .* must be an integer"),
    ("unknown_key = 1", "Unknown setting 'unknown_key'"),
    ("epochs = [", "Could not read the settings file"),
    ("prompt_format = 'yaml'", "Setting 'prompt_format' must be 'chat' or 'instruction'"),
    ("quality_threshold = 2.0", "Setting 'quality_threshold' must be a number in"),
    ("batch_size = 0", "Setting 'batch_size' must be a positive integer"),
])
def test_bad_settings_file_gets_one_sentence(tmp_path, content, message):
    (tmp_path / "selftrain.toml").write_text(content)
    with pytest.raises(SelftrainError, match=message):
        load_settings(tmp_path, env={})


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(SelftrainError, match="SELFTRAIN_LEARNING_RATE must be a number"):
        load_settings(tmp_path, env={"SELFTRAIN_LEARNING_RATE": "fast"})
