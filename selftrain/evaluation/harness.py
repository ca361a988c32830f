"""Evaluate one model on one suite: generate every answer, run its tests in the sandbox, measure.

`evaluate_model` is generation (greedy, or `samples` answers per problem at a temperature for
pass@k) followed by `score_answers`, which needs no model: it turns answers into programs the
way the suite's prompt style says (`build_program`), runs them with their tests in the sandbox
and computes every metric of `metrics.py` for each item.

A regression suite may hold reference-only items (no tests): they are scored for syntax,
execution and BLEU but are never "passed"; compare models on `SuiteResult.tested`.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from selftrain.evaluation import metrics
from selftrain.evaluation.sandbox import ExecutionResult, Sandbox
from selftrain.evaluation.suites import Problem, Suite

Progress = Callable[[str, int, int], None]  # (stage, done, total)

# signature_chat: the request around a HumanEval-style prompt.
COMPLETE_FUNCTION = ("Complete the following Python function. Reply with the complete function, "
                     "its signature included, in one ```python code block.\n\n```python\n{prompt}```")
# signature_completion: where a plain continuation of a function stops (Chen et al. 2021, sec. 2.3).
COMPLETION_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")


@dataclass(frozen=True)
class ItemResult:
    task_id: str
    passed: bool            # the first answer passed its tests (greedy decoding: the only answer)
    syntax_valid: bool
    status: str             # the sandbox's for the first answer: passed | failed | timeout | infra_error;
                            # "untested" for a reference-only item
    code: str               # the first answer's code as the model wrote it (BLEU and quality are on this)
    tested: bool = True     # False for a reference-only item (no tests): never counted in pass rates
    solution_ran: bool = False  # the program ran without raising before its tests (execution success)
    n_samples: int = 1
    n_correct: int | None = None  # answers that passed, of n_samples; defaults to int(passed)
    category: str | None = None
    cyclomatic_complexity: int | None = None
    maintainability_index: float | None = None
    time_complexity: str | None = None
    space_complexity: str | None = None
    bleu: float | None = None   # against the problem's reference, when it has one
    error: str = ""             # the last line of the first answer's traceback, when it failed
    duration_s: float | None = None

    def __post_init__(self):
        if self.n_correct is None:
            object.__setattr__(self, "n_correct", int(self.passed))


@dataclass(frozen=True)
class SuiteResult:
    items: tuple[ItemResult, ...]
    suite: str = ""
    prompt_style: str = "request"
    temperature: float = 0.0

    @property
    def tested(self) -> tuple[ItemResult, ...]:
        """The items with tests: the ones pass rates and the deployment gate are about."""
        return tuple(i for i in self.items if i.tested)

    @property
    def pass_rate(self) -> float:
        tested = self.tested
        return sum(i.passed for i in tested) / len(tested) if tested else 0.0

    @property
    def syntax_rate(self) -> float:
        return sum(i.syntax_valid for i in self.items) / len(self.items) if self.items else 0.0

    def pass_at_k(self, k: int) -> float:
        """Mean unbiased pass@k over the tested items (each needs at least k samples)."""
        tested = self.tested
        return sum(metrics.pass_at_k(i.n_samples, i.n_correct, k) for i in tested) / len(tested) if tested else 0.0

    def metrics(self) -> dict:
        return {**metrics.aggregate(self.items), "suite": self.suite, "prompt_style": self.prompt_style,
                "temperature": self.temperature}

    def to_json(self) -> list[dict]:
        return [asdict(i) for i in self.items]


def build_prompt(tokenizer, problem: Problem, prompt_style: str, prompt_format: str) -> str:
    """The text the model continues, for one problem in the suite's prompt style."""
    from selftrain.models.prompting import render_prompt

    match prompt_style:
        case "request":
            return render_prompt(tokenizer, problem.prompt, prompt_format)
        case "signature_chat":
            return render_prompt(tokenizer, COMPLETE_FUNCTION.format(prompt=problem.prompt), "chat")
        case "signature_completion":
            # The trailing newline must go: after it, SmolLM2 ends every HumanEval function at once.
            return problem.prompt.rstrip()
    raise ValueError(f"unknown prompt style {prompt_style!r}")


