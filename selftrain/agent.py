"""The agent in service: the active model version in memory, answering and logging.

Every answer is stored as an interaction with the version that produced it, committed
before the answer is handed back, so feedback can always find it. The CLI's `generate`
uses `Agent`; the server (`serve/engine.py`) shares `load_active_model` and keeps its
model in memory across requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from selftrain.config import Settings
from selftrain.models.base import load_model, resolve_base_model
from selftrain.models.generate import Generation, generate
from selftrain.models.prompting import render_prompt
from selftrain.registry import active_version
from selftrain.store.db import Database
from selftrain.store.records import record_interaction


@dataclass(frozen=True)
class Answer:
    interaction_id: int
    model_version: str | None  # None = the base model
    generation: Generation


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to generate, and the version it is (None = the base model)."""

    model: object
    tokenizer: object
    version_id: str | None


def active_version_ref(db: Database) -> tuple[str | None, str | None]:
    """(id, adapter path) of the active version; (None, None) when the base model serves."""
    with db.session() as session:
        active = active_version(session)
        return (active.id, active.adapter_path) if active else (None, None)


def load_version(settings: Settings, version_id: str | None, adapter: str | None) -> LoadedModel:
    """The base model with `adapter` merged in (none: the base model itself)."""
    from selftrain.models.prepack import use_packed_weights

    location = resolve_base_model(settings.base_model, settings.model_cache_dir,
                                  settings.allow_model_downloads)
    model, tokenizer = load_model(location, settings.dtype, adapter=adapter)
    model.eval()
    use_packed_weights(model, inference=True)  # bf16 weights in oneDNN's layout once, not every decode step
    return LoadedModel(model, tokenizer, version_id)


def load_active_model(settings: Settings, db: Database) -> LoadedModel:
    return load_version(settings, *active_version_ref(db))


class Agent:
    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db
        loaded = load_active_model(settings, db)
        self.model, self.tokenizer, self.version_id = loaded.model, loaded.tokenizer, loaded.version_id

    def answer(self, prompts: list[str], *, user: str = "anonymous", source: str = "cli",
               tests: list[str | None] | None = None) -> list[Answer]:
        rendered = [render_prompt(self.tokenizer, p, self.settings.prompt_format) for p in prompts]
        generations = generate(self.model, self.tokenizer, rendered,
                               max_new_tokens=self.settings.max_new_tokens,
                               batch_size=self.settings.generation_batch_size)
        tests = tests or [None] * len(prompts)
        answers = []
        with self.db.session() as session:
            for prompt, gen, test in zip(prompts, generations, tests):
                row = record_interaction(
                    session, user=user, source=source, prompt=prompt, code=gen.code,
                    explanation=gen.explanation, raw_response=gen.text, tests=test,
                    model_version=self.version_id, latency_ms=gen.latency_ms,
                    prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)
                answers.append(Answer(row.id, self.version_id, gen))
        return answers
