"""Fixtures for the server tests: settings on the tiny model, an engine, API keys, and
the app served by a real uvicorn on a free port of 127.0.0.1."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest



def serve_settings(workspace, **overrides):
    from selftrain.config import load_settings

    settings = load_settings(workspace)
    # serve_* settings are read with getattr(settings, name, default) until config.py has them.
    for name, value in {"serve_batch_size": 8, "serve_batch_wait_ms": 20.0, "serve_queue_size": 16,
                        "serve_max_prompt_tokens": 256, "serve_max_tokens": 32, "serve_torch_threads": 1,
                        **overrides}.items():
        setattr(settings, name, value)
    return settings


@pytest.fixture
def settings(workspace):
    return serve_settings(workspace)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, settings):
    from selftrain.store.db import Database

    url = settings.resolved_database_url if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url)
    yield database
    database.close()


@pytest.fixture
def sqlite_db(settings):
    from selftrain.store.db import Database

    database = Database(settings.resolved_database_url)
    yield database
    database.close()


@pytest.fixture
def engine(settings, sqlite_db):
    from selftrain.serve.engine import GenerationEngine

    eng = GenerationEngine(settings, sqlite_db).start()
    yield eng
    eng.stop()


@dataclass
class Keys:
    admin: str
    alice: str
    bob: str


def make_keys(db) -> Keys:
    from selftrain.serve.keys import create_key

    with db.session() as session:
        return Keys(admin=create_key(session, "root", "admin")[1], alice=create_key(session, "alice")[1],
                    bob=create_key(session, "bob")[1])


@pytest.fixture
def keys(sqlite_db) -> Keys:
    return make_keys(sqlite_db)


@pytest.fixture
def key_maker():
    """key_maker(db) -> Keys: an admin key ('root') and user keys for alice and bob."""
    return make_keys


@pytest.fixture
def app(settings, sqlite_db, engine):
    from selftrain.serve.app import create_app

    return create_app(settings, sqlite_db, engine=engine)


@pytest.fixture
def server(app, live_server):
    with live_server(app) as live:
        yield live


@pytest.fixture
def block_worker():
    """block_worker(engine) holds the engine's worker inside its next batch until the
    returned `release` event is set; `entered` is set once it is held."""
    return _block_worker


def _block_worker(engine):
    release, entered = threading.Event(), threading.Event()
    original = engine._run_batch

    def run_batch(slot, tickets):
        entered.set()
        release.wait(timeout=60)
        return original(slot, tickets)

    engine._run_batch = run_batch
    return release, entered


@pytest.fixture
def add_version(tmp_path, tiny_model_dir):
    """add_version(db, broken=False) registers a LoRA adapter for the tiny model (random,
    so it changes the answers) as a successful version and returns its id; broken=True
    registers files that are no adapter at all (they fail to load)."""
    counter = iter(range(1000))

    def add(db, broken: bool = False) -> str:
        from selftrain.registry import register

        adapter = tmp_path / f"adapter-{next(counter)}"
        if broken:
            adapter.mkdir()
            (adapter / "adapter_config.json").write_text("{not json")
        else:
            import torch
            from peft import LoraConfig, get_peft_model
            from transformers import AutoModelForCausalLM

            torch.manual_seed(1)
            model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
            peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                          init_lora_weights=False))
            peft_model.save_pretrained(adapter)
        with db.session() as session:
            return register(session, adapter, tmp_path / "versions", base_model=str(tiny_model_dir),
                            parent_id=None, dataset_snapshot_id=None, training_config={}, metrics={},
                            eval_report={}, success=True).id

    return add
