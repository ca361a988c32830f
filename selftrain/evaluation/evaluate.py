"""One evaluation run from end to end, as `selftrain eval run` does it: load the model (with
an adapter, for a registered version), evaluate it on a suite in the sandbox, store the run
in evaluation_runs, and write its report. Which version's adapter to load is the caller's
business (the CLI looks it up in the registry): this room reads the store, never the registry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from selftrain.config import Settings
from selftrain.evaluation.harness import Progress, SuiteResult, evaluate_model
from selftrain.evaluation.report import load_history, store_run, write_report
from selftrain.evaluation.sandbox import Sandbox
from selftrain.evaluation.stats import Interval, proportion_ci
from selftrain.evaluation.suites import Suite, load_suite
from selftrain.store.db import Database


@dataclass(frozen=True)
class EvalRequest:
    suite: str = "humaneval"
    """'humaneval', 'demo' or a JSONL file of problems."""
    limit: int = 0
    """Evaluate the first `limit` problems only (0 = all)."""
    prompt_style: str | None = None
    """Override the suite's prompt style (suites.PROMPT_STYLES); None keeps the suite's."""
    samples: int = 1
    """Answers per problem: 1 is greedy decoding (pass@1); more need temperature > 0 (pass@k, k <= samples)."""
    temperature: float = 0.0
    """Sampling temperature when samples > 1 (Chen et al. 2021: 0.2 for pass@1, 0.8 for pass@100)."""
    max_new_tokens: int | None = None
    """Most tokens per answer; None uses the settings' max_new_tokens."""
    seed: int = 0
    """Seed for sampling."""
    report_format: str = "md"
    """'md' or 'html'."""
    out_dir: Path | None = None
    """Where the report goes; None: <workspace>/artifacts/reports/eval-<run id>."""


@dataclass(frozen=True)
class EvalOutcome:
    run_id: int
    suite: Suite
    result: SuiteResult
    pass_rate_ci: Interval
    paths: dict[str, Path]
    seconds: dict[str, float]


def check_request(request: EvalRequest) -> None:
    """Refuse a request that could only fail after the model is loaded and the answers generated."""
    from selftrain.errors import SelftrainError
    from selftrain.evaluation.report import FORMATS

    if request.samples < 1:
        raise SelftrainError(f"--samples must be 1 or more, got {request.samples}.")
    if request.samples > 1 and request.temperature <= 0:
        raise SelftrainError("--samples above 1 needs a --temperature above 0 (greedy answers would all be the same).")
    if request.temperature < 0:
        raise SelftrainError(f"--temperature must be 0 or more, got {request.temperature}.")
    if request.max_new_tokens is not None and request.max_new_tokens < 1:
        raise SelftrainError(f"--max-new-tokens must be a positive integer, got {request.max_new_tokens}.")
    if request.report_format not in FORMATS:
        raise SelftrainError(f"--format must be one of {', '.join(FORMATS)}, got {request.report_format!r}.")


def evaluate_and_report(settings: Settings, db: Database, request: EvalRequest, *, model_label: str,
                        version_id: str | None, adapter: str | None, base_model: str, suite: Suite | None = None,
                        sandbox: Sandbox | None = None, progress: Progress | None = None) -> EvalOutcome:
    """Evaluate the base model `base_model` with `adapter` (None: no adapter) and report on it.
    version_id is what the stored run is filed under (None: the base model); `suite`, when the
    caller has already loaded the request's suite."""
    from selftrain.models.base import load_model, resolve_base_model

    check_request(request)
    suite = suite or load_suite(request.suite, request.limit, request.prompt_style)  # fails before loading
    sandbox = sandbox or Sandbox(timeout_s=settings.sandbox_timeout_s, memory_mb=settings.sandbox_memory_mb,
                                 workers=settings.sandbox_workers,
                                 allow_unsafe_execution=settings.allow_unsafe_execution)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    location = resolve_base_model(base_model, settings.model_cache_dir, settings.allow_model_downloads)
    model, tokenizer = load_model(location, settings.dtype, adapter=adapter)
    seconds["load"] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    max_new_tokens = request.max_new_tokens or settings.max_new_tokens
    result = evaluate_model(model, tokenizer, suite, sandbox, prompt_format=settings.prompt_format,
                            max_new_tokens=max_new_tokens, batch_size=settings.generation_batch_size,
                            samples=request.samples, temperature=request.temperature, seed=request.seed,
                            progress=progress)
    seconds["evaluate"] = round(time.perf_counter() - clock, 2)
    details = {"model": model_label, "base_model": base_model, "adapter": adapter or "none",
               "dtype": settings.dtype, "max_new_tokens": max_new_tokens, "samples": request.samples,
               "temperature": request.temperature, "prompt_format": settings.prompt_format}
    with db.session() as session:
        run_id = store_run(session, result, suite, model_version=version_id,
                           extra={"details": details, "seconds": seconds})
        history = load_history(session, suite.name, prompt_style=suite.prompt_style,
                               temperature=request.temperature)
    out_dir = request.out_dir or settings.artifacts_dir / "reports" / f"eval-{run_id}"
    paths = write_report(out_dir, result, suite, history, model=model_label, run_id=run_id,
                         fmt=request.report_format, details=details)
    tested = result.tested
    return EvalOutcome(run_id=run_id, suite=suite, result=result,
                       pass_rate_ci=proportion_ci(sum(i.passed for i in tested), len(tested)),
                       paths=paths, seconds=seconds)
