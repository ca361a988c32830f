"""Shared fixtures: a tiny random Llama with a real tokenizer, built offline in seconds,
and workspaces with their own settings and database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from a second thread, and on a busy machine an OpenMP barrier
# waiting for a descheduled thread makes every op slow. Set before torch is imported;
# training's num_threads = 0 follows it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "Write a Python function `is_even(n)` that returns True for even numbers.",
    "```python\ndef is_even(n: int) -> bool:\n    return n % 2 == 0\n```",
    "### Instruction:\n### Code:\n### Explanation:\nThis function uses the modulo operator.",
    "for item in items:\n    if item not in seen:\n        seen.add(item)\n        result.append(item)\n",
    "assert slugify('Hello World') == 'hello-world'\n",
] * 20


def build_tiny_model(directory: Path, *, seed: int = 0) -> Path:
    """A 2-layer Llama (~100k parameters) and a byte-level BPE tokenizer with a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=1024, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


PG_ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/postgres"


@pytest.fixture
def postgres_url() -> str:
    """A fresh, empty database on the PostgreSQL server of the `postgres` tier; dropped
    (with any connections left) after the test."""
    import uuid

    from sqlalchemy import create_engine, text

    name = f"selftrain_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://root@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def workspace(tmp_path, tiny_model_dir, monkeypatch) -> Path:
    """A workspace whose settings point at the tiny model and keep every run short."""
    for key in list(os.environ):
        if key.startswith("SELFTRAIN_"):
            monkeypatch.delenv(key)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "selftrain.toml").write_text(
        f'base_model = "{tiny_model_dir}"\n'
        "epochs = 1\nbatch_size = 4\nmax_new_tokens = 16\nmin_examples = 4\n"
        "eval_limit = 6\nsandbox_timeout_s = 5.0\n", encoding="utf-8")
    return ws


@pytest.fixture(scope="session")
def builtin_model_dir(tmp_path_factory) -> Path:
    """The real built-in model, converted once per test session (integration tier only).

    SELFTRAIN_TEST_MODEL may name an already converted checkpoint folder to skip the ~20 s
    conversion."""
    from selftrain.models.base import resolve_base_model

    if os.environ.get("SELFTRAIN_TEST_MODEL"):
        return Path(os.environ["SELFTRAIN_TEST_MODEL"])
    return Path(resolve_base_model("smollm2-135m-instruct", tmp_path_factory.mktemp("model-cache")))


class LiveServer:
    """uvicorn in a thread, on a socket bound to a free port before it starts."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 60 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="session")
def live_server():
    """`with live_server(app) as live:` serves an ASGI app on live.url while the block runs."""
    return LiveServer
