"""Reuse a greedy evaluation of the same model on the same problems.

Greedy decoding is deterministic: the same weights, suite, prompt layout and generation
settings give the same answers, and the sandbox then gives the same verdicts. The learning
cycle re-evaluates the model in service on every cycle until a candidate replaces it, and
the simulation measures the base model on every run; with this cache each is done once.

An entry is keyed by everything the answers depend on: the base model's files, the
adapter's weights (by content), the suite's digest and prompt style, the prompt format, the
token limit, the batch size (left padding changes the numerics slightly), the dtype, and
the torch and transformers versions. Entries are JSON files written atomically; one that
cannot be read is ignored and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from selftrain.evaluation.harness import ItemResult, SuiteResult

MAX_ENTRIES = 256  # oldest entries beyond this are removed when one is written
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors", "pytorch_model.bin")


def model_fingerprint(location: str, adapter: str | None) -> str:
    """Identity of the weights a model is loaded from: the base model's files by name, size and
    modification time (converted once, never edited), the adapter's by content."""
    digest = hashlib.sha256()
    for path in sorted(Path(location).glob("*")) if Path(location).is_dir() else []:
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    digest.update(location.encode())
    if adapter:
        folder = Path(adapter)
        for name in ("adapter_config.json", *WEIGHT_FILES):
            if (folder / name).is_file():
                digest.update(name.encode() + b"\0" + hashlib.sha256((folder / name).read_bytes()).digest())
    return digest.hexdigest()


def evaluation_key(location: str, adapter: str | None, suite, **generation) -> str:
    import torch
    import transformers

    parts = {"model": model_fingerprint(location, adapter), "suite": suite.digest, "suite_name": suite.name,
             "prompt_style": suite.prompt_style, "n_problems": len(suite.problems),
             "torch": torch.__version__, "transformers": transformers.__version__, **generation}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached(cache_dir: Path, key: str, compute: Callable[[], SuiteResult]) -> tuple[SuiteResult, bool]:
    """(result, whether it came from the cache)."""
    path = cache_dir / f"{key}.json"
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return SuiteResult(items=tuple(ItemResult(**item) for item in data["items"]), suite=data["suite"],
                               prompt_style=data["prompt_style"], temperature=data["temperature"]), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable or from an older layout: evaluate again and overwrite it
    result = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"items": [asdict(i) for i in result.items], "suite": result.suite,
                               "prompt_style": result.prompt_style, "temperature": result.temperature}),
                   encoding="utf-8")
    os.replace(tmp, path)
    _prune(cache_dir)
    return result, False


def _prune(cache_dir: Path) -> None:
    entries = sorted(cache_dir.glob("*.json"), key=lambda p: p.stat().st_mtime)
    for old in entries[:-MAX_ENTRIES]:
        old.unlink(missing_ok=True)


def evaluate_version(settings, location: str, adapter: str | None, suite, sandbox,
                     progress: Callable[[str, int, int], None] | None = None) -> SuiteResult:
    """Greedy evaluation of the base model at `location` with `adapter` merged in (None: the
    base model itself) on `suite`, reused from `<artifacts>/eval_cache` when the same model
    was already evaluated the same way and `settings.evaluation_cache` is on."""
    from selftrain.evaluation.harness import evaluate_model
    from selftrain.models.base import load_model, resolve_dtype

    def compute() -> SuiteResult:
        model, tokenizer = load_model(location, settings.dtype, adapter=adapter)
        model.eval()
        return evaluate_model(model, tokenizer, suite, sandbox, prompt_format=settings.prompt_format,
                              max_new_tokens=settings.max_new_tokens, batch_size=settings.generation_batch_size,
                              progress=progress)

    if not settings.evaluation_cache:
        return compute()
    key = evaluation_key(location, adapter, suite, prompt_format=settings.prompt_format,
                         max_new_tokens=settings.max_new_tokens, batch_size=settings.generation_batch_size,
                         dtype=resolve_dtype(settings.dtype), sandbox_timeout_s=settings.sandbox_timeout_s,
                         sandbox_memory_mb=settings.sandbox_memory_mb)
    result, hit = cached(settings.artifacts_dir / "eval_cache", key, compute)
    if hit and progress:
        progress("reused an earlier evaluation", len(suite.problems), len(suite.problems))
    return result
