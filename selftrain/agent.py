"""The agent in service: the active model version in memory, answering and logging.

Every answer is stored as an interaction with the version that produced it, committed
before the answer is handed back, so feedback can always find it.
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


class Agent:
    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db
        with db.session() as session:
            active = active_version(session)
            self.version_id = active.id if active else None
            adapter = active.adapter_path if active else None
        location = resolve_base_model(settings.base_model, settings.model_cache_dir,
                                  settings.allow_model_downloads)
        self.model, self.tokenizer = load_model(location, settings.dtype, adapter=adapter)

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