def answer_code(text: str, problem: Problem, prompt_style: str) -> str:
    """The code of one generated answer, as the model wrote it."""
    from selftrain.models.prompting import split_answer

    if prompt_style == "signature_completion":
        for stop in COMPLETION_STOPS:
            text = text.split(stop, 1)[0]
        return problem.prompt.rstrip() + text
    return split_answer(text)[0]


def build_program(code: str, problem: Problem, prompt_style: str) -> str:
    """The program the sandbox runs before the tests.

    For signature_chat the prompt goes first, so its imports and helper functions are defined
    (HumanEval/38's decode_cyclic calls the prompt's encode_cyclic); an answer that defines the
    entry point then replaces the prompt's docstring-only stub, and an answer that is only a
    function body is indented under it.
    """
    if prompt_style != "signature_chat":
        return code
    if not code.strip():
        return problem.prompt
    if re.search(rf"^(async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
        return f"{problem.prompt.rstrip()}\n\n\n{code}\n"
    lines = [line for line in code.splitlines() if line.strip()]
    body = code if lines and lines[0][:1] in (" ", "\t") else textwrap.indent(code, "    ")
    return f"{problem.prompt.rstrip()}\n{body}\n"


def score_answers(suite: Suite, answers: Sequence[Sequence[str]], sandbox: Sandbox, *,
                  temperature: float = 0.0, progress: Progress | None = None) -> SuiteResult:
    """Run and measure answers: answers[i] holds the code of every sample for suite.problems[i]."""
    if len(answers) != len(suite.problems) or any(len(a) == 0 for a in answers):
        raise ValueError("score_answers needs at least one answer for every problem of the suite.")
    jobs = [(build_program(code, problem, suite.prompt_style), problem.tests)
            for problem, codes in zip(suite.problems, answers) for code in codes]
    if progress:
        progress("run tests", 0, len(jobs))
    runs = iter(sandbox.run_many(jobs))
    if progress:
        progress("run tests", len(jobs), len(jobs))
    items = []
    for problem, codes in zip(suite.problems, answers):
        outcomes = [next(runs) for _ in codes]
        items.append(_item(problem, codes[0], outcomes, suite.prompt_style))
    return SuiteResult(tuple(items), suite=suite.name, prompt_style=suite.prompt_style, temperature=temperature)


def _item(problem: Problem, code: str, outcomes: list[ExecutionResult], prompt_style: str) -> ItemResult:
    first = outcomes[0]
    passed = problem.has_tests and first.passed
    valid = metrics.syntax_valid(code)
    estimate = metrics.estimate_complexity(code)
    return ItemResult(
        task_id=problem.task_id, passed=passed, syntax_valid=valid,
        status=first.status if problem.has_tests else "untested",
        # an empty answer "runs" (and for signature_chat so does the prompt alone): it is no execution success
        code=code, tested=problem.has_tests, solution_ran=valid and first.solution_ran, n_samples=len(outcomes),
        n_correct=sum(o.passed for o in outcomes) if problem.has_tests else 0, category=problem.category,
        cyclomatic_complexity=metrics.cyclomatic_complexity(code),
        maintainability_index=metrics.maintainability_index(code),
        time_complexity=estimate.time if estimate else None, space_complexity=estimate.space if estimate else None,
        bleu=_bleu(code, problem, prompt_style),
        error="" if first.passed else _last_line(first.stderr) or first.status, duration_s=round(first.duration_s, 4))


def _bleu(code: str, problem: Problem, prompt_style: str) -> float | None:
    """BLEU of what the model wrote against what the reference wrote. A plain completion's code
    starts with the prompt, which the reference shares; scoring that shared text would lift
    every completion's BLEU, so both lose it first."""
    if not problem.reference:
        return None
    prompt = problem.prompt.rstrip()
    if prompt_style == "signature_completion" and code.startswith(prompt) and problem.reference.startswith(prompt):
        return metrics.sentence_bleu(code[len(prompt):], problem.reference[len(prompt):])
    return metrics.sentence_bleu(code, problem.reference)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def evaluate_model(model, tokenizer, suite: Suite, sandbox: Sandbox, *, prompt_format: str,
                   max_new_tokens: int, batch_size: int, samples: int = 1, temperature: float = 0.0,
                   seed: int = 0, progress: Progress | None = None) -> SuiteResult:
    """Answer every problem of `suite`, then score the answers (see score_answers).

    samples=1, temperature=0: greedy decoding, one answer each (the deployment gate's setting).
    samples=n > 1 needs temperature > 0: n sampled answers each, for the unbiased pass@k with
    k <= n (Chen et al. 2021 sample n=200 at T=0.8 for pass@100, T=0.2 for pass@1).
    """
    if samples < 1 or (samples > 1 and temperature <= 0):
        raise ValueError("samples must be 1, or more than 1 with a temperature above 0.")
    prompts = [build_prompt(tokenizer, p, suite.prompt_style, prompt_format) for p in suite.problems]
    # Only the code is scored: greedy rows end once the code block is written (same code, fewer tokens).
    texts = _generate(model, tokenizer, prompts, samples=samples, temperature=temperature, seed=seed,
                      max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                      code_only=suite.prompt_style != "signature_completion")
    answers = [[answer_code(t, p, suite.prompt_style) for t in sample_texts]
               for p, sample_texts in zip(suite.problems, texts)]
    return score_answers(suite, answers, sandbox, temperature=temperature, progress=progress)


def _generate(model, tokenizer, prompts: list[str], *, samples: int, temperature: float, seed: int,
              max_new_tokens: int, batch_size: int, progress: Progress | None,
              code_only: bool = False) -> list[list[str]]:
    """Generated text per prompt: one greedy answer, or `samples` sampled ones. The model's
    bf16 linears answer from packed weights (`prepack.py`: the same tokens, faster)."""
    from selftrain.models.generate import generate
    from selftrain.models.prepack import use_packed_weights

    use_packed_weights(model, inference=True)  # packs nothing where it already was

    texts: list[list[str]] = []
    chunk = max(1, batch_size * 4 // samples)  # a few batches at a time, so progress moves
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        if samples == 1 and temperature <= 0:
            texts += [[g.text] for g in generate(model, tokenizer, part, max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size, code_only=code_only)]
        else:
            texts += _sample(model, tokenizer, part, samples=samples, temperature=temperature,
                             seed=seed + start, max_new_tokens=max_new_tokens, batch_size=batch_size)
        if progress:
            progress("generate", min(start + chunk, len(prompts)), len(prompts))
    return texts


def _sample(model, tokenizer, prompts: list[str], *, samples: int, temperature: float, seed: int,
            max_new_tokens: int, batch_size: int) -> list[list[str]]:
    """`samples` answers per prompt by temperature sampling with nucleus p = 0.95, as Chen et al.
    2021 (models/generate.py decodes greedily only). Prompts go one at a time, their samples in
    batches of batch_size rows; the seed makes a run repeatable."""
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    out: list[list[str]] = []
    for index, prompt in enumerate(prompts):
        enc = tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        answers: list[str] = []
        while len(answers) < samples:
            rows = min(max(1, batch_size), samples - len(answers))
            torch.manual_seed(seed * 1_000_003 + index * 1009 + len(answers))
            with torch.inference_mode():
                generated = model.generate(**enc, do_sample=True, temperature=temperature, top_p=0.95, top_k=0,
                                           num_return_sequences=rows, max_new_tokens=max_new_tokens,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row in generated[:, enc["input_ids"].shape[1]:]:
                ids = row.tolist()
                if tokenizer.eos_token_id in ids:
                    ids = ids[:ids.index(tokenizer.eos_token_id)]
                answers.append(tokenizer.decode(ids, skip_special_tokens=True))
        out.append(answers)
    return out
