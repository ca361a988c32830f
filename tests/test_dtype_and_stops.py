"""The dtype a setting means on this machine, and generation that stops once the code is
written."""

import pytest

from selftrain.errors import SelftrainError
from selftrain.models import base
from selftrain.models.prompting import has_closed_code_block, split_answer


def test_auto_dtype_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(base, "native_bf16", lambda: True)
    assert base.resolve_dtype("auto") == "bfloat16"
    monkeypatch.setattr(base, "native_bf16", lambda: False)
    assert base.resolve_dtype("auto") == "float32"
    assert base.resolve_dtype("bfloat16") == "bfloat16" and base.resolve_dtype("float32") == "float32"
    with pytest.raises(SelftrainError, match="Unknown dtype 'fp8'"):
        base.resolve_dtype("fp8")


def test_native_bf16_reads_the_cpu_flags():
    import re
    from pathlib import Path

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU decides by its own support")
    flags = Path("/proc/cpuinfo").read_text()
    expected = bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
    assert base.native_bf16() is expected


@pytest.mark.parametrize("text, closed", [
    ("Here:\n```python\ndef f():\n    return 1\n```\nIt returns 1.", True),
    ("```python\ndef f():\n    return 1\n", False),                       # still open
    ("```python\nprint(f())\n```\nand then\n```python\ndef f():", False),   # the first block defines nothing
    ("```python\nprint(f())\n```\n```python\nimport os\n```", True),
    ("```bash\ndef x\n```", False),                                         # not Python
])
def test_closed_code_block(text, closed):
    assert has_closed_code_block(text) is closed


def test_stopping_at_the_code_block_keeps_the_extracted_code():
    full = "Sure.\n```python\nprint(1)\n```\n```python\ndef f(x):\n    return x\n```\nThis returns x.\n```python\ndef g(): pass\n```"
    cut = full[:full.index("This returns")]
    assert has_closed_code_block(cut)
    assert split_answer(cut)[0] == split_answer(full)[0] == "def f(x):\n    return x"


def test_code_block_rule_ends_only_finished_rows(tiny_model_dir):
    import torch
    from transformers import AutoTokenizer

    from selftrain.models.generate import CodeBlockWritten

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tok.encode("Write it.", add_special_tokens=False)
    rows = ["```python\ndef add(a, b):\n    return a + b\n```", "```python\ndef add(a, b):\n    return a + b\n"]
    ids = [prompt + tok.encode(r, add_special_tokens=False) for r in rows]
    width = max(map(len, ids))
    batch = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in ids])  # left padding, as generate
    rule = CodeBlockWritten(tok, len(prompt) + width - len(ids[0]))
    assert rule(batch[:1], None).tolist() == [True]
    assert rule(batch[1:], None).tolist() == [False]
