"""Evaluate one model on one suite: generate every answer, run its tests in the sandbox."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from selftrain.evaluation.sandbox import Sandbox
from selftrain.evaluation.suites import Suite
from selftrain.models.generate import generate
from selftrain.models.prompting import is_valid_python, render_prompt


@dataclass(frozen=True)
class ItemResult:
    task_id: str
    passed: bool
    syntax_valid: bool
    status: str  # the sandbox's: passed | failed | timeout | infra_error
    code: str


@dataclass(frozen=True)
class SuiteResult:
    items: tuple[ItemResult, ...]

    @property
    def pass_rate(self) -> float:
        return sum(i.passed for i in self.items) / len(self.items) if self.items else 0.0

    @property
    def syntax_rate(self) -> float:
        return sum(i.syntax_valid for i in self.items) / len(self.items) if self.items else 0.0

    def metrics(self) -> dict:
        return {"pass_rate": self.pass_rate, "syntax_rate": self.syntax_rate, "n": len(self.items)}

    def to_json(self) -> list[dict]:
        return [asdict(i) for i in self.items]


def evaluate_model(model, tokenizer, suite: Suite, sandbox: Sandbox, *, prompt_format: str,
                   max_new_tokens: int, batch_size: int) -> SuiteResult:
    prompts = [render_prompt(tokenizer, p.prompt, prompt_format) for p in suite.problems]
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    runs = sandbox.run_many([(a.code, p.tests) for a, p in zip(answers, suite.problems)])
    return SuiteResult(tuple(
        ItemResult(p.task_id, r.passed, is_valid_python(a.code), r.status, a.code)
        for p, a, r in zip(suite.problems, answers, runs)))
