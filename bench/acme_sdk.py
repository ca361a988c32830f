"""Does the built-in model learn an in-house *library* well enough to use it on new tasks?

A second task family beside the Acme conventions corpus (issue 10): `bench/acme_sdk/acme.py`
is a fictitious in-house module (28 helpers over 10 of the Acme conventions) and
`bench/acme_sdk/tasks.jsonl` holds 130 small tasks whose solutions are a few lines of glue
on it (90 train, 40 held-out; `python bench/acme_sdk/check.py` checks the corpus). The base
model cannot know the module. This trains LoRA on every train task's reference solution,
then measures on the held-out tasks (and on --seen trained-on tasks), for the base model
and each recipe: greedy pass@1, and how many answers import the module and call a helper
the reference solution calls — whether the model learned *what the library offers*
separately from whether it writes the glue around it correctly. With --docs the base model is also measured with the
library's reference (README.md's helper table) at the top of every held-out prompt.

    python bench/acme_sdk.py [--workspace DIR] [--recipe NAME=key:value,...]... [--seen N] [--docs]
                             [--json bench/out/acme_sdk.json]

The module is made importable inside the sandbox by a prelude that registers it before the
answer runs (the sandbox runs the standard library only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from acme_ceiling import ALL_LINEAR, parse_recipe  # noqa: E402

from selftrain.config import load_settings  # noqa: E402
from selftrain.data.example import Example  # noqa: E402
from selftrain.evaluation.sandbox import Sandbox  # noqa: E402
from selftrain.simulate import load_tasks, suite_of  # noqa: E402

CORPUS = ROOT / "bench" / "acme_sdk"
DEFAULT_RECIPES = [f"all-linear-lr1e-3=lora_target_modules:{'+'.join(ALL_LINEAR)},learning_rate:1e-3"]


def prelude(source: str) -> str:
    """Code that registers `source` as the module `acme` before an answer runs."""
    return ("import sys as _sys, types as _types\n_acme = _types.ModuleType('acme')\n"
            f"exec(compile({source!r}, 'acme.py', 'exec'), _acme.__dict__)\n"
            "_sys.modules['acme'] = _acme\ndel _sys, _types, _acme\n")


class LibrarySandbox(Sandbox):
    """The sandbox, with the in-house module importable by every program it runs."""

    def __init__(self, source: str, **kwargs):
        super().__init__(**kwargs)
        self.prelude = prelude(source)

    def run_many(self, items):
        return super().run_many([(self.prelude + program, tests) for program, tests in items])


def library_reference() -> str:
    """The helper table of the corpus README, as a list a prompt can carry."""
    rows = [line for line in (CORPUS / "README.md").read_text().splitlines() if line.startswith("| ") and "`" in line]
    return ("Our in-house module `acme` has these helpers (import them with `from acme import ...`):\n"
            + "\n".join(re.sub(r"^\| (\w+) \| ", r"- \1: ", line).rstrip(" |") for line in rows))


def helper_use(items, helpers: dict[str, set[str]]) -> dict:
    """Answers that import `acme`, and that call at least one helper their task's reference calls."""
    imports = sum(bool(re.search(r"^\s*(from acme import|import acme)", i.code, re.M)) for i in items)
    right = sum(bool(set(re.findall(r"\b(\w+)\s*\(", i.code)) & helpers[i.task_id]) for i in items)
    return {"imports_acme": imports, "calls_a_right_helper": right}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="/tmp/acme-sdk")
    parser.add_argument("--recipe", action="append", default=None)
    parser.add_argument("--seen", type=int, default=40, help="also measure this many trained-on tasks")
    parser.add_argument("--docs", action="store_true", help="also the base model with the library's reference in the prompt")
    parser.add_argument("--json", default="bench/out/acme_sdk.json")
    args = parser.parse_args()

    from selftrain.agent import load_version
    from selftrain.evaluation.harness import evaluate_model
    from selftrain.evaluation.stats import proportion_ci
    from selftrain.models.base import load_model, resolve_base_model
    from selftrain.training import sft

    settings = load_settings(args.workspace)
    tasks = load_tasks(CORPUS / "tasks.jsonl")
    helpers = {row["task_id"]: set(row["helpers"])
               for row in map(json.loads, (CORPUS / "tasks.jsonl").read_text().splitlines())}
    train = [t for t in tasks if t.split == "train"]
    suites = {"held-out": suite_of("acme-sdk-heldout", [t for t in tasks if t.split == "heldout"]),
              "trained-on": suite_of("acme-sdk-seen", train[:args.seen])}
    sandbox = LibrarySandbox((CORPUS / "acme.py").read_text(), timeout_s=settings.sandbox_timeout_s,
                             memory_mb=settings.sandbox_memory_mb, workers=settings.sandbox_workers,
                             allow_unsafe_execution=settings.allow_unsafe_execution)
    location = resolve_base_model(settings.base_model, settings.model_cache_dir)

    def measure(model, tokenizer, recipe, suites=suites) -> dict:
        out = {}
        for name, suite in suites.items():
            started = time.perf_counter()
            scored = evaluate_model(model, tokenizer, suite, sandbox, prompt_format=recipe.prompt_format,
                                    max_new_tokens=recipe.max_new_tokens, batch_size=recipe.generation_batch_size)
            passed = sum(bool(i.passed) for i in scored.items)
            ci = proportion_ci(passed, len(scored.items))
            out[name] = {"passed": passed, "n": len(scored.items), "ci": [ci.low, ci.high],
                         **helper_use(scored.items, helpers), "seconds": round(time.perf_counter() - started, 1),
                         "answers": [{"task_id": i.task_id, "passed": bool(i.passed), "code": i.code}
                                     for i in scored.items]}
        return out

    model, tokenizer = load_model(location, settings.dtype)
    rows = [{"recipe": "base model", **measure(model, tokenizer, settings)}]
    if args.docs:
        reference, held = library_reference(), suites["held-out"]
        documented = replace(held, name=held.name + "-docs", problems=tuple(
            replace(p, prompt=f"{reference}\n\n{p.prompt}") for p in held.problems))
        rows.append({"recipe": "base model, library reference in the prompt",
                     **measure(model, tokenizer, settings, {"held-out": documented})})
    del model
    print(_table(rows), flush=True)
    examples = [Example(None, t.prompt, t.reference, "", t.convention, "corrected", ref=t.task_id) for t in train]
    for spec in args.recipe or DEFAULT_RECIPES:
        name, overrides = parse_recipe(spec)
        recipe = replace(settings, **overrides)
        started = time.perf_counter()
        result = sft.run(sft.SFTConfig.from_settings(recipe), examples, location,
                         Path(args.workspace) / "acme-sdk" / name / "adapter")
        train_s = time.perf_counter() - started
        loaded = load_version(recipe, name, str(result.adapter_dir))
        rows.append({"recipe": name, "overrides": overrides, "steps": result.steps, "train_s": round(train_s, 1),
                     "eval_loss": [result.initial_eval_loss, result.eval_loss],
                     **measure(loaded.model, loaded.tokenizer, recipe)})
        print(_table(rows), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.json}")


def _table(rows) -> str:
    lines = ["| model | steps | train s | eval loss | held-out pass@1 | 95% CI | held-out: imports acme "
             "| held-out: calls a right helper | trained-on pass@1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        h, s = r["held-out"], r.get("trained-on")
        seen = f"{s['passed']}/{s['n']}" if s else "-"
        loss = f"{r['eval_loss'][0]:.3f} → {r['eval_loss'][1]:.3f}" if "eval_loss" in r else "-"
        lines.append(f"| {r['recipe']} | {r.get('steps', '-')} | {r.get('train_s', '-')} | {loss} | "
                     f"{h['passed']}/{h['n']} | [{h['ci'][0]:.1%}, {h['ci'][1]:.1%}] | {h['imports_acme']}/{h['n']} | "
                     f"{h['calls_a_right_helper']}/{h['n']} | {seen} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
